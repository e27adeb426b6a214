"""The connection context and the request bridge: initials, wire fields, the Origin
check and the client IP, on plain WSGI environ dicts."""

import pytest

from flask_jpulse_ws.context import Context, initials_of
from flask_jpulse_ws.server.auth import client_ip, context_from_user, origin_check


def environ(host="example.com", scheme="http", origin=None, **headers):
    env = {"HTTP_HOST": host, "wsgi.url_scheme": scheme, "REMOTE_ADDR": "10.0.0.1"}
    if origin is not None:
        env["HTTP_ORIGIN"] = origin
    env.update(headers)
    return env


# ------------------------------------------------------------------ context

@pytest.mark.parametrize("first, last, username, expected", [
    ("Ada", "Lovelace", "ada", "AL"),
    ("ada", "", "x", "A"),
    ("", "lovelace", "x", "L"),
    ("", "", "bob", "B"),
    ("", "", "", ""),
])
def test_initials_come_from_the_names_then_the_username(first, last, username, expected):
    assert initials_of(first, last, username) == expected


def full_context():
    return Context(username="ada", ip="203.0.113.9", roles=("admin", "user"),
                   first_name="Ada", last_name="Lovelace", initials="AL",
                   params={"room": "r1"}, is_public=True, namespace="/api/1/ws/r/r1",
                   user_id="7", extra={"team": "red"})


def test_only_the_named_fields_reach_the_wire():
    assert full_context().to_wire(("username",)) == {"username": "ada"}
    assert full_context().to_wire(()) == {}


def test_wire_fields_use_camel_case_names_whichever_spelling_is_configured():
    ctx = full_context()
    snake = ctx.to_wire(("first_name", "last_name", "is_public", "user_id"))
    camel = ctx.to_wire(("firstName", "lastName", "isPublic", "userId"))
    expected = {"firstName": "Ada", "lastName": "Lovelace", "isPublic": True, "userId": "7"}
    assert snake == camel == expected


def test_tuples_become_lists_and_extra_fields_can_be_named():
    wire = full_context().to_wire(("roles", "initials", "team", "missing"))
    assert wire == {"roles": ["admin", "user"], "initials": "AL", "team": "red", "missing": ""}


def test_get_reads_fields_by_either_name_and_falls_back_to_extra():
    ctx = full_context()
    assert ctx.get("firstName") == ctx.get("first_name") == "Ada"
    assert ctx.get("team") == "red" and ctx.get("nothing", 5) == 5


def test_authentication_and_roles():
    assert full_context().is_authenticated and not Context().is_authenticated
    assert full_context().has_any_role(["x", "user"]) and not full_context().has_any_role([])


class FakeUser:
    is_authenticated = True

    def __init__(self, **attrs):
        self.__dict__.update(attrs)

    def get_id(self):
        return self.__dict__.get("id", "u1")


def test_context_from_a_user_takes_names_roles_and_computes_initials():
    ctx = context_from_user(FakeUser(username="ada", first_name="Ada", last_name="Lovelace",
                                     roles=["admin"]), "1.2.3.4")
    assert (ctx.username, ctx.ip, ctx.roles, ctx.initials, ctx.user_id) == \
        ("ada", "1.2.3.4", ("admin",), "AL", "u1")
    lone = context_from_user(FakeUser(roles="user"), "1.2.3.4")  # a single role string
    assert lone.roles == ("user",) and lone.username == "u1" and lone.initials == "U"


def test_context_of_an_anonymous_user_holds_only_the_ip():
    anon = type("Anon", (), {"is_authenticated": False})()
    for user in (None, anon):
        assert context_from_user(user, "1.2.3.4") == Context(ip="1.2.3.4")


# ------------------------------------------------------------------ origin

def test_no_origin_header_is_allowed_and_star_allows_everything():
    assert origin_check(environ(), None, 0) == (True, "")
    assert origin_check(environ(origin="https://evil.test"), "*", 0)[0] is True


