"""Hostile input: fuzzed frames and handshakes, slowloris, room-path floods.

Every test checks three things: the hostile client gets a documented answer
(an error frame or a documented close code), the worker survives, and a
bystander on the same worker keeps receiving broadcasts.
"""

import base64
import json
import os
import socket
import time
import urllib.parse

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import wait_for

from flask_jpulse_ws.core import frames
from flask_jpulse_ws.testing import ConnectionClosedError, HandshakeRefused, WSTestClient

SETTINGS = {"JPULSE_WS_ABUSE_THRESHOLD": 1000, "JPULSE_WS_RATE_MAX_MESSAGES": 100000,
            "JPULSE_WS_MAX_NAMESPACES": 200, "JPULSE_WS_DYNAMIC_GRACE": 60,
            "JPULSE_WS_MAX_CONNECTIONS_PER_IP": 100000,
            "JPULSE_WS_HANDSHAKE_RATE": 0}  # floods from one address are the point here

DOCUMENTED_ERRORS = {400, 500, "MESSAGE_TOO_LARGE", "RATE_LIMIT_EXCEEDED", "RESERVED_TYPE",
                     "NO_REPLY", "ASKED"}  # ASKED: the echo app's own WSError ("fail")
DOCUMENTED_CLOSES = {1000, 1002, 1007, 1008, 1009}
FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def bystander(server):
    """A client in a room that must keep receiving while others misbehave."""
    c = WSTestClient(server.ws_url("/api/1/ws/open-rooms/bystander"), timeout=10)
    c.receive(type="connected")
    yield c
    c.close()


def bystander_still_served(server, bystander, tag):
    server.http().post("/_test/broadcast", {"path": "/api/1/ws/open-rooms/bystander",
                                            "data": {"type": "check", "data": tag}})
    assert bystander.receive(type="check", timeout=5)["data"]["data"] == tag


def answer_to(server, payload, opcode=frames.OP_TEXT):
    """Send one frame on a fresh connection, then a follow-up echo request; return the
    first thing that comes back: ("frame", frame) or ("close", code)."""
    c = WSTestClient(server.ws_url("/api/1/ws/echo"))
    try:
        c.receive(type="connected")
        c.send_frame(opcode, payload)
        c.send({"type": "echo", "requestId": "after"})  # the connection's own next answer
        first = c.receive(timeout=5)
        return ("frame", first)
    except ConnectionClosedError as exc:
        return ("close", exc.code)
    finally:
        c.close()


#: Types the echo namespace of tests/apps/core_app.py (or the framework, for ``_ping``)
#: answers with a frame of their own.
ANSWERED_TYPES = {"echo", "whoami", "ctx", "sleep", "broadcast", "ask-me", "_ping",
                  "fail", "crash"}  # these two answer with an error frame


def owed_answer(payload, opcode=frames.OP_TEXT):
    """What the server owes a fuzzed frame, from the protocol: "1007" (a text frame that
    is not UTF-8), "error" (not a valid message), "answer" (a valid message its handler
    answers, or one with a ``requestId``) or "nothing" (a valid message that needs none)."""
    if opcode == frames.OP_TEXT:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return "1007"
    try:
        message = orjson.loads(payload)  # the server's parser: the same verdicts
    except orjson.JSONDecodeError:
        return "error"
    if not isinstance(message, dict) or not isinstance(message.get("type"), str) \
            or not message["type"]:  # an empty type is refused too (400)
        return "error"
    msg_type = message["type"]
    if msg_type.startswith("_") and msg_type != "_ping":
        return "error"
    if msg_type in ANSWERED_TYPES or (isinstance(message.get("requestId"), str)
                                      and msg_type != "_ping"):
        return "answer"
    return "nothing"


def assert_documented(outcome, payload, opcode=frames.OP_TEXT):
    """The first thing after a fuzzed frame is what the protocol says it must be: a
    documented close, an error frame with a documented code answering the fuzzed frame
    (never the follow-up), or, only for a valid message, its handler's success frame
    (or the follow-up's echo when the message needed no answer)."""
    kind, value = outcome
    owed = owed_answer(payload, opcode)
    if kind == "close":
        assert value in DOCUMENTED_CLOSES, value
        if owed == "1007":
            assert value == 1007, value
        return
    assert owed != "1007", value  # a non-UTF-8 text frame must close the socket
    if value.get("success") is False:
        assert value["code"] in DOCUMENTED_ERRORS, value
        assert value.get("requestId") != "after", value  # it answers the fuzzed frame
        assert owed in ("error", "answer"), (owed, value)
    elif owed == "answer":
        assert value.get("requestId") != "after", value  # the handler's answer comes first
    else:
        assert owed == "nothing", (owed, value)  # invalid input never gets a success frame
        assert value.get("requestId") == "after" and value["data"]["type"] == "echo", value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=5),
    max_leaves=20)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_in_text_frames_get_documented_answers(server, bystander, raw):
    assert_documented(answer_to(server, raw), raw)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_in_binary_frames_get_documented_answers(server, bystander, raw):
    assert_documented(answer_to(server, raw, frames.OP_BINARY), raw, frames.OP_BINARY)


