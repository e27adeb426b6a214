"""Every handshake outcome, in protocol order, against a real gevent server."""

import asyncio
import socket
import struct
import uuid

import pytest
from servers import wait_for
from storm import StormClient

from flask_jpulse_ws.core import frames, resume
from flask_jpulse_ws.testing import HandshakeRefused, WSTestClient

SETTINGS = {"JPULSE_WS_DYNAMIC_GRACE": 0.3}


def connect(server, path, **kw):
    return WSTestClient(server.ws_url(path), **kw)


def logged_in(server, name):
    http = server.http()
    http.post(f"/_test/login/{name}")
    return http


def test_welcome_names_the_client_namespace_and_limits(server):
    with connect(server, "/api/1/ws/echo") as c:
        welcome = c.receive()
    data = welcome["data"]
    assert welcome["success"] is True and data["type"] == "connected"
    assert uuid.UUID(data["data"]["clientId"]).version == 4
    assert data["data"]["namespace"] == "/api/1/ws/echo"
    assert data["data"]["limits"] == {"maxSize": 65536, "interval": 1000, "maxMessages": 50}
    assert data["ctx"] == {"username": ""}


def test_foreign_origin_gets_403_before_the_upgrade_and_a_log_line(server):
    with pytest.raises(HandshakeRefused) as err:
        connect(server, "/api/1/ws/echo", headers={"Origin": "http://evil.example"})
    assert err.value.status == 403
    assert f"expected http://127.0.0.1:{server.port}" in server.log()
    # The log line shows what the expectation came from, and the proxy fix.
    assert f"from Host '127.0.0.1:{server.port}' and X-Forwarded-Host None" in server.log()
    assert "$http_host" in server.log()


def test_same_origin_and_no_origin_are_allowed(server):
    with connect(server, "/api/1/ws/echo",
                 headers={"Origin": f"http://127.0.0.1:{server.port}"}) as c:
        assert c.receive(type="connected")
    with connect(server, "/api/1/ws/echo") as c:  # scripts send no Origin
        assert c.receive(type="connected")


def test_configured_origins_replace_same_origin(make_server):
    srv = make_server(settings={"JPULSE_WS_ALLOWED_ORIGINS": ["https://app.example.com"]})
    with connect(srv, "/api/1/ws/echo", headers={"Origin": "https://app.example.com"}) as c:
        assert c.receive(type="connected")
    with pytest.raises(HandshakeRefused):
        connect(srv, "/api/1/ws/echo", headers={"Origin": f"http://127.0.0.1:{srv.port}"})


def test_plain_http_request_to_a_namespace_is_not_an_upgrade(server):
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.base + "/api/1/ws/echo", timeout=5)
    assert err.value.code in (400, 404)


def test_unknown_path_closes_4404(server):
    assert connect(server, "/api/1/ws/nothing-here").wait_closed() == 4404


def test_refusals_are_counted_by_close_code(server):
    """Each connection refused during admission is counted under its close code."""
    before = server.http().get("/_test/stats")["rejections"].get("4404", 0)
    for _ in range(3):
        assert connect(server, "/api/1/ws/nothing-here").wait_closed() == 4404
    assert server.http().get("/_test/stats")["rejections"]["4404"] == before + 3


def test_trailing_slash_is_a_different_path(server):
    assert connect(server, "/api/1/ws/echo/").wait_closed() == 4404


def test_require_auth_refuses_anonymous_4401_and_accepts_a_login(server):
    assert connect(server, "/api/1/ws/secure").wait_closed() == 4401
    http = logged_in(server, "bob")
    with connect(server, "/api/1/ws/secure", headers={"Cookie": http.cookie_header()}) as c:
        assert c.receive(type="connected")["data"]["ctx"] == {"username": "bob"}


def test_require_roles_is_4403_for_a_user_without_them_and_4401_anonymous(server):
    bob = logged_in(server, "bob")
    assert connect(server, "/api/1/ws/admin-only",
                   headers={"Cookie": bob.cookie_header()}).wait_closed() == 4403
    assert connect(server, "/api/1/ws/admin-only").wait_closed() == 4401
    alice = logged_in(server, "alice")
    with connect(server, "/api/1/ws/admin-only", headers={"Cookie": alice.cookie_header()}) as c:
        assert c.receive(type="connected")


@pytest.mark.parametrize("room, code", [("nope", 4404), ("forbidden", 4403), ("teapot", 4418),
                                        ("bad-code", 1011), ("explode", 1011)])
def test_on_create_results_become_close_codes(server, room, code):
    assert connect(server, f"/api/1/ws/rooms/{room}").wait_closed() == code