def test_same_origin_by_default_and_nothing_else():
    env = environ(host="example.com:8080", origin="http://example.com:8080")
    assert origin_check(env, None, 0) == (True, "http://example.com:8080")
    for other in ("http://evil.test", "http://example.com:8081", "https://example.com:8080",
                  "http://sub.example.com:8080", "null"):
        allowed, expected = origin_check({**env, "HTTP_ORIGIN": other}, None, 0)
        assert not allowed and expected == "http://example.com:8080", other


def test_origin_comparison_ignores_case():
    assert origin_check(environ(origin="HTTP://Example.COM"), None, 0)[0]


@pytest.mark.parametrize("scheme, host, origin, allowed", [
    ("http", "example.com:80", "http://example.com", True),
    ("http", "example.com", "http://example.com:80", True),
    ("https", "example.com:443", "https://example.com", True),
    ("https", "example.com", "https://example.com:443", True),
    ("https", "example.com", "https://example.com:80", False),
    ("http", "example.com", "http://example.com:443", False),
    ("https", "example.com", "http://example.com", False),
])
def test_default_ports_are_the_same_origin(scheme, host, origin, allowed):
    assert origin_check(environ(host=host, scheme=scheme, origin=origin), None, 0)[0] is allowed


def test_forwarded_host_and_proto_count_only_behind_trusted_proxies():
    env = environ(host="internal:8000", origin="https://app.example.com",
                  HTTP_X_FORWARDED_HOST="app.example.com", HTTP_X_FORWARDED_PROTO="https")
    assert origin_check(env, None, 0) == (False, "http://internal:8000")
    assert origin_check(env, None, 1) == (True, "https://app.example.com")


def test_forwarded_host_entries_written_by_the_client_are_ignored():
    env = environ(host="internal:8000", HTTP_X_FORWARDED_HOST="evil.test, app.example.com",
                  HTTP_X_FORWARDED_PROTO="http, https")
    assert origin_check({**env, "HTTP_ORIGIN": "https://app.example.com"}, None, 1)[0]
    assert not origin_check({**env, "HTTP_ORIGIN": "http://evil.test"}, None, 1)[0]
    assert not origin_check({**env, "HTTP_ORIGIN": "https://evil.test"}, None, 1)[0]


def test_configured_origins_replace_same_origin():
    allowed = ("https://app.example.com", "http://localhost:3000")
    same = environ(host="example.com", origin="http://example.com")
    assert origin_check(same, allowed, 0) == \
        (False, "http://localhost:3000, https://app.example.com")
    for ok in ("https://app.example.com", "https://app.example.com:443",
               "http://localhost:3000"):
        assert origin_check({**same, "HTTP_ORIGIN": ok}, allowed, 0)[0], ok
    for bad in ("http://app.example.com", "http://localhost:3001", "https://example.com"):
        assert not origin_check({**same, "HTTP_ORIGIN": bad}, allowed, 0)[0], bad


# ------------------------------------------------------------------ client IP

def test_x_forwarded_for_is_ignored_without_trusted_proxies():
    assert client_ip(environ(HTTP_X_FORWARDED_FOR="6.6.6.6"), 0) == "10.0.0.1"


@pytest.mark.parametrize("trusted, forwarded, expected", [
    (1, "203.0.113.9", "203.0.113.9"),
    (1, "6.6.6.6, 203.0.113.9", "203.0.113.9"),  # the client wrote 6.6.6.6 itself
    (1, "6.6.6.6,, 203.0.113.9 ", "203.0.113.9"),
    (2, "203.0.113.9, 10.0.0.2", "203.0.113.9"),
    (2, "6.6.6.6, 7.7.7.7, 203.0.113.9, 10.0.0.2", "203.0.113.9"),
    (2, "203.0.113.9", "10.0.0.1"),  # fewer entries than proxies: the peer address
    (1, "", "10.0.0.1"),
])
def test_x_forwarded_for_counts_from_the_right_behind_trusted_proxies(trusted, forwarded,
                                                                       expected):
    assert client_ip(environ(HTTP_X_FORWARDED_FOR=forwarded), trusted) == expected


def test_no_forwarded_header_and_ipv4_mapped_addresses():
    assert client_ip(environ(), 2) == "10.0.0.1"
    assert client_ip({"REMOTE_ADDR": "::ffff:192.0.2.1"}, 0) == "192.0.2.1"
    assert client_ip({}, 0) == ""
