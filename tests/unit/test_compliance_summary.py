"""The conformance harness's summary of an Autobahn|Testsuite report (no network)."""

import importlib.util
from pathlib import Path

SUMMARY = Path(__file__).resolve().parents[2] / "compliance" / "summary.py"


def load_summary():
    spec = importlib.util.spec_from_file_location("compliance_summary", SUMMARY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The shape of wstest's index.json: agent -> case -> result (fields trimmed).
INDEX = {
    "server-gunicorn": {
        "1.1.1": {"behavior": "OK", "behaviorClose": "OK", "duration": 2},
        "6.4.3": {"behavior": "NON-STRICT", "behaviorClose": "OK", "duration": 2003},
        "7.1.6": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL"},
        "7.3.6": {"behavior": "OK", "behaviorClose": "FAILED BY CLIENT"},
        "10.1.1": {"behavior": "OK", "behaviorClose": "OK"},
        "9.3.1": {"behavior": "FAILED", "behaviorClose": "FAILED"},
    },
    "client": {"1.1.1": {"behavior": "OK", "behaviorClose": "OK"}},
}


def test_counts_each_behaviour_and_each_closing_behaviour_per_agent():
    summary = load_summary().summarise(INDEX)
    gunicorn = summary["server-gunicorn"]
    assert gunicorn["cases"] == 6
    assert gunicorn["behavior"] == {"OK": 3, "NON-STRICT": 1, "INFORMATIONAL": 1, "FAILED": 1}
    assert gunicorn["behaviorClose"] == {"OK": 3, "INFORMATIONAL": 1, "FAILED BY CLIENT": 1,
                                         "FAILED": 1}
    assert summary["client"]["behavior"] == {"OK": 1}


def test_lists_the_cases_that_are_neither_ok_nor_informational_in_case_order():
    bad = load_summary().failures(INDEX)
    assert bad == {"server-gunicorn": ["6.4.3", "7.3.6", "9.3.1"], "client": []}


def test_the_table_has_a_row_per_agent_and_counts_closing_failures_by_client():
    text = load_summary().table(load_summary().summarise(INDEX))
    lines = text.splitlines()
    assert lines[0].startswith("| agent | cases | OK |")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|"))))
    assert row["agent"] == "server-gunicorn" and row["cases"] == "6"
    assert row["OK"] == "3" and row["NON-STRICT"] == "1" and row["FAILED"] == "1"
    assert row["closing FAILED"] == "2"  # FAILED and FAILED BY CLIENT alike
    assert len(lines) == 4
