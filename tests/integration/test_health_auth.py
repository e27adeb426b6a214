"""Health pings, pong deadlines, and session re-validation on the ping cycle."""

import time

from flask_jpulse_ws.testing import ConnectionClosedError, WSTestClient

SETTINGS = {"JPULSE_WS_PING_INTERVAL": 0.2, "JPULSE_WS_PONG_TIMEOUT": 0.5}


def login(server, name):
    http = server.http()
    http.post(f"/_test/login/{name}")
    return http


def test_server_pings_and_a_client_that_answers_stays(server):
    with WSTestClient(server.ws_url("/api/1/ws/echo")) as c:
        c.receive(type="connected")
        assert c.receive_all(1.2) == []  # reading answers the pings
        assert c.pings_received >= 3
        assert c.request({"type": "echo", "ok": 1})["data"]["ok"] == 1


def test_a_client_that_never_answers_pings_is_cut_after_the_pong_timeout(server):
    c = WSTestClient(server.ws_url("/api/1/ws/echo"), answer_pings=False)
    c.receive(type="connected")
    started = time.monotonic()
    code = c.wait_closed(timeout=5)
    elapsed = time.monotonic() - started
    assert code == 1011 and c.close_reason == "pong timeout"
    assert elapsed < 0.2 + 0.5 + 0.5  # ping interval + pong timeout + scheduler slack
    c.close()


def test_logout_in_an_http_request_closes_that_sessions_socket_4401(server):
    http = login(server, "bob")
    other = login(server, "bob")  # the same user in another browser stays
    logout_closes_only_that_session(server, http, other)


def joined(server, session, path="/api/1/ws/secure"):
    """A socket opened with ``session``'s cookie, past its welcome."""
    c = WSTestClient(server.ws_url(path), headers={"Cookie": session.cookie_header()})
    c.receive(type="connected")
    return c


def logout_closes_only_that_session(server, http, other):
    """``http`` logs out: its socket gets SESSION_EXPIRED and 4401, ``other``'s (the same
    user in another browser) stays."""
    c, keep = joined(server, http), joined(server, other)
    http.post("/_test/logout")
    expired = c.receive()
    assert expired["success"] is False and expired["code"] == "SESSION_EXPIRED"
    assert c.wait_closed() == 4401
    assert keep.request({"type": "x"})["data"] == {"username": "bob"}
    keep.close()


def test_a_session_logged_in_without_the_signal_gets_a_token_and_logout_works(server):
    """A session logged in before the extension was there has no token; its next HTTP
    request gets one, so logout closes its sockets and not another session's."""
    http, other = server.http(), server.http()
    for session in (http, other):
        session.post("/_test/login-without-signal/bob")
        session.get("/_test/stats")  # any HTTP request names the session
    logout_closes_only_that_session(server, http, other)


def test_logout_also_closes_sockets_of_public_namespaces_opened_by_that_session(server):
    http = login(server, "bob")
    c = joined(server, http, "/api/1/ws/echo")
    http.post("/_test/logout")
    try:
        c.receive()
    except ConnectionClosedError:
        pass
    assert c.wait_closed() == 4401


def test_user_deleted_between_pings_gets_session_expired_then_4401(make_server):
    srv = make_server(settings=SETTINGS)
    http = login(srv, "bob")
    c = joined(srv, http)
    http.post("/_test/delete/bob")
    assert c.receive(timeout=3)["code"] == "SESSION_EXPIRED"
    assert c.wait_closed() == 4401


def test_user_deactivated_between_pings_gets_session_expired_then_4401(make_server):
    """``is_active`` false on the reloaded user ends the session like a deleted user."""
    srv = make_server(settings=SETTINGS)
    http = login(srv, "bob")
    other = login(srv, "alice")  # another, still active user keeps her socket
    c, keep = joined(srv, http), joined(srv, other)
    http.post("/_test/deactivate/bob")
    expired = c.receive(timeout=3)
    assert expired["success"] is False and expired["code"] == "SESSION_EXPIRED"
    assert c.wait_closed() == 4401
    assert keep.request({"type": "x"})["data"] == {"username": "alice"}
    keep.close()


def test_user_who_lost_the_role_is_closed_4403(make_server):
    srv = make_server(settings=SETTINGS)
    http = login(srv, "alice")
    c = joined(srv, http, "/api/1/ws/admin-only")
    http.post("/_test/demote/alice")
    assert c.wait_closed(timeout=3) == 4403


def test_public_access_connections_are_not_revalidated(make_server):
    srv = make_server(settings={**SETTINGS, "JPULSE_WS_PUBLIC_ACCESS": True,
                                "JPULSE_WS_PUBLIC_WHITELIST": ["secure"]})
    http = login(srv, "bob")
    c = joined(srv, http)
    http.post("/_test/delete/bob")
    assert c.receive_all(1.0) == []  # several ping cycles, still open
    assert c.request({"type": "x"})["success"] is True
    c.close()


def test_a_logged_out_session_cookie_replayed_is_refused_4401(server):
    """Logout revokes the session: a copy of its cookie taken before (another device, a
    thief) opens no socket afterwards, in any namespace; a new login opens them again."""
    http = login(server, "bob")
    stolen = {"Cookie": http.cookie_header()}
    joined(server, http).close()
    http.post("/_test/logout")
    for path in ("/api/1/ws/secure", "/api/1/ws/echo"):
        assert WSTestClient(server.ws_url(path), headers=stolen).wait_closed() == 4401
    again = login(server, "bob")  # a new session of the same user is not affected
    c = joined(server, again)
    assert c.request({"type": "x"})["data"] == {"username": "bob"}
    c.close()
