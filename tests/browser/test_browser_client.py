"""The browser client (static/jpulse-ws.js) in real headless Chromium against gunicorn.

Pages are loaded from http://127.0.0.1:<port>/ so their sockets pass the same-origin
check. The page's recorder ``window.T`` (tests/apps/browser_app.py) keeps every status,
message and resync a handle reports.
"""

import re

import pytest
from servers import wait_for

pytestmark = pytest.mark.browser

#: Short client intervals so reconnect scenarios take a second, not a minute.
FAST = {"reconnectBaseInterval": 200, "reconnectMaxInterval": 1000, "maxReconnectAttempts": 20}

ECHO = "/api/1/ws/echo"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def room(name):
    """A path of its own per test, so upgrade counts do not mix."""
    return f"/api/1/ws/room/{name}"


def secure(name):
    return f"/api/1/ws/secure/{name}"


def upgrades(server, path):
    return server.http().get(f"/_test/upgrades?path={path}")["count"]


def wait_status(page, path, status, timeout=10_000):
    page.wait_for_function("([p, s]) => T.last(p) === s", arg=[path, status], timeout=timeout)


def log(page, path):
    return page.evaluate("p => T.log[p]", path)


def client_id(page, path):
    return page.evaluate("p => T.handles[p].getClientId()", path)


def test_connect_welcome_send_and_receive(app_server, open_page):
    """The welcome sets `connected` and the id; a sent message comes back as a broadcast."""
    page = open_page(app_server)
    page.evaluate("p => T.open(p)", ECHO)
    wait_status(page, ECHO, "connected")
    cid = client_id(page, ECHO)
    assert UUID.match(cid)
    assert page.evaluate("() => sessionStorage.getItem('jPulse.ws.clientUUID')") == cid
    assert page.evaluate("p => T.handles[p].getLimits().maxSize", ECHO) == 65536
    assert page.evaluate("p => T.handles[p].send({type: 'broadcast', data: {n: 1}})", ECHO)
    page.wait_for_function("p => T.log[p].messages.length === 1", arg=ECHO)
    frame = log(page, ECHO)["messages"][0]
    assert frame["success"] is True
    assert frame["data"]["type"] == "broadcast"
    assert frame["data"]["data"] == {"n": 1}
    assert log(page, ECHO)["statuses"] == ["connecting", "connected"]


def test_status_sequence_across_server_restart(own_server, open_page):
    """Killed and restarted on the same port: connected -> reconnecting -> connected."""
    srv = own_server()
    page = open_page(srv)
    path = room("restart")
    page.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    wait_status(page, path, "connected")
    first_id = client_id(page, path)
    srv.kill()
    wait_status(page, path, "reconnecting")
    # While it is down, nothing is sent and requests resolve at once.
    assert page.evaluate("p => T.handles[p].send({type: 'broadcast'})", path) is False
    result = page.evaluate("p => T.handles[p].request({type: 'whoami'})", path)
    assert result["success"] is False and result["code"] == "NOT_CONNECTED"
    own_server(port=srv.port)
    wait_status(page, path, "connected", timeout=20_000)
    rec = log(page, path)
    assert rec["statuses"] == ["connecting", "connected", "reconnecting", "connected"]
    assert rec["resyncs"] == ["reconnect"]
    assert rec["ids"] == [first_id, first_id]  # the restarted server accepts the kept id


def test_logout_closes_4401_and_the_client_stops(app_server, open_page):
    """Logout closes the socket 4401: `auth-required`, and no further upgrade requests."""
    page = open_page(app_server)
    path = secure("logout")
    assert page.evaluate("() => T.post('/login', {username: 'alice'})") == 200
    page.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    wait_status(page, path, "connected")
    assert upgrades(app_server, path) == 1
    assert page.evaluate("() => T.post('/logout')") == 200
    wait_status(page, path, "auth-required")
    # Observation window: five base intervals, in which a retrying client would retry.
    page.wait_for_timeout(5 * FAST["reconnectBaseInterval"])
    assert upgrades(app_server, path) == 1
    assert log(page, path)["statuses"] == ["connecting", "connected", "auth-required"]
    assert path not in page.evaluate("() => jPulse.ws.getConnections()")


def test_replaced_tab_takes_a_new_id_4409(app_server, context, open_page):
    """A tab duplicated with the same id (and its resume token: a duplicated tab copies
    sessionStorage) replaces the first; that one (4409) gets a new id."""
    path = room("dup")
    first = open_page(app_server)
    first.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    wait_status(first, path, "connected")
    shared = client_id(first, path)
    token = first.evaluate("() => sessionStorage.getItem('jPulse.ws.resumeToken')")
    second = open_page(app_server)  # same context: same cookies, same identity
    second.evaluate("([id, t]) => { sessionStorage.setItem('jPulse.ws.clientUUID', id); "
                    "sessionStorage.setItem('jPulse.ws.resumeToken', t); }", [shared, token])
    second.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    wait_status(second, path, "connected")
    assert client_id(second, path) == shared
    first.wait_for_function("p => T.log[p].ids.length === 2", arg=path)
    rec = log(first, path)
    assert rec["statuses"] == ["connecting", "connected", "reconnecting", "connected"]
    assert rec["resyncs"] == ["replaced"]
    renewed = rec["ids"][1]
    assert UUID.match(renewed) and renewed != shared
    assert first.evaluate("() => sessionStorage.getItem('jPulse.ws.clientUUID')") == renewed
    assert log(second, path)["statuses"] == ["connecting", "connected"]  # never replaced back


