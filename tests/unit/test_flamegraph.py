"""benchmarks/flamegraph.py (the SVG of py-spy's collapsed stacks) and benchmarks/budget.py
(each sample in one CPU category): pure code, on hand-written stacks."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import budget  # noqa: E402
import flamegraph  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"
SITE = "/venv/lib/python3.12/site-packages/"
PKG = "/srv/app/flask_jpulse_ws/"
STACKS = "\n".join([
    "main (app.py:1);work (app.py:10);leaf (lib.py:5) 40",
    "main (app.py:1);work (app.py:12);leaf (lib.py:6) 20",  # other lines, same functions
    "main (app.py:1);rest (app.py:30) 30",
    "main (app.py:2);<script>alert(1)</script> (x&y.py:3) 10",
])


def boxes(svg: str) -> dict:
    """Merged frame name -> its rect's attributes, from each box's tooltip."""
    out = {}
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        tip = g.find(f"{SVG}title").text
        out[tip.split(": ")[0]] = dict(g.find(f"{SVG}rect").attrib, tip=tip)
    return out


def test_svg_parses_and_root_spans_the_width():
    svg = flamegraph.render(STACKS, "reqrep & co", "sub <title>")
    b = boxes(svg)
    assert float(b["all"]["width"]) == pytest.approx(flamegraph.WIDTH - 2 * flamegraph.PAD)
    assert b["all"]["tip"] == "all: 100 samples (100.00 %)"
    assert float(b["main (app.py)"]["width"]) == pytest.approx(float(b["all"]["width"]))


def test_width_proportional_to_samples_and_lines_merge():
    b = boxes(flamegraph.render(STACKS, "t"))
    work, rest = float(b["work (app.py)"]["width"]), float(b["rest (app.py)"]["width"])
    assert work == pytest.approx(2 * rest)  # 60 samples (two lines merged) against 30
    assert b["work (app.py)"]["tip"] == "work (app.py): 60 samples (60.00 %)"
    assert b["leaf (lib.py)"]["tip"].startswith("leaf (lib.py): 60 samples")
    # siblings in name order, left to right: rest, then work
    assert float(b["rest (app.py)"]["x"]) < float(b["work (app.py)"]["x"])


def test_names_are_escaped_and_narrow_frames_left_out():
    stacks = STACKS + "\nmain (app.py:1);tiny (app.py:9) 1\n" + "main (app.py:1);big (a.py:1) 999"
    svg = flamegraph.render(stacks, "<b>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    b = boxes(svg)
    assert "<script>alert(1)</script> (x&y.py)" in b
    assert "tiny (app.py)" not in b  # 1 sample of 1100: under 0.1 %


def test_paths_shortened():
    assert flamegraph.merged_name(f"Hub.run ({SITE}gevent/hub.py:647)") == "Hub.run (gevent/hub.py)"
    assert flamegraph.short(str(flamegraph.ROOT / "benchmarks/apps/jpulse_app.py")) \
        == "benchmarks/apps/jpulse_app.py"


def stack(*frames):
    return [f"Hub.run ({SITE}gevent/hub.py:647)", *frames]


READER = f"Connection.run ({PKG}server/connection.py:350)"
PIPE = f"handle_message ({PKG}server/pipeline.py:30)"
INBOX = f"Connection._handle_inbox ({PKG}server/connection.py:440)"
APP = "on_message (jpulse_app.py:50)"
REPLY = f"Connection.reply ({PKG}server/connection.py:190)"


@pytest.mark.parametrize("frames, category", [
    (stack(READER, f"receiver.<locals>.recv ({PKG}concurrency.py:128)"), "socket read"),
    (stack(f"SocketMixin.recv ({SITE}gevent/_socketcommon.py:651)"), "socket read"),
    (stack(READER, f"Connection._process ({PKG}server/connection.py:362)",
           f"FrameDecoder.feed ({PKG}core/frames.py:200)"), "frame decode"),
    (stack(READER, PIPE, f"decode_inbound ({PKG}core/envelope.py:50)"), "JSON"),
    (stack(READER, PIPE, f"check_type ({PKG}core/envelope.py:70)"), "envelope checks"),
    (stack(READER, PIPE, f"RateWindow.check ({PKG}core/limits.py:75)",
           "__create_fn__.<locals>.__init__ (<string>:3)"), "rate window"),
    (stack(READER, PIPE, f"ActivityLog.add ({PKG}core/stats.py:170)"), "stats and activity log"),
    (stack(READER, PIPE, f"Connection.enqueue ({PKG}server/connection.py:420)"),
     "handler dispatch: task handoff"),
    (stack(INBOX, f"Timeout.start ({SITE}gevent/timeout.py:245)"),
     "handler dispatch: task handoff"),
    (stack(INBOX, f"run_handler ({PKG}server/pipeline.py:80)",
           f"AppContext.push ({SITE}flask/ctx.py:253)"), "handler dispatch: app context"),
    (stack(INBOX, APP), "app handler"),
    (stack(INBOX, APP, REPLY, f"encode_reply ({PKG}core/envelope.py:118)"), "reply encode"),
    # the innermost frame decides: orjson under encode_reply is JSON
    (stack(INBOX, APP, REPLY, f"encode_reply ({PKG}core/envelope.py:118)",
           f"_dumps ({PKG}core/envelope.py:99)"), "JSON"),
    (stack(INBOX, APP, REPLY, f"Outbound._write_now ({PKG}server/outbound.py:174)"), "write"),
    (stack(INBOX, APP, REPLY, f"Namespace.record_sent ({PKG}server/namespace.py:245)"),
     "stats and activity log"),
    # the layout before core/ and server/: old profiles categorize the same
    (["Connection._send_or_queue (flask_jpulse_ws/connection.py:139)"], "write"),
    (stack(), "hub and switches"),
    ([f"_handle_and_close_when_done ({SITE}gevent/baseserver.py:20)"], "other"),
])
def test_budget_categories(frames, category):
    assert budget.categorize(frames) == category


def test_budget_table_per_message():
    text = "\n".join([
        f"{';'.join(stack(READER, f'receiver.<locals>.recv ({PKG}concurrency.py:128)'))} 75",
        f"{';'.join(stack())} 25",
    ])
    rows = budget.table(text, cpu_pct=100.0, rate=10000.0, unit="reply")
    assert rows[0] == "| category | % of samples | µs per reply |"
    assert "| socket read | 75.0 | 75.00 |" in rows  # 100 µs per reply, 75 % of it
    assert "| hub and switches | 25.0 | 25.00 |" in rows
    assert rows[-1] == "| **total** | 100.0 | 100.00 |"
    assert budget.table(text, 100.0, 0.0, "reply")[-1] == "| **total** | 100.0 | n/a |"
