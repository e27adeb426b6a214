"""Missed-message recovery in real Chromium: a page offline for 3 s misses nothing."""

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


def test_a_page_offline_for_three_seconds_shows_every_message_once(app_server, context,
                                                                    open_page):
    path = "/api/1/ws/hist/offline"
    page = open_page(app_server)
    page.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    page.wait_for_function("p => T.last(p) === 'connected'", arg=path)
    burst(app_server, path, 5, 0)
    page.wait_for_function("p => T.log[p].messages.length === 5", arg=path)
    context.set_offline(True)
    started = time.monotonic()
    burst(app_server, path, 20, 5)  # sent while the page is offline
    while time.monotonic() - started < 3:
        time.sleep(0.1)  # the point of the test: three seconds without a network
    context.set_offline(False)
    page.wait_for_function("p => T.log[p].messages.length >= 25", arg=path, timeout=15_000)
    burst(app_server, path, 5, 25)
    page.wait_for_function("p => T.log[p].messages.length >= 30", arg=path, timeout=10_000)
    assert seqs(page, path) == list(range(30))  # every frame, once, in order
    log = page.evaluate("p => T.log[p]", path)
    assert "recovery-failed" not in log["resyncs"]
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
