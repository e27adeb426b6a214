"""The inbound pipeline: every error code, limits, ordering, and 1007/1008/1009."""

import time

import orjson
import pytest

from flask_jpulse_ws import JPulseWS
from flask_jpulse_ws.core import frames
from flask_jpulse_ws.testing import ConnectionClosedError, WSTestClient

SETTINGS = {"JPULSE_WS_MAX_FRAME_SIZE": 4 * 1024 * 1024,
            "JPULSE_WS_MAX_MESSAGE_SIZE": 8 * 1024 * 1024, "JPULSE_WS_ABUSE_THRESHOLD": 25}


@pytest.fixture
def client(server):
    c = WSTestClient(server.ws_url("/api/1/ws/echo"))
    c.receive(type="connected")
    yield c
    c.close()


def still_usable(c):
    return c.request({"type": "echo", "n": 1})["data"]["n"] == 1


@pytest.mark.parametrize("raw", [b"null", b"5", b'"x"', b"[]", b"{not json", b"true"])
def test_non_objects_get_400_and_the_connection_stays_usable(client, raw):
    client.send_text(raw)
    reply = client.receive()
    assert reply["success"] is False and reply["code"] == 400
    assert still_usable(client)


@pytest.mark.parametrize("msg", [{}, {"type": 5}, {"type": None}, {"type": ["a"]}])
def test_missing_or_non_string_type_is_400(client, msg):
    client.send(msg)
    assert client.receive()["code"] == 400
    assert still_usable(client)


def test_reserved_types_are_refused_and_echo_the_request_id(client):
    client.send({"type": "_resync", "requestId": "r9"})
    reply = client.receive()
    assert reply["code"] == "RESERVED_TYPE" and reply["requestId"] == "r9"


def test_framework_ping_gets_a_pong_with_its_timestamp(client):
    client.send({"type": "_ping", "t": 1234})
    assert client.receive() == {"success": True, "data": {"type": "_pong", "data": {"t": 1234}}}


def test_app_ping_is_an_ordinary_message(client):
    client.send({"type": "ping", "requestId": "p"})
    assert client.receive()["code"] == "NO_REPLY"  # it reached the handler, which ignored it


def test_username_sent_by_a_client_is_overwritten(client):
    reply = client.request({"type": "whoami", "username": "admin"})
    assert reply["data"]["sent_username"] == ""


def test_wserror_sends_its_message_code_and_details(client):
    reply = client.request({"type": "fail"})
    assert reply["success"] is False and reply["error"] == "You asked for it"
    assert reply["code"] == "ASKED" and reply["details"] == {"why": "test"}
    assert still_usable(client)


def test_unexpected_exception_is_a_generic_500_and_logged(server, client):
    reply = client.request({"type": "crash"})
    assert reply["error"] == "Internal server error" and reply["code"] == 500
    assert "secret internals" not in str(reply)
    assert "ZeroDivisionError: secret internals" in server.log()
    assert still_usable(client)


def test_request_without_a_reply_gets_no_reply(client):
    assert client.request({"type": "silent"})["code"] == "NO_REPLY"


def test_a_handler_replies_only_once(client):
    reply = client.request({"type": "echo", "x": 1})
    assert reply["success"] is True and reply["data"]["x"] == 1
    assert client.receive_all(0.2) == []


def test_messages_from_one_connection_are_handled_in_order(client):
    for i in range(45):  # under the rate limit of 50 per second
        client.send({"type": "echo", "requestId": f"r{i}", "i": i})
    got = [client.receive()["data"]["i"] for _ in range(45)]
    assert got == list(range(45))


def test_size_limit_per_namespace_override(server):
    with WSTestClient(server.ws_url("/api/1/ws/small")) as c:
        assert c.receive(type="connected")["data"]["data"]["limits"]["maxSize"] == 100
        c.send({"type": "x", "pad": "y" * 200, "requestId": "big"})
        reply = c.receive()
        assert reply["code"] == "MESSAGE_TOO_LARGE" and reply["details"]["limit"] == 100
        assert reply["details"]["size"] > 100
        assert c.request({"type": "ok"})["data"] == {"ok": True}