@pytest.mark.parametrize("room, result", [("returns-true", "True"), ("returns-text", "'yes'"),
                                          ("returns-float", "4403.0")])
def test_on_create_returning_neither_ctx_none_nor_an_int_closes_1011(server, room, result):
    """``True`` is a bool, not a close code; strings and floats are not ints either."""
    assert connect(server, f"/api/1/ws/rooms/{room}").wait_closed() == 1011
    wait_for(lambda: f"on_create of /api/1/ws/rooms/:room returned {result}" in server.log(),
             message="the log line naming the bad result")


def test_refused_rooms_leave_no_namespace_behind(server):
    http = server.http()
    for i in range(5):
        connect(server, f"/api/1/ws/rooms/nope{i}").wait_closed()
    paths = [ns["path"] for ns in http.get("/_test/stats")["namespaces"]]
    assert not any(p.startswith("/api/1/ws/rooms/nope") for p in paths)


def test_on_create_can_enrich_the_context(server):
    with connect(server, "/api/1/ws/rooms/lobby") as c:
        c.receive(type="connected")
        assert c.receive(type="joined")["data"]["data"] == {"room": "lobby"}


def test_params_are_percent_decoded_and_slashes_refused(server):
    with connect(server, "/api/1/ws/open-rooms/caf%C3%A9") as c:
        assert c.receive(type="connected")["data"]["data"]["namespace"] == \
            "/api/1/ws/open-rooms/café"
    assert connect(server, "/api/1/ws/open-rooms/a%2Fb").wait_closed() == 4404


@pytest.mark.parametrize("given", ["not-a-uuid", "A1B2C3D4-0000-4000-8000-000000000000",
                                   "%27%3B%20DROP%20TABLE", ""])
def test_malformed_client_ids_are_replaced(server, given):
    with connect(server, f"/api/1/ws/echo?uuid={given}") as c:
        client_id = c.receive(type="connected")["data"]["data"]["clientId"]
    assert client_id != given and uuid.UUID(client_id).version == 4


def issued(server, path="/api/1/ws/echo", **kw):
    """(client id, resume token) of a first welcome; that socket is closed."""
    with connect(server, path, **kw) as c:
        data = c.receive(type="connected")["data"]["data"]
    return data["clientId"], data["resumeToken"]


def test_the_welcome_hands_out_the_resume_token_of_the_id(server):
    with connect(server, "/api/1/ws/echo") as c:
        data = c.receive(type="connected")["data"]["data"]
    assert resume.verify(resume.derive_key(b"test-secret"), data["clientId"],
                         data["resumeToken"])


def test_a_client_id_is_kept_with_its_resume_token(server):
    mine, token = issued(server)
    with connect(server, f"/api/1/ws/echo?uuid={mine}&resume={token}") as c:
        welcome = c.receive(type="connected")["data"]["data"]
    assert welcome["clientId"] == mine and welcome["resumeToken"] == token


def test_a_client_id_without_its_resume_token_gets_a_fresh_id(server):
    """An id is public (presence lists): presented without its token, or with a wrong
    one, it is not kept, even when nobody holds it."""
    mine, token = issued(server)
    other, other_token = issued(server)
    for query in (f"uuid={mine}", f"uuid={mine}&resume=", f"uuid={mine}&resume={other_token}",
                  f"uuid={mine}&resume={token[:-1]}", f"uuid={mine}&resume={token}x",
                  f"uuid={str(uuid.uuid4())}&resume={token}"):
        with connect(server, f"/api/1/ws/echo?{query}") as c:
            given = c.receive(type="connected")["data"]["data"]["clientId"]
        assert given not in (mine, other) and uuid.UUID(given).version == 4, query


def test_same_ip_and_user_agent_without_the_token_neither_takes_the_id_nor_its_messages(
        server):
    """Behind one NAT with the same browser (one anonymous identity), a copied client id
    without its resume token gets a fresh id: the owner is not pushed out (no 4409) and
    receives its directed messages, which the copier never sees."""
    victim = connect(server, "/api/1/ws/echo")
    mine = victim.receive(type="connected")["data"]["data"]["clientId"]
    with connect(server, f"/api/1/ws/echo?uuid={mine}") as copier:
        theirs = copier.receive(type="connected")["data"]["data"]["clientId"]
        assert theirs != mine
        http = server.http()
        http.post("/_test/send", {"path": "/api/1/ws/echo", "clientId": mine,
                                  "data": {"type": "private", "data": "for the owner"}})
        http.post("/_test/send", {"path": "/api/1/ws/echo", "clientId": theirs,
                                  "data": {"type": "marker", "data": "after"}})
        assert victim.receive(type="private")["data"]["data"] == "for the owner"
        assert copier.receive()["data"]["type"] == "marker"  # sent after: nothing before it
    assert victim.request({"type": "whoami"})["data"]["clientId"] == mine
    victim.close()