@FUZZ
@given(value=json_values, msg_type=st.one_of(st.text(max_size=8), st.integers(), st.none()))
def test_json_of_any_shape_gets_documented_answers(server, bystander, value, msg_type):
    payload = json.dumps({"type": msg_type, "data": value}).encode()
    assert_documented(answer_to(server, payload), payload)


@pytest.mark.parametrize("payload", [
    b"[" * 5000 + b"]" * 5000,  # deeper than any parser should recurse
    b'{"type":"echo","n":' + b"9" * 5000 + b"}",  # a number no machine holds
    b'{"type":"echo","n":1e99999}',
    b'{"type":"\xed\xa0\x80"}',  # a UTF-16 surrogate encoded in UTF-8: invalid
    b'{"type":"echo","s":"\\ud800"}',  # a lone surrogate escape
    b"\xef\xbb\xbf{}",  # a byte-order mark
    "{\"type\":\"échø ☃ 𝄞\",\"requestId\":\"u\"}".encode(),
])
def test_pathological_json_gets_documented_answers(server, bystander, payload):
    assert_documented(answer_to(server, payload), payload)
    bystander_still_served(server, bystander, payload[:20].hex())


def test_worker_survived_the_fuzzing(server, bystander):
    bystander_still_served(server, bystander, "after-fuzz")
    assert "Traceback" not in server.log().replace("ZeroDivisionError: secret internals", "")


@FUZZ
@given(path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                           blacklist_characters="#?"), max_size=40),
       uuid=st.text(max_size=40), origin=st.text(max_size=30),
       key=st.one_of(st.just(None), st.text(max_size=30)))
def test_fuzzed_handshakes_get_documented_answers(server, bystander, path, uuid, origin, key):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
        safe = lambda s: "".join(ch for ch in s if 32 <= ord(ch) < 127)  # noqa: E731
        request = (f"GET /api/1/ws/{path}?uuid={safe(uuid)} HTTP/1.1\r\n"
                   f"Host: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {safe(key)}\r\n"
                   f"Sec-WebSocket-Version: 13\r\nOrigin: {safe(origin)}\r\n\r\n")
        sock.sendall(request.encode("latin-1"))
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        status = int(head.split(b" ", 2)[1]) if head else 0
        assert status in (101, 400, 403, 404, 426), head[:200]
    finally:
        sock.close()


#: Real namespaces of tests/apps/core_app.py, literal and pattern prefixes.
NAMESPACE_PREFIXES = ["/api/1/ws/echo", "/api/1/ws/secure", "/api/1/ws/admin-only",
                      "/api/1/ws/small", "/api/1/ws/history", "/api/1/ws/rooms/",
                      "/api/1/ws/hrooms/", "/api/1/ws/open-rooms/"]
#: Closes a handshake may end in (4418 and 1011 are core_app's on_create refusals).
HANDSHAKE_CLOSES = {4401, 4403, 4404, 4418, 4529, 1011}
query_text = st.text(max_size=40) | st.sampled_from(
    ["", "0b5e6a8e-4c2e-4f57-9d2a-3a0f6b7f2c11", "x:1", "1:2:3", "abc:-1", "1e9:1", ":"])


@FUZZ
@given(prefix=st.sampled_from(NAMESPACE_PREFIXES),
       suffix=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                             blacklist_characters="#?"), max_size=20),
       uuid=query_text, since=query_text, same_origin=st.booleans())
def test_fuzzed_queries_past_the_origin_check_end_in_documented_closes(
        server, bystander, prefix, suffix, uuid, since, same_origin):
    """With no Origin or the right one, the upgrade succeeds (101) and whatever follows
    is the welcome or a documented close, for any path under a real namespace and any
    ``uuid``/``since`` query."""
    query = urllib.parse.urlencode({"uuid": uuid, "since": since})
    headers = {"Origin": f"http://127.0.0.1:{server.port}"} if same_origin else {}
    c = WSTestClient(server.ws_url(f"{prefix}{suffix}?{query}"), headers=headers)
    try:
        first = c.receive()
    except ConnectionClosedError as exc:
        assert exc.code in HANDSHAKE_CLOSES, (exc.code, exc.reason)
    else:
        assert first["success"] is True and first["data"]["type"] == "connected", first
        assert first["data"]["data"]["namespace"].startswith(prefix.rstrip("/"))
    finally:
        c.close()