def test_the_id_is_kept_across_a_reconnect_with_its_resume_token(app_server, open_page):
    """The welcome's resume token is kept in sessionStorage and sent back with the id,
    so a dropped socket comes back as the same client."""
    page = open_page(app_server)
    path = room("resume")
    page.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    wait_status(page, path, "connected")
    before = client_id(page, path)
    token = page.evaluate("() => sessionStorage.getItem('jPulse.ws.resumeToken')")
    assert token and len(token) == 43
    assert app_server.http().post("/_test/cut", {"path": path, "clientId": before})["cut"]
    page.wait_for_function("p => T.log[p].ids.length === 2", arg=path)
    rec = log(page, path)
    assert rec["statuses"] == ["connecting", "connected", "reconnecting", "connected"]
    assert rec["ids"] == [before, before]
    whoami = page.evaluate("p => T.handles[p].request({type: 'whoami'})", path)
    assert whoami["data"]["clientId"] == before  # the server's word, not the page's


def test_a_tab_with_a_copied_id_but_not_its_token_gets_an_id_of_its_own(
        app_server, open_page):
    """Same browser, same address (one identity), the first tab's id copied into
    another tab without its resume token: the copy gets a fresh id, the first tab is
    not pushed out, and what is sent to the first tab's id reaches only that tab."""
    path = room("copied")
    first = open_page(app_server)
    first.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    wait_status(first, path, "connected")
    mine = client_id(first, path)
    second = open_page(app_server)
    second.evaluate("id => sessionStorage.setItem('jPulse.ws.clientUUID', id)", mine)
    second.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    wait_status(second, path, "connected")
    theirs = client_id(second, path)
    assert theirs != mine and UUID.match(theirs)
    http = app_server.http()
    http.post("/_test/send", {"path": path, "clientId": mine,
                              "data": {"type": "private", "data": "first"}})
    http.post("/_test/send", {"path": path, "clientId": theirs,
                              "data": {"type": "private", "data": "second"}})
    first.wait_for_function("p => T.log[p].messages.length === 1", arg=path)
    second.wait_for_function("p => T.log[p].messages.length === 1", arg=path)
    assert log(first, path)["messages"][0]["data"]["data"] == "first"
    assert log(second, path)["messages"][0]["data"]["data"] == "second"
    assert log(first, path)["statuses"] == ["connecting", "connected"]


def test_id_survives_a_reload_and_two_tabs_get_different_ids(app_server, open_page):
    """The id lives in sessionStorage: kept across a reload, one per tab."""
    page = open_page(app_server)
    page.evaluate("p => T.open(p)", ECHO)
    wait_status(page, ECHO, "connected")
    before = client_id(page, ECHO)
    page.reload()
    page.wait_for_function("() => window.jPulse && window.T")
    page.evaluate("p => T.open(p)", ECHO)
    wait_status(page, ECHO, "connected")
    assert client_id(page, ECHO) == before
    other = open_page(app_server)
    other.evaluate("p => T.open(p)", ECHO)
    wait_status(other, ECHO, "connected")
    assert client_id(other, ECHO) != before
    assert log(other, ECHO)["statuses"] == ["connecting", "connected"]


def test_frozen_server_is_detected_within_ping_plus_pong(own_server, open_page, frozen):
    """SIGSTOP: no `_pong`, so the socket is dropped within pingInterval + pongTimeout."""
    srv = own_server()
    page = open_page(srv)
    path = room("frozen")
    options = {**FAST, "pingInterval": 500, "pongTimeout": 500}
    page.evaluate("([p, o]) => T.open(p, o)", [path, options])
    wait_status(page, path, "connected")
    with frozen(srv):
        stopped_at = page.evaluate("() => Date.now()")  # taken before the stop: conservative
        wait_status(page, path, "reconnecting", timeout=5_000)
        rec = log(page, path)
        detected_at = rec["times"][rec["statuses"].index("reconnecting")]
        # 1000 ms of protocol, plus a little for timers that fire late.
        assert detected_at - stopped_at <= 500 + 500 + 250, detected_at - stopped_at
    wait_status(page, path, "connected", timeout=15_000)  # and it comes back


