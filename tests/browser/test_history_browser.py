"""Missed-message recovery in real Chromium: a page offline for 3 s misses nothing."""

import json
import time

import pytest
from servers import wait_for

pytestmark = pytest.mark.browser

FAST = {"reconnectBaseInterval": 300, "reconnectMaxInterval": 1000,
        "maxReconnectAttempts": 50, "pingInterval": 500, "pongTimeout": 500}


def burst(server, path, count, start):
    server.http().post("/_test/burst", {"path": path, "count": count, "start": start})


def seqs(page, path):
    return page.evaluate("p => T.log[p].messages.map(m => m.data.data.seq)", path)


def recovered_frames(received):
    """The ``_recovered`` frames among the raw frames Chromium received."""
    frames = [json.loads(f) for f in received if isinstance(f, str) and "_recovered" in f]
    return [f["data"]["data"] for f in frames if f.get("data", {}).get("type") == "_recovered"]


def test_a_page_offline_for_three_seconds_shows_every_message_once(app_server, context,
                                                                    open_page):
    """The page goes offline and its socket is cut (server side, no close frame, so the
    drop is real whatever set_offline does to an open socket); 20 broadcasts go out
    while it is away. Back online it reconnects and gets them replayed: `_recovered`
    counts exactly 20, no resync, every tick once, in order."""
    path = "/api/1/ws/hist/offline"
    page = open_page(app_server)
    received = []  # every frame the page's sockets received, as Chromium saw them
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: received.append(f)))
    page.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    page.wait_for_function("p => T.last(p) === 'connected'", arg=path)
    burst(app_server, path, 5, 0)
    page.wait_for_function("p => T.log[p].messages.length === 5", arg=path)
    context.set_offline(True)
    cid = page.evaluate("p => T.handles[p].getClientId()", path)
    assert app_server.http().post("/_test/cut", {"path": path, "clientId": cid})["cut"]
    page.wait_for_function("p => T.last(p) === 'reconnecting'", arg=path)
    started = time.monotonic()
    burst(app_server, path, 20, 5)  # sent while the page is away
    while time.monotonic() - started < 3:
        time.sleep(0.1)  # the scenario, not a wait: three seconds without a network
    context.set_offline(False)
    page.wait_for_function("p => T.log[p].messages.length >= 25", arg=path, timeout=15_000)
    burst(app_server, path, 5, 25)
    page.wait_for_function("p => T.log[p].messages.length >= 30", arg=path, timeout=10_000)
    assert seqs(page, path) == list(range(30))  # every frame, once, in order
    log = page.evaluate("p => T.log[p]", path)
    assert log["statuses"] == ["connecting", "connected", "reconnecting", "connected"]
    assert log["resyncs"] == []  # recovered exactly: nothing for the page to refetch
    assert recovered_frames(received) == [{"recovered": True, "count": 20}]
    offsets = page.evaluate("p => T.log[p].messages.map(m => m.offset)", path)
    assert offsets == list(range(offsets[0], offsets[0] + 30))


def test_recovery_that_cannot_be_exact_asks_the_page_to_resync(app_server, context,
                                                                open_page):
    path = "/api/1/ws/hist/too-far"
    page = open_page(app_server)
    page.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    page.wait_for_function("p => T.last(p) === 'connected'", arg=path)
    burst(app_server, path, 1, 0)
    page.wait_for_function("p => T.log[p].messages.length === 1", arg=path)
    context.set_offline(True)
    page.wait_for_function("p => T.last(p) !== 'connected'", arg=path)
    burst(app_server, path, 250, 1)  # more than the 200 the history keeps
    context.set_offline(False)
    wait_for(lambda: "recovery-failed" in page.evaluate("p => T.log[p].resyncs", path),
             timeout=15, message="a resync after the failed recovery")
    assert seqs(page, path) == [0]  # never a partial replay
