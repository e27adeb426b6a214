"""Who a connection is: the server-side context of logged-in, anonymous, public-access
and ``context_loader`` clients, and what of it reaches other clients (only the wire
fields: never an IP or roles)."""

import orjson
from servers import wait_for

from flask_jpulse_ws.testing import HTTPSession, WSTestClient

ECHO = "/api/1/ws/echo"


def logged_in(server, name):
    http = server.http()
    http.post(f"/_test/login/{name}")
    return http


def client(server, path=ECHO, http=None, **headers):
    if http is not None:
        headers["Cookie"] = http.cookie_header()
    c = WSTestClient(server.ws_url(path), headers=headers)
    c.receive(type="connected")
    return c


def server_ctx(c):
    return c.request({"type": "ctx"})["data"]


def context(username="", user_id=None, roles=(), first="", last="", initials="",
            is_public=False, namespace=ECHO):
    return {"username": username, "user_id": user_id, "roles": list(roles),
            "first_name": first, "last_name": last, "initials": initials,
            "is_public": is_public, "ip": "127.0.0.1", "namespace": namespace}


def raw_frames(c, until_type):
    """Raw payloads up to and including the first frame of app type ``until_type``."""
    out = []
    while True:
        _, payload = c.receive_frame()
        out.append(payload)
        data = orjson.loads(payload).get("data")
        if isinstance(data, dict) and data.get("type") == until_type:
            return out


def assert_nothing_private(payloads):
    for payload in payloads:
        for secret in (b"127.0.0.1", b'"roles"', b'"ip"', b'"admin"', b'"user_id"',
                       b'"userId"', b"Alice", b"Admin"):
            assert secret not in payload, payload


def test_logged_in_user_has_names_roles_initials_and_ip_on_the_server(server):
    with client(server, http=logged_in(server, "alice")) as c:
        assert server_ctx(c) == context("alice", "alice", ["admin"], "Alice", "Admin", "AA")


def test_anonymous_client_has_only_its_ip(server):
    with client(server) as c:
        assert server_ctx(c) == context()


def test_public_access_marks_whitelisted_connections_public_except_for_admins(make_server):
    srv = make_server(settings={"JPULSE_WS_PUBLIC_ACCESS": True,
                                "JPULSE_WS_PUBLIC_WHITELIST": ["ech*"]})
    with client(srv) as anon, client(srv, http=logged_in(srv, "bob")) as bob, \
            client(srv, http=logged_in(srv, "alice")) as alice:
        assert server_ctx(anon) == context(is_public=True)
        assert server_ctx(bob) == context("bob", "bob", ["user"], "Bob", "User", "BU",
                                          is_public=True)
        assert server_ctx(alice)["is_public"] is False  # admins are never "public"
    with client(srv, "/api/1/ws/rooms/lobby", http=logged_in(srv, "bob")) as other:
        # not on the whitelist: an ordinary connection (the room's broadcast shows it)
        assert other.receive(type="joined")["data"]["ctx"] == {"username": "bob"}


def test_only_the_username_of_a_sender_reaches_other_clients(server):
    alice_http = logged_in(server, "alice")
    with client(server, http=alice_http) as alice, client(server) as watcher:
        alice.send({"type": "broadcast", "data": {"n": 1}})
        payloads = raw_frames(watcher, "broadcast")
        said = orjson.loads(payloads[-1])
        assert said["data"]["ctx"] == {"username": "alice"}
        assert said["data"]["data"] == {"n": 1}
        assert_nothing_private(payloads)
        assert_nothing_private(raw_frames(alice, "broadcast"))  # nor back to the sender


def test_welcome_carries_only_the_username(server):
    alice = logged_in(server, "alice")
    c = WSTestClient(server.ws_url(ECHO), headers={"Cookie": alice.cookie_header()})
    with c:
        _, welcome = c.receive_frame()
        assert orjson.loads(welcome)["data"]["ctx"] == {"username": "alice"}
        assert_nothing_private([welcome])


def test_broadcast_context_of_a_logged_in_rest_caller(server):
    bob = logged_in(server, "bob")
    assert bob.get("/_test/context") == context("bob", "bob", ["user"], "Bob", "User", "BU",
                                                namespace="")
    assert server.http().get("/_test/context") == context(namespace="")
    with client(server) as watcher:
        bob.post("/_test/broadcast", {"path": ECHO, "data": {"type": "news", "data": 1}})
        payloads = raw_frames(watcher, "news")
        assert orjson.loads(payloads[-1])["data"]["ctx"] == {"username": "bob"}
        assert_nothing_private(payloads)
        server.http().post("/_test/broadcast", {"path": ECHO, "data": {"type": "news"}})
        assert watcher.receive(type="news")["data"]["ctx"] == {"username": ""}


def test_configured_wire_fields_are_sent_under_their_camel_case_names(make_server):
    srv = make_server(settings={"JPULSE_WS_WIRE_CTX_FIELDS": ["username", "initials",
                                                              "first_name"]})
    with client(srv, http=logged_in(srv, "alice")) as alice, client(srv) as watcher:
        alice.send({"type": "broadcast", "data": None})
        said = watcher.receive(type="broadcast")
        assert said["data"]["ctx"] == {"username": "alice", "initials": "AA",
                                       "firstName": "Alice"}


# ------------------------------------------------------------------ context_loader

LOADER_APP = "core_app:create_loader_app()"
STAFF = "/api/1/ws/staff"


def test_context_loader_decides_who_connects(make_server):
    srv = make_server(app=LOADER_APP)
    assert WSTestClient(srv.ws_url(STAFF)).wait_closed() == 4401  # the loader: anonymous
    with client(srv, STAFF, **{"X-User": "grace"}) as grace:
        assert server_ctx(grace) == context("grace", "grace", ["staff"], "Grace", "Hopper",
                                            "GH", namespace=STAFF)
        grace.send({"type": "say", "data": "hi"})
        said = grace.receive(type="said")
        assert said["data"]["ctx"] == {"username": "grace"}


def test_broadcast_context_uses_the_context_loader(make_server):
    srv = make_server(app=LOADER_APP)
    http = HTTPSession(srv.base)
    as_grace = {"headers": {"X-User": "grace"}}
    assert http.get("/_test/context", **as_grace).json() == \
        context("grace", "grace", ["staff"], "Grace", "Hopper", "GH", namespace="")
    with client(srv, STAFF, **{"X-User": "ada"}) as watcher:
        http.post("/_test/broadcast", json_body={"path": STAFF, "data": {"type": "memo"}},
                  **as_grace)
        assert watcher.receive(type="memo")["data"]["ctx"] == {"username": "grace"}


def test_context_loader_sessions_survive_the_ping_cycle(make_server):
    """No flask-login user loader to re-validate against: the connection stays."""
    srv = make_server(app=LOADER_APP, settings={"JPULSE_WS_PING_INTERVAL": 0.2,
                                                "JPULSE_WS_PONG_TIMEOUT": 5})
    with client(srv, STAFF, **{"X-User": "grace"}) as grace:
        wait_for(lambda: grace.receive_all(0.2) == [] and grace.pings_received >= 3,
                 message="three ping cycles")
        assert grace.request({"type": "ctx"})["data"]["username"] == "grace"
