"""Presence in real headless Chromium: two tabs in a room see each other join and leave.

The page (``/_test/presence-page`` of tests/apps/presence_app.py) records every
``onPresence`` event of its handle in ``window.P``; the member map is ``P.ids()``.
"""

import pytest
from servers import GunicornServer

pytestmark = pytest.mark.browser

ROOM = "/api/1/ws/presence-rooms/browser"


@pytest.fixture(scope="module")
def presence_server():
    srv = GunicornServer(app="presence_app:create_app()",
                         settings={"JPULSE_WS_PRESENCE_BATCH": 0.2}).start()
    yield srv
    srv.stop()


def open_room(context, server):
    page = context.new_page()
    page.goto(server.base + "/_test/presence-page")
    page.wait_for_function("() => window.jPulse && window.P")
    page.evaluate("p => P.join(p)", ROOM)
    page.wait_for_function("() => P.handle.isConnected()")
    return page


def client_id(page):
    return page.evaluate("() => P.handle.getClientId()")


def wait_ids(page, ids):
    page.wait_for_function("ids => JSON.stringify(P.ids()) === JSON.stringify(ids)",
                           arg=sorted(ids), timeout=10_000)


def test_two_pages_see_each_other_join_and_leave(browser, presence_server):
    """Page A sees B arrive (event and map), B loads A with the list; B leaves, A sees it."""
    ctx_a, ctx_b = browser.new_context(), browser.new_context()
    try:
        a = open_room(ctx_a, presence_server)
        a_id = client_id(a)
        wait_ids(a, [a_id])
        assert a.evaluate("() => P.events[0].snapshot") is True
        b = open_room(ctx_b, presence_server)
        b_id = client_id(b)
        wait_ids(b, [a_id, b_id])  # B's list came from the server after its welcome
        wait_ids(a, [a_id, b_id])  # A learnt it from a _presence batch
        joined = a.evaluate("() => P.events.flatMap(e => e.joined.map(m => m.clientId))")
        assert b_id in joined
        member = a.evaluate("id => P.handle.getPresence().find(m => m.clientId === id)", b_id)
        assert set(member) == {"clientId", "username", "connectedAt", "info"}
        messages = a.evaluate("() => P.handle.presence()")
        assert {m["clientId"] for m in messages["data"]["members"]} == {a_id, b_id}
        b.close()  # the tab goes away: its socket closes
        wait_ids(a, [a_id])
        left = a.evaluate("() => P.events.flatMap(e => e.left.map(m => m.clientId))")
        assert left == [b_id]
    finally:
        ctx_a.close()
        ctx_b.close()
