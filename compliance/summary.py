"""Counts per behaviour from an Autobahn|Testsuite report (``index.json``); pure."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Mapping

__all__ = ["summarise", "load", "table", "failures"]

#: Every result the suite gives a case, best first.
BEHAVIOURS = ("OK", "INFORMATIONAL", "NON-STRICT", "UNIMPLEMENTED", "FAILED")


def summarise(index: Mapping[str, Mapping[str, Mapping[str, Any]]]
              ) -> Dict[str, Dict[str, Counter]]:
    """``{agent: {"cases": n, "behavior": Counter, "behaviorClose": Counter}}``."""
    out: Dict[str, Dict[str, Any]] = {}
    for agent, cases in index.items():
        out[agent] = {
            "cases": len(cases),
            "behavior": Counter(str(c.get("behavior")) for c in cases.values()),
            "behaviorClose": Counter(str(c.get("behaviorClose")) for c in cases.values()),
        }
    return out


def failures(index: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Dict[str, List[str]]:
    """The cases of each agent that are neither OK nor INFORMATIONAL, in either column."""
    good = ("OK", "INFORMATIONAL")
    return {agent: sorted((cid for cid, c in cases.items()
                           if c.get("behavior") not in good or c.get("behaviorClose") not in good),
                          key=_case_key)
            for agent, cases in index.items()}


def _case_key(case_id: str) -> List[int]:
    return [int(p) if p.isdigit() else 0 for p in case_id.split(".")]


def load(outdir: Path) -> Dict[str, Any]:
    return dict(json.loads((Path(outdir) / "index.json").read_text()))


def _column(behaviour: str) -> str:
    """The table column of a result: ``FAILED BY CLIENT`` (closing) is a failure too."""
    return behaviour if behaviour in BEHAVIOURS else "FAILED"


def table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per agent, a column per behaviour (case / closing)."""
    cols = list(BEHAVIOURS)
    head = "| agent | cases | " + " | ".join(cols) + " | closing " + " | closing ".join(cols) + " |"
    rows = [head, "|" + "---|" * (2 + 2 * len(cols))]
    for agent, s in summary.items():
        cells = []
        for key in ("behavior", "behaviorClose"):
            counts: Counter = Counter()
            for behaviour, n in s[key].items():
                counts[_column(behaviour)] += n
            cells += [str(counts.get(b, 0)) for b in cols]
        rows.append(f"| {agent} | {s['cases']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
