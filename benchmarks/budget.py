"""Where one message's server CPU goes: each py-spy sample in one category.

A sample's stack is walked from the innermost frame outwards; at each frame the rules
below are tried in order, and the first that matches names the sample's category. So a
sample counts where the work is done (``_dumps`` under ``encode_reply`` is JSON, the
socket ``send`` under a broadcast is the write), and a frame of ours the rules do not
name passes the sample on to its caller.

Paths match both package layouts (``flask_jpulse_ws/envelope.py`` before the split into
core/ and server/, ``flask_jpulse_ws/core/envelope.py`` after), so old profiles re-render.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Tuple

from flamegraph import parse, split_frame

Rule = Callable[[str, str], bool]  # (function, short path) -> matches


def _ours(module: str) -> Callable[[str], bool]:
    """Is ``path`` this module of the package (flask_jpulse_ws/[sub/]module.py)?"""
    pattern = re.compile(rf"(^|/)flask_jpulse_ws/(\w+/)?{module}\.py$")
    return lambda path: bool(pattern.search(path))


_GEVENT = re.compile(r"(?:^|/)gevent/(\w+)\.py$")


def _gevent(path: str, *modules: str) -> bool:
    """Is ``path`` one of these modules of gevent?"""
    m = _GEVENT.search(path)
    return bool(m) and m.group(1) in modules


def _last(func: str) -> str:
    """The function's own name: ``Connection.reply`` -> ``reply``."""
    return func.rsplit(".", 1)[-1]


_concurrency, _connection, _envelope = _ours("concurrency"), _ours("connection"), \
    _ours("envelope")
_frames, _namespace, _pipeline = _ours("frames"), _ours("namespace"), _ours("pipeline")
_limits, _stats, _outbound, _fanout = _ours("limits"), _ours("stats"), _ours("outbound"), \
    _ours("fanout")
_FLASK_CTX = re.compile(r"(^|/)(flask/ctx|werkzeug/local)\.py$")
_APP = re.compile(r"(^|/)benchmarks/apps/|^\w*_app\.py$|^_common\.py$")
_JSON_FUNCS = {"decode_inbound", "_dumps", "encode_json", "decode_json"}
_REPLY_FUNCS = {"encode_reply", "encode_success", "encode_error", "encode_framework",
                "wire_ctx", "encode_frame", "text_frame", "reply", "reply_error",
                "send_raw_json", "send"}
_HANDOFF_FUNCS = {"enqueue", "_handle_inbox", "wait_handlers", "run_handler",
                  "begin_message", "spawn", "spawn_later", "call_soon",
                  # handlers run inline (0.2): the watch for one that blocks, the
                  # stand-in reader's start and the reader serving its inbox
                  "_handle_inline", "_serve_stand_in", "blocked", "watch_blocking",
                  "_tell_blocked", "end_handlers"}
#: The app context a handler runs in, and the context variables it is kept in.
_APP_CTX_FUNCS = {"_call_in_app_context", "_run_apart"}
_STATS_FUNCS = {"record_sent", "count_sent", "drop"}