def test_same_identity_same_id_replaces_the_older_socket_with_4409(server):
    mine, token = issued(server)
    old = connect(server, f"/api/1/ws/echo?uuid={mine}&resume={token}")
    old.receive(type="connected")
    with connect(server, f"/api/1/ws/echo?uuid={mine}&resume={token}") as new:
        assert new.receive(type="connected")["data"]["data"]["clientId"] == mine
        assert old.wait_closed() == 4409
        # the newer socket keeps the id: requests addressed to it still arrive
        assert new.request({"type": "whoami"})["data"]["clientId"] == mine


def test_another_identity_never_takes_over_an_id(server):
    """Not even with the resume token, while the owner holds the id."""
    mine, token = issued(server, headers={"User-Agent": "victim"})
    victim = connect(server, f"/api/1/ws/echo?uuid={mine}&resume={token}",
                     headers={"User-Agent": "victim"})
    assert victim.receive(type="connected")["data"]["data"]["clientId"] == mine
    with connect(server, f"/api/1/ws/echo?uuid={mine}&resume={token}",
                 headers={"User-Agent": "attacker"}) as attacker:
        given = attacker.receive(type="connected")["data"]["data"]["clientId"]
    assert given != mine
    assert victim.request({"type": "whoami"})["data"]["clientId"] == mine
    victim.close()


def test_two_logins_of_one_user_are_different_identities(server):
    first, second = logged_in(server, "bob"), logged_in(server, "bob")
    mine, token = issued(server, "/api/1/ws/secure", headers={"Cookie": first.cookie_header()})
    a = connect(server, f"/api/1/ws/secure?uuid={mine}&resume={token}",
                headers={"Cookie": first.cookie_header()})
    assert a.receive(type="connected")["data"]["data"]["clientId"] == mine
    with connect(server, f"/api/1/ws/secure?uuid={mine}&resume={token}",
                 headers={"Cookie": second.cookie_header()}) as b:
        assert b.receive(type="connected")["data"]["data"]["clientId"] != mine
    a.close()


def wait_for_a_free_slot(srv):
    """Once a client has left, a new connection is accepted again (the cap freed a slot)."""
    def fits():
        c = connect(srv, "/api/1/ws/echo")
        try:
            return c.receive(type="connected", timeout=1)
        finally:
            c.close()
    wait_for(fits, timeout=5, message="a free slot after a client left")


def test_per_ip_cap_closes_4529_and_frees_a_slot_when_one_leaves(make_server):
    srv = make_server(settings={"JPULSE_WS_MAX_CONNECTIONS_PER_IP": 2})
    a, b = connect(srv, "/api/1/ws/echo"), connect(srv, "/api/1/ws/echo")
    a.receive(type="connected")
    b.receive(type="connected")
    assert connect(srv, "/api/1/ws/echo").wait_closed() == 4529
    a.close()
    wait_for_a_free_slot(srv)
    b.close()


def test_total_cap_closes_4529_server_full_and_frees_a_slot_when_one_leaves(make_server):
    srv = make_server(settings={"JPULSE_WS_MAX_CONNECTIONS": 2})
    a, b = connect(srv, "/api/1/ws/echo"), connect(srv, "/api/1/ws/open-rooms/x")
    a.receive(type="connected")
    b.receive(type="connected")
    refused = connect(srv, "/api/1/ws/echo")
    assert refused.wait_closed() == 4529 and refused.close_reason == "Server full"
    a.close()
    wait_for_a_free_slot(srv)
    b.close()


def test_caps_are_checked_before_the_namespace_lookup(make_server):
    """Protocol order: caps (4529) come before the namespace (4404), so a full server
    answers "retry later" even for a path it does not serve."""
    srv = make_server(settings={"JPULSE_WS_MAX_CONNECTIONS": 1})
    with connect(srv, "/api/1/ws/echo") as held:
        held.receive(type="connected")
        for path in ("/api/1/ws/nothing-here", "/api/1/ws/rooms/nope", "/api/1/ws/secure"):
            c = connect(srv, path)
            assert (c.wait_closed(), c.close_reason) == (4529, "Server full"), path
    wait_for(lambda: srv.http().get("/_test/stats")["openConnections"] == 0,
             message="the held connection to be gone")
    assert connect(srv, "/api/1/ws/nothing-here").wait_closed() == 4404  # under the cap


def test_x_forwarded_for_is_ignored_without_trusted_proxies(server):
    with connect(server, "/api/1/ws/echo", headers={"X-Forwarded-For": "6.6.6.6"}) as c:
        assert c.request({"type": "whoami"})["data"]["ip"] == "127.0.0.1"