def test_rate_limit_notifies_once_per_window_and_always_for_requests(server):
    with WSTestClient(server.ws_url("/api/1/ws/small")) as c:
        c.receive(type="connected")
        for _ in range(6):  # maxMessages is 3 per second here
            c.send({"type": "flood"})
        # Sent with them, so inside the same window; its answer comes after theirs.
        c.send({"type": "flood", "requestId": "q"})
        frames_ = [c.receive()]
        while frames_[-1].get("requestId") != "q":
            frames_.append(c.receive())
        reply = frames_.pop()
        assert reply["code"] == "RATE_LIMIT_EXCEEDED"
        frames_ += c.receive_all(0.3)  # nothing more for the flood either
        limited = [f for f in frames_ if f.get("code") == "RATE_LIMIT_EXCEEDED"]
        assert len(limited) == 1
        assert limited[0]["details"]["maxMessages"] == 3
        assert 0 <= limited[0]["details"]["retryAfterMs"] <= 1000


def test_drops_are_counted_by_reason(server):
    with WSTestClient(server.ws_url("/api/1/ws/small")) as c:
        c.receive(type="connected")
        c.send_text(b"nope")
        c.send({"type": "x", "pad": "y" * 200})
        c.send({"type": "_x"})
        # Each drop is answered once it is counted: wait for the three answers.
        assert [c.receive()["code"] for _ in range(3)] == [400, "MESSAGE_TOO_LARGE",
                                                           "RESERVED_TYPE"]
    ns = server.http().get("/_test/namespace?path=/api/1/ws/small")
    assert ns["dropped"]["invalid"] >= 1 and ns["dropped"]["oversize"] >= 1
    assert ns["dropped"]["reserved"] >= 1


def test_repeated_violations_close_1008(server):
    with WSTestClient(server.ws_url("/api/1/ws/echo")) as c:
        c.receive(type="connected")
        for _ in range(30):
            c.send_text(b"garbage")
        assert c.wait_closed() == 1008


def test_repeated_rate_limit_violations_close_1008(server):
    """Well-formed messages over the rate count as abuse too (threshold 25 here); the
    client is told RATE_LIMIT_EXCEEDED, then closed."""
    with WSTestClient(server.ws_url("/api/1/ws/small")) as c:  # 3 messages per second
        c.receive(type="connected")
        for _ in range(60):
            c.send({"type": "flood"})
        answers = []
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                answers.append(c.receive())
        assert closed.value.code == 1008
        errors = {a["code"] for a in answers if a["success"] is False}
        assert errors == {"RATE_LIMIT_EXCEEDED"}  # told, and no other kind of rejection
    ns = server.http().get("/_test/namespace?path=/api/1/ws/small")
    assert ns["dropped"]["rateLimit"] >= 25


def test_frame_over_the_cap_closes_1009(server):
    with WSTestClient(server.ws_url("/api/1/ws/echo")) as c:
        c.receive(type="connected")
        c.send_frame(frames.OP_TEXT, b"x" * (4 * 1024 * 1024 + 1))
        assert c.wait_closed() == 1009


def test_four_mib_message_round_trips_when_the_cap_allows_it(server):
    with WSTestClient(server.ws_url("/api/1/ws/echo")) as c:
        c.receive(type="connected")
        blob = "z" * (4 * 1024 * 1024 - 100)
        reply = c.request({"type": "echo", "blob": blob}, timeout=20)
        assert reply["data"]["blob"] == blob


def test_invalid_utf8_text_closes_1007(client):
    client.send_frame(frames.OP_TEXT, b'{"type":"\xff"}')
    assert client.wait_closed() == 1007