#: (category, rule), tried in this order at each frame (innermost first). The order
#: matters where a frame fits two rules: envelope.py's JSON helpers before its other
#: functions (checks), reply encoding before the write. Categories as issue names them.
RULES: List[Tuple[str, Rule]] = [
    # gevent's socket recv, our receiver's wait-then-read closure, a C recv (--native)
    # and the reader's loop around it (Connection.run)
    ("socket read", lambda f, p: (_gevent(p, "_socketcommon") and _last(f).startswith("recv"))
     or (_concurrency(p) and ("receiver" in f or _last(f) == "recv"))
     or (_connection(p) and _last(f) in ("run", "_read", "_read_for_blocked_handler"))
     or (not p.endswith(".py") and "recv" in f)),
    # the frame parser, and the reader's loop over what it decoded
    ("frame decode", lambda f, p: (_frames(p) and ("Decoder" in f or _last(f) in (
        "feed", "_feed", "skim", "_finish", "_check_text", "_check_partial", "_mask")))
     or (_connection(p) and _last(f) in ("_process", "_handle"))),
    ("JSON", lambda f, p: "orjson" in p or "orjson" in f
     or (_envelope(p) and _last(f) in _JSON_FUNCS)),
    # the rest of envelope.py (check_type, request_id_of) and the pipeline's own steps
    ("envelope checks", lambda f, p: (_envelope(p) and _last(f) not in _REPLY_FUNCS)
     or (_pipeline(p) and _last(f) in ("handle_message", "_reject"))),
    ("rate window", lambda f, p: _limits(p)),
    ("stats and activity log", lambda f, p: _stats(p)
     or (_namespace(p) and _last(f) in _STATS_FUNCS)),
    # the reader hands a message to the handler greenlet: inbox, lock, wake, spawn
    ("handler dispatch: task handoff", lambda f, p: (
        (_connection(p) or _pipeline(p) or _concurrency(p)) and _last(f) in _HANDOFF_FUNCS)
     or _gevent(p, "event", "timeout", "greenlet", "lock", "_semaphore", "_abstract_linkable")),
    ("handler dispatch: app context", lambda f, p: bool(_FLASK_CTX.search(p))
     or (p.endswith("flask/app.py") and ("app_context" in f or "appcontext" in f))
     or ((_pipeline(p) or _connection(p)) and _last(f) in _APP_CTX_FUNCS)
     or p.endswith("blinker/base.py")),
    ("app handler", lambda f, p: bool(_APP.search(p))),
    ("reply encode", lambda f, p: (_envelope(p) or _frames(p) or _connection(p))
     and _last(f) in _REPLY_FUNCS),
    # our writer (outbound.py; connection.py before it), the fan-out loops, the C send
    ("write", lambda f, p: _outbound(p) or _fanout(p)
     or (_namespace(p) and _last(f).startswith(("deliver", "broadcast")))
     or (_connection(p) and ("send" in f or "write" in f or "flush" in f))
     or (_gevent(p, "_socketcommon") and "send" in f)
     or (not p.endswith(".py") and "send" in f)),
    ("hub and switches", lambda f, p: "greenlet" in f or "greenlet" in p
     or _gevent(p, "hub", "_hub_primitives", "_greenlet_primitives", "_waiter")),
]
OTHER = "other"
CATEGORIES = [name for name, _ in RULES] + [OTHER]


def categorize(frames: List[str]) -> str:
    """The category of one sample (``frames`` outermost first, as py-spy writes them).
    A sample with no Python frame at all is the hub (a greenlet switch in C)."""
    if not any(split_frame(f)[1] for f in frames):
        if not any("recv" in f or "send" in f for f in frames):
            return "hub and switches"
    for frame in reversed(frames):
        func, path, _ = split_frame(frame)
        for name, rule in RULES:
            if rule(func, path):
                return name
    return OTHER


def shares(collapsed_text: str) -> Tuple[int, Dict[str, int]]:
    """(total samples, samples per category, every category present, in order)."""
    counts = dict.fromkeys(CATEGORIES, 0)
    total = 0
    for frames, n in parse(collapsed_text):
        counts[categorize(frames)] += n
        total += n
    return total, counts


def table(collapsed_text: str, cpu_pct: float, rate: float, unit: str) -> List[str]:
    """The budget as markdown: category, % of samples, µs per ``unit``.

    :param cpu_pct: the worker's user + system CPU over the profile window, in %.
    :param rate: messages (``unit``) per second over the case. Without it or the CPU
        the µs column says n/a.
    """
    total, counts = shares(collapsed_text)
    per_msg = 1e6 * cpu_pct / 100.0 / rate if rate and cpu_pct else None  # µs of CPU
    out = [f"| category | % of samples | µs per {unit} |", "|---|---|---|"]
    for name in CATEGORIES:
        share = counts[name] / total if total else 0.0
        us = f"{share * per_msg:.2f}" if per_msg is not None else "n/a"
        out.append(f"| {name} | {100 * share:.1f} | {us} |")
    out.append(f"| **total** | 100.0 | {per_msg:.2f} |" if per_msg is not None
               else "| **total** | 100.0 | n/a |")
    return out