def test_x_forwarded_for_counts_behind_a_trusted_proxy(make_server):
    srv = make_server(settings={"JPULSE_WS_TRUSTED_PROXIES": 1})
    with connect(srv, "/api/1/ws/echo",
                 headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}) as c:
        assert c.request({"type": "whoami"})["data"]["ip"] == "203.0.113.9"


def test_public_access_admits_anonymous_clients_to_whitelisted_paths_only(make_server):
    srv = make_server(settings={"JPULSE_WS_PUBLIC_ACCESS": True,
                                "JPULSE_WS_PUBLIC_WHITELIST": ["secure"]})
    with connect(srv, "/api/1/ws/secure") as c:
        assert c.receive(type="connected")
    assert connect(srv, "/api/1/ws/admin-only").wait_closed() == 4401


def test_namespace_cap_refuses_new_rooms_with_4529_and_keeps_existing_ones(make_server):
    srv = make_server(settings={"JPULSE_WS_MAX_NAMESPACES": 10})
    literals = len(srv.http().get("/_test/stats")["namespaces"])
    held = []
    for i in range(10 - literals):
        c = connect(srv, f"/api/1/ws/open-rooms/r{i}")
        c.receive(type="connected")
        held.append(c)
    assert len(srv.http().get("/_test/stats")["namespaces"]) == 10
    assert connect(srv, "/api/1/ws/open-rooms/one-too-many").wait_closed() == 4529
    with connect(srv, "/api/1/ws/open-rooms/r0") as again:  # existing rooms still open
        assert again.receive(type="connected")
    for c in held:
        c.close()


@pytest.mark.parametrize("phase", ["admit", "join"])
def test_a_failure_after_the_upgrade_ends_in_a_close_frame_not_an_http_500(server, phase):
    """0.1.0 let an exception raised after the 101 reach gunicorn, which wrote an HTTP
    500 into the WebSocket stream: clients read 'H' (0x48) as a fragmented close frame,
    and gunicorn then parsed the client's frames as the next HTTP request. Now the
    connection ends with close 1011 on a clean stream, and the error is logged."""
    client = StormClient()

    async def attempt():
        try:
            await client.open(server.port, f"/api/1/ws/faulty/{phase}", timeout=5)
        except ConnectionError:
            pass  # the welcome never comes: the close frame does
        await asyncio.wait_for(client.task, 5)

    errors_before = server.http().get("/_test/stats")["serverErrors"]
    asyncio.run(attempt())
    assert client.error is None  # the decoder found no stray byte
    assert client.close_code == 1011
    if phase == "admit":  # refused during admission: counted with the 1011 refusals
        expected = "admission to /api/1/ws/faulty/admit failed"
    else:  # the connection had begun: counted as a server error
        expected = "WebSocket connection to /api/1/ws/faulty/join failed"
        wait_for(lambda: server.http().get("/_test/stats")["serverErrors"] ==
                 errors_before + 1, timeout=5, message="serverErrors counted")
    # The worker logs it just after the close frame has gone out: poll, do not race it.
    wait_for(lambda: expected in server.log(), timeout=5, message=expected)
    log = server.log()
    assert "Invalid HTTP request line" not in log and "Error handling request" not in log
    with connect(server, "/api/1/ws/echo") as c:  # the worker serves on
        assert c.receive()["data"]["type"] == "connected"


#: ``struct tcp_info`` (linux/tcp.h): the offset of ``tcpi_data_segs_in`` (Linux 4.6+).
_DATA_SEGS_IN = 152


def _data_segments_received(sock):
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, _DATA_SEGS_IN)[0]


@pytest.mark.parametrize("path, first_frame", [("/api/1/ws/echo", frames.OP_TEXT),
                                               ("/api/1/ws/nowhere", frames.OP_CLOSE)])
def test_the_101_goes_out_with_the_first_frame_in_one_segment(server, path, first_frame):
    """The HTTP 101 waits for admission and leaves in one write with the welcome (or the
    close frame of a refusal): one send per handshake instead of two (the second one was
    5 % of a worker's CPU in a reconnect storm). The client's kernel counts the data
    segments it received: one."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(frames.upgrade_request("127.0.0.1", server.port, path,
                                            frames.client_key()))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "the server closed before its answer"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        decoder = frames.FrameDecoder(1 << 20, expect_mask=False)
        events = decoder.feed(rest)
        while not events:
            chunk = sock.recv(65536)
            assert chunk, "the server closed before the first frame"
            events = decoder.feed(chunk)
        assert events[0][0] == first_frame
        assert _data_segments_received(sock) == 1