def test_request_gets_its_reply_or_a_timeout(app_server, open_page):
    """request() resolves with the reply frame, or REQUEST_TIMEOUT; late replies vanish."""
    page = open_page(app_server)
    page.evaluate("p => T.open(p)", ECHO)
    wait_status(page, ECHO, "connected")
    reply = page.evaluate("p => T.handles[p].request({type: 'whoami'})", ECHO)
    assert reply["success"] is True
    assert reply["data"]["clientId"] == client_id(page, ECHO)
    assert isinstance(reply["requestId"], str)
    late = page.evaluate(
        "p => T.handles[p].request({type: 'slow', seconds: 1}, {timeoutMs: 200})", ECHO)
    assert late["success"] is False and late["code"] == "REQUEST_TIMEOUT"
    # The server answers in order: this reply comes after the late one.
    again = page.evaluate("p => T.handles[p].request({type: 'whoami'})", ECHO)
    assert again["success"] is True
    assert log(page, ECHO)["messages"] == []  # replies never reach onMessage, late ones neither


def test_server_request_is_answered_with_reply(app_server, open_page):
    """A server request reaches onMessage; reply(frame, data) answers it."""
    page = open_page(app_server)
    path = room("ask")
    page.evaluate("p => T.open(p)", path)
    wait_status(page, path, "connected")
    http = app_server.http()
    result = http.post("/_test/ask", {"path": path, "clientId": client_id(page, path)})
    assert result["success"] is True
    assert result["data"]["answer"] == 42


def test_send_returns_false_while_disconnected(app_server, open_page):
    """An unknown namespace closes 4404: `disconnected`, send() false, no retry."""
    page = open_page(app_server)
    path = "/api/1/ws/no-such-thing"
    page.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    wait_status(page, path, "disconnected")
    assert page.evaluate("p => T.handles[p].send({type: 'x'})", path) is False
    result = page.evaluate("p => T.handles[p].request({type: 'x'})", path)
    assert result["code"] == "NOT_CONNECTED"
    assert log(page, path)["statuses"] == ["connecting", "disconnected"]
    assert upgrades(app_server, path) == 1


def test_exhausted_attempts_end_disconnected(app_server, open_page):
    """Refused (4500) on every attempt: 1 + maxReconnectAttempts upgrades, then `disconnected`."""
    page = open_page(app_server)
    path = room("busy-exhaust")
    options = {"reconnectBaseInterval": 50, "reconnectMaxInterval": 100,
               "maxReconnectAttempts": 3}
    page.evaluate("([p, o]) => T.open(p, o)", [path, options])
    wait_status(page, path, "disconnected")
    assert log(page, path)["statuses"] == ["connecting", "reconnecting", "disconnected"]
    assert upgrades(app_server, path) == 4
    assert path not in page.evaluate("() => jPulse.ws.getConnections()")


def test_disconnect_does_not_reconnect(app_server, open_page):
    """disconnect(): `disconnected` at once, out of getConnections(), no more upgrades."""
    page = open_page(app_server)
    path = room("bye")
    page.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    wait_status(page, path, "connected")
    page.evaluate("p => T.handles[p].disconnect()", path)
    assert page.evaluate("p => T.status(p)", path) == "disconnected"
    assert path not in page.evaluate("() => jPulse.ws.getConnections()")
    page.wait_for_timeout(5 * FAST["reconnectBaseInterval"])  # where a retry would happen
    assert upgrades(app_server, path) == 1
    assert log(page, path)["statuses"] == ["connecting", "connected", "disconnected"]


def test_get_connections_lists_live_handles(app_server, open_page):
    """getConnections() lists each live path once; connect() twice returns the same handle."""
    page = open_page(app_server)
    a, b = room("list-a"), room("list-b")
    page.evaluate("([a, b]) => { T.open(a); T.open(b); }", [a, b])
    wait_status(page, a, "connected")
    wait_status(page, b, "connected")
    assert page.evaluate("() => jPulse.ws.getConnections()") == [a, b]
    assert page.evaluate("p => jPulse.ws.connect(p) === T.handles[p]", a)
    page.evaluate("p => T.handles[p].disconnect()", a)
    assert page.evaluate("() => jPulse.ws.getConnections()") == [b]
    wait_for(lambda: upgrades(app_server, b) == 1, message="one upgrade for b")


def test_server_resync_frame_calls_on_resync_and_never_on_message(app_server, open_page):
    """A ``_resync`` pushed on an open socket (no reconnect): onResync gets its reason,
    onMessage never sees it, and the status stays `connected`."""
    page = open_page(app_server)
    path = room("resync")
    page.evaluate("([p, o]) => T.open(p, o)", [path, FAST])
    wait_status(page, path, "connected")
    assert app_server.http().post("/_test/resync", {"reason": "relay-gap"})["sent"] >= 1
    page.wait_for_function("p => T.log[p].resyncs.length === 1", arg=path)
    # A broadcast after it does reach onMessage: had the _resync gone there, it would
    # be ahead of this one (one socket, in order).
    page.evaluate("p => T.handles[p].send({type: 'broadcast', data: 'after'})", path)
    page.wait_for_function("p => T.log[p].messages.length >= 1", arg=path)
    rec = log(page, path)
    assert rec["resyncs"] == ["relay-gap"]
    assert [(m["data"]["type"], m["data"]["data"]) for m in rec["messages"]] == \
        [("broadcast", "after")]
    assert rec["statuses"] == ["connecting", "connected"]
    assert upgrades(app_server, path) == 1