def test_fragmented_message_with_a_ping_between_fragments(client):
    client.send_frame(frames.OP_TEXT, b'{"type":"echo",', fin=False)
    client.send_frame(frames.OP_PING, b"hi")
    client.send_frame(frames.OP_CONT, b'"requestId":"f","v":2}', fin=True)
    assert client.receive()["data"]["v"] == 2


def test_binary_frames_carrying_json_are_accepted(client):
    client.send_frame(frames.OP_BINARY, b'{"type":"echo","requestId":"b","v":3}')
    assert client.receive()["data"]["v"] == 3


def test_close_handshake_completes_with_the_clients_code(server):
    c = WSTestClient(server.ws_url("/api/1/ws/echo"))
    c.receive(type="connected")
    c.sock.sendall(frames.close_frame(4000, "bye", mask=True))
    assert c.wait_closed() == 4000


def test_server_can_ask_its_own_client_from_a_handler(client):
    client.send({"type": "ask-me", "requestId": "outer", "timeout": 5})
    question = client.receive(type="question")
    assert question["requestId"] and question["data"]["ctx"] == {"username": ""}
    client.send({"type": "echo", "requestId": "queued", "n": 7})  # arrives while it waits
    client.send({"type": "answer", "requestId": question["requestId"], "v": 42})
    outer = client.receive()
    assert outer["requestId"] == "outer"
    assert outer["data"]["success"] is True and outer["data"]["data"]["v"] == 42
    assert client.receive()["requestId"] == "queued"  # handled after, in order


def test_server_request_times_out_when_the_client_does_not_answer(client):
    client.send({"type": "ask-me", "requestId": "outer", "timeout": 0.3})
    client.receive(type="question")
    outer = client.receive()
    assert outer["data"]["code"] == "REQUEST_TIMEOUT"


def test_client_error_reply_to_a_server_request_is_passed_on(client):
    client.send({"type": "ask-me", "requestId": "outer", "timeout": 5})
    question = client.receive(type="question")
    client.send({"success": False, "error": "no way", "code": "NOPE",
                 "requestId": question["requestId"]})
    outer = client.receive()["data"]
    assert outer == {"success": False, "error": "no way", "code": "NOPE",
                     "requestId": question["requestId"]}


def test_only_the_asked_connection_can_answer(server, client):
    client.send({"type": "ask-me", "requestId": "outer", "timeout": 1})
    question = client.receive(type="question")
    with WSTestClient(server.ws_url("/api/1/ws/echo")) as intruder:
        intruder.receive(type="connected")
        intruder.send({"type": "answer", "requestId": question["requestId"], "v": "forged"})
        intruder.receive_all(0.2)
    assert client.receive(timeout=3)["data"]["code"] == "REQUEST_TIMEOUT"


def test_a_slow_handler_does_not_delay_pongs_or_rejections(client):
    import time
    client.send({"type": "sleep", "seconds": 1.5, "requestId": "slow"})
    started = time.monotonic()
    client.send({"type": "_ping", "t": 1})
    assert client.receive()["data"]["type"] == "_pong"
    client.send_text(b"not json")
    assert client.receive()["code"] == 400
    assert time.monotonic() - started < 1.0
    assert client.receive(timeout=5)["data"] == {"slept": True}


def test_handlers_that_wait_and_handlers_that_do_not_run_in_order(client):
    """A message that arrives alone runs its handler in the reader; a handler that waits
    gets a stand-in reader, which queues what comes next behind it and hands reading
    back once the handler is free. Sent one at a time, so that most reads hold one
    message, with pings in between: every reply comes, in order, and every ping is
    answered while handlers sleep."""
    import time
    sent = []
    for i in range(40):  # under the rate limit of 50 per second
        if i % 3 == 0:
            client.send({"type": "sleep", "seconds": 0.03, "requestId": f"r{i}"})
        else:
            client.send({"type": "echo", "requestId": f"r{i}", "i": i})
        sent.append(f"r{i}")
        if i % 5 == 0:
            client.send({"type": "_ping", "t": i})
        time.sleep(0.004)
    frames_in = client.receive_all(3.0)
    replies = [f["requestId"] for f in frames_in if "requestId" in f]
    pongs = [f["data"]["data"]["t"] for f in frames_in if f.get("data", {}).get("type") == "_pong"]
    assert replies == sent
    assert pongs == list(range(0, 40, 5))
    assert client.request({"type": "echo", "i": "after"})["data"]["i"] == "after"