def test_handshakes_that_never_finish_are_dropped_and_do_not_pile_up(server, bystander):
    """gunicorn's gevent worker times the request parse (--keep-alive, 2 s by default)."""
    stalled = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(b"GET /api/1/ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: web")  # and stop
        stalled.append(s)
    with WSTestClient(server.ws_url("/api/1/ws/echo")) as ok:  # others are still served
        assert ok.receive(type="connected")
    started = time.monotonic()
    for s in stalled:
        assert s.recv(1) == b""  # the server hung up on every one
        s.close()
    assert time.monotonic() - started < 6


def test_ten_thousand_room_paths_stay_under_the_namespace_cap(server, bystander):
    http = server.http()
    rss_before = _worker_rss_kb(server)
    for i in range(10000):
        c = WSTestClient(server.ws_url(f"/api/1/ws/open-rooms/flood-{i}"))
        try:
            c.receive(type="connected")
        finally:
            c.close()
        if i % 2000 == 0:
            assert http.get("/_test/stats")["totalNamespaces"] <= 200
            # Served during the flood too. Reading is also how the bystander answers the
            # server's pings: unread for 10 s after one (the pong timeout), it would be cut.
            bystander_still_served(server, bystander, f"flood-{i}")
    stats = http.get("/_test/stats")
    assert stats["totalNamespaces"] <= 200
    assert any(ns["path"] == "/api/1/ws/open-rooms/bystander" for ns in stats["namespaces"])
    growth_mb = (_worker_rss_kb(server) - rss_before) / 1024
    assert growth_mb < 40, f"worker grew {growth_mb:.1f} MB over 10,000 room paths"
    bystander_still_served(server, bystander, "after-flood")
    # A fresh room still opens: the oldest empty rooms made way.
    with WSTestClient(server.ws_url("/api/1/ws/open-rooms/fresh")) as c:
        assert c.receive(type="connected")


def _worker_rss_kb(server):
    pids = wait_for(server.worker_pids, message="worker pid")
    with open(f"/proc/{pids[0]}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_per_ip_cap_counts_concurrent_connections_only(make_server):
    srv = make_server(settings={"JPULSE_WS_MAX_CONNECTIONS_PER_IP": 5})
    for _ in range(20):  # sequential connections never hit the cap
        with WSTestClient(srv.ws_url("/api/1/ws/echo")) as c:
            c.receive(type="connected")
    held = [WSTestClient(srv.ws_url("/api/1/ws/echo")) for _ in range(5)]
    for c in held:
        c.receive(type="connected")
    refused = WSTestClient(srv.ws_url("/api/1/ws/echo"))
    assert refused.wait_closed() == 4529
    assert srv.http().get("/_test/stats")["openConnections"] == 5
    for c in held:
        c.close()


def test_refused_origin_is_counted(server):
    before = server.http().get("/_test/stats")["refusedOrigins"]
    with pytest.raises(HandshakeRefused):
        WSTestClient(server.ws_url("/api/1/ws/echo"), headers={"Origin": "https://evil.test"})
    assert server.http().get("/_test/stats")["refusedOrigins"] == before + 1


def test_a_handshake_burst_beyond_the_rate_gets_429_with_retry_after(make_server):
    """Past JPULSE_WS_HANDSHAKE_BURST handshakes at once (refilled at
    JPULSE_WS_HANDSHAKE_RATE a second), an address is refused HTTP 429 with
    ``Retry-After`` before the upgrade, and counted; other addresses are not affected."""
    srv = make_server(settings={"JPULSE_WS_HANDSHAKE_RATE": 0.01,
                                "JPULSE_WS_HANDSHAKE_BURST": 5})
    url = srv.ws_url("/api/1/ws/echo")
    for _ in range(5):
        with WSTestClient(url) as c:
            c.receive(type="connected")
    for _ in range(3):
        with pytest.raises(HandshakeRefused) as refused:
            WSTestClient(url)
        assert refused.value.status == 429
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 100
    for other in ("127.0.0.2", "127.0.0.3"):
        with WSTestClient(url, source_address=(other, 0)) as c:
            assert c.receive(type="connected")
    assert srv.http().get("/_test/stats")["refusedHandshakeRate"] == 3
    assert srv.http().get("/_test/stats")["openConnections"] == 0  # never upgraded


def test_the_handshake_rate_can_be_switched_off(make_server):
    """JPULSE_WS_HANDSHAKE_RATE = 0: no bucket, whatever the burst."""
    srv = make_server(settings={"JPULSE_WS_HANDSHAKE_RATE": 0,
                                "JPULSE_WS_HANDSHAKE_BURST": 1})
    for _ in range(5):
        with WSTestClient(srv.ws_url("/api/1/ws/echo")) as c:
            c.receive(type="connected")
    assert srv.http().get("/_test/stats")["refusedHandshakeRate"] == 0