def test_a_stand_in_reader_ends_when_its_connection_goes_quiet(server, client):
    """A handler that waited got a stand-in reader; once the handler is done and nothing
    arrives for 2 s, the stand-in hands reading back and ends: a quiet connection keeps no
    task for it (the handler task's 2 s linger, as before)."""
    import time
    http = server.http()
    assert client.request({"type": "sleep", "seconds": 0.2})["data"] == {"slept": True}
    assert http.get("/_test/stand-ins")["alive"] == 1  # reading for the waiting handler
    deadline = time.monotonic() + 5
    while http.get("/_test/stand-ins")["alive"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert http.get("/_test/stand-ins")["alive"] == 0
    assert client.request({"type": "echo", "n": 1})["data"]["n"] == 1  # read by its own task


def test_a_handler_sees_an_app_context_and_never_the_upgrade_request(client):
    """Alone in a read the handler runs in the reader, whose context holds the upgrade
    request; in a burst it runs in a handler task. Both see the same: an app context of
    their own and no request."""
    alone = client.request({"type": "contexts"})["data"]
    burst = b"".join(frames.encode_frame(frames.OP_TEXT, orjson.dumps(
        {"type": "contexts", "requestId": f"b{i}"}), mask=True) for i in range(3))
    client.sock.sendall(burst)
    in_task = [client.receive()["data"] for _ in range(3)]
    assert alone == {"request": False, "app": True}
    assert in_task == [alone] * 3


def test_each_message_gets_a_fresh_g_and_the_apps_teardown(client):
    """The app context stays pushed from one message to the next, but what a handler
    puts in ``g`` is gone for the next message and teardown functions run after each,
    alone in a read or in a burst (handler task)."""
    first = client.request({"type": "g", "mark": "one"})["data"]
    second = client.request({"type": "g", "mark": "two"})["data"]
    burst = b"".join(frames.encode_frame(frames.OP_TEXT, orjson.dumps(
        {"type": "g", "mark": i, "requestId": f"b{i}"}), mask=True) for i in range(3))
    client.sock.sendall(burst)
    in_task = [client.receive()["data"] for _ in range(3)]
    assert first["left"] is None and second["left"] is None
    assert [r["left"] for r in in_task] == [None, None, None]
    counts = [first["teardowns"], second["teardowns"]] + [r["teardowns"] for r in in_task]
    assert counts == list(range(counts[0], counts[0] + 5))  # one teardown per message


def test_the_handlers_app_context_is_popped_before_on_disconnect(server):
    """The context pushed by a connection's first message is popped when the connection
    ends, before ``on_disconnect``: its teardown functions run once more then (and it is
    freed at once rather than left to the garbage collector)."""
    with WSTestClient(server.ws_url("/api/1/ws/echo")) as c:
        client_id = c.receive(type="connected")["data"]["data"]["clientId"]
        c.request({"type": "g", "mark": 1})
        c.request({"type": "g", "mark": 2})
    http, deadline, seen = server.http(), time.monotonic() + 5, None
    while seen is None and time.monotonic() < deadline:
        seen = http.get(f"/_test/teardowns-at-disconnect/{client_id}")["teardowns"]
        time.sleep(0.05)
    assert seen == 3  # one per message, one for the pop, all before on_disconnect


def test_each_type_goes_to_its_own_handler_and_the_rest_to_on_message(server):
    """``@ns.on("add")`` answers "add"; a type without a handler reaches ``on_message``."""
    with WSTestClient(server.ws_url("/api/1/ws/typed")) as c:
        c.receive(type="connected")
        assert c.request({"type": "add", "data": [1, 2, 3]})["data"] == {"sum": 6}
        assert c.request({"type": "shout", "data": "hi"})["data"] == {"text": "HI"}
        assert c.request({"type": "other", "data": 1})["data"] == {"fallback": "other"}


def test_reserved_or_repeated_types_are_refused_at_declaration():
    ws = JPulseWS()
    ns = ws.namespace("/api/1/ws/declared")
    ns.on("say")(lambda conn: None)
    with pytest.raises(ValueError, match="already has a handler for 'say'"):
        ns.on("say")(lambda conn: None)
    with pytest.raises(ValueError, match="reserved"):
        ns.on("_ping")



def test_a_message_before_a_bad_frame_in_the_same_write_is_still_handled(server):
    """RFC 6455 fails the connection at the bad frame: what came whole before it counts
    (0.1.0 dropped it with the rest of the read)."""
    with WSTestClient(server.ws_url("/api/1/ws/echo")) as c:
        c.receive(type="connected")
        good = frames.encode_frame(frames.OP_TEXT, b'{"type": "whoami", "requestId": "r1"}',
                                   mask=True)
        bad = frames.encode_frame(0x3, b"", mask=True)  # a reserved opcode
        c.sock.sendall(good + bad)
        assert c.receive()["requestId"] == "r1"
        assert c.wait_closed() == 1002


def test_after_failing_a_connection_the_peers_close_ends_it_at_once(make_server):
    """RFC 6455 7.1.1: once both close frames have passed, TCP goes. The server used to
    hold a failed socket (and its task) for the whole close timeout, reading nothing."""
    srv = make_server(settings={"JPULSE_WS_CLOSE_TIMEOUT": 10})
    c = WSTestClient(srv.ws_url("/api/1/ws/echo"))
    c.receive(type="connected")
    c.sock.sendall(frames.encode_frame(0x3, b"", mask=True))  # a reserved opcode
    decoder, events = frames.FrameDecoder(1 << 16, expect_mask=False), []
    while not any(op == frames.OP_CLOSE for op, _ in events):
        events += decoder.feed(c.sock.recv(4096))
    [close] = [p for op, p in events if op == frames.OP_CLOSE]
    assert frames.parse_close(close)[0] == 1002
    started = time.monotonic()
    c.sock.sendall(frames.close_frame(1002, mask=True))
    c.sock.settimeout(15)
    while c.sock.recv(4096):
        pass
    assert time.monotonic() - started < 3  # not the 10 s close timeout
    c.sock.close()


def test_a_ping_flood_is_not_answered_and_ends_in_1008(client):
    """Protocol pings and _ping messages share a budget (20 at once, 5 a second); the
    excess is dropped unanswered and counts as abuse: one socket no longer holds a worker
    at full CPU answering pings."""
    flood = frames.encode_frame(frames.OP_PING, b"p", mask=True) * 60
    flood += frames.encode_frame(frames.OP_TEXT, b'{"type": "_ping", "t": 1}', mask=True) * 60
    client.sock.sendall(flood)
    decoder, pongs, code = frames.FrameDecoder(1 << 16, expect_mask=False), 0, None
    client.sock.settimeout(10)
    while code is None:
        data = client.sock.recv(65536)
        assert data, "closed without a close frame"
        for op, payload in decoder.feed(data):
            if op == frames.OP_PONG or (op == frames.OP_TEXT and b'"_pong"' in payload):
                pongs += 1
            elif op == frames.OP_CLOSE:
                code = frames.parse_close(payload)[0]
    assert code == 1008 and pongs <= 21  # the burst, and what 5 a second adds meanwhile
