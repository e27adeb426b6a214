"""Strict RFC 6455 closing, on real sockets: the server under gunicorn's gevent worker,
and the Python client against a scripted server on a free port.

Autobahn|Testsuite measures the same behaviours (``make compliance``); these tests keep
them in place without it.
"""

import socket
import struct
import threading
import time

import orjson
import pytest
from servers import free_port, wait_for

from flask_jpulse_ws.client import DISCONNECTED, WSClient
from flask_jpulse_ws.core import frames
from flask_jpulse_ws.testing import WSTestClient

#: Seconds the server gives a peer to answer its close frame in these tests: long, so a
#: socket held until the timeout cannot pass for one closed at once.
CLOSE_TIMEOUT = 10
#: Seconds within which "at once" must happen on a loaded machine.
AT_ONCE = 3.0


@pytest.fixture(scope="module")
def slow_close_server(request):
    from servers import GunicornServer

    srv = GunicornServer(settings={"JPULSE_WS_CLOSE_TIMEOUT": CLOSE_TIMEOUT}).start()
    yield srv
    srv.stop()


def opened(srv):
    c = WSTestClient(srv.ws_url("/api/1/ws/echo"))
    c.receive(type="connected")
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def read_close(sock, decoder=None, timeout=AT_ONCE):
    """The body of the next close frame on ``sock`` (what comes before it is dropped)."""
    decoder = decoder or frames.FrameDecoder(1 << 20, expect_mask=False)
    sock.settimeout(timeout)
    while True:
        data = sock.recv(4096)
        assert data, "the stream ended before a close frame"
        for opcode, payload in decoder.feed(data):
            if opcode == frames.OP_CLOSE:
                return payload


def seconds_until_eof(sock):
    started = time.monotonic()
    sock.settimeout(CLOSE_TIMEOUT + 5)
    while sock.recv(4096):
        pass
    return time.monotonic() - started


# ---------------------------------------------------------------------- the server

def test_the_peers_close_after_the_rest_of_a_bad_frame_ends_the_connection_at_once(
        slow_close_server):
    """After failing a connection the server hears the peer's close even when the rest of
    the bad frame comes first in the same read (it used to decode each read afresh, take
    the payload for garbage, and hold the socket for the whole close timeout)."""
    c = opened(slow_close_server)
    bad = frames.encode_frame(0x3, b"\x88\x80 looks like a close, is payload", mask=True)
    c.sock.sendall(bad[:2])  # the header: a reserved opcode, failed at once
    assert frames.parse_close(read_close(c.sock))[0] == 1002
    c.sock.sendall(bad[2:] + frames.close_frame(1002, mask=True))
    assert seconds_until_eof(c.sock) < AT_ONCE
    c.sock.close()


def test_the_peers_close_sent_one_byte_at_a_time_ends_a_failed_connection_at_once(
        slow_close_server):
    c = opened(slow_close_server)
    c.sock.sendall(frames.encode_frame(frames.OP_TEXT, b"\xff", mask=True))
    assert frames.parse_close(read_close(c.sock))[0] == 1007
    close = frames.close_frame(1007, "bye", mask=True)
    for i in range(len(close)):
        c.sock.sendall(close[i:i + 1])
        time.sleep(0.01)  # a segment each: the server reads the frame piece by piece
    assert seconds_until_eof(c.sock) < AT_ONCE
    c.sock.close()


def test_a_bad_close_frame_is_answered_1002_and_tcp_goes_at_once(slow_close_server):
    """The peer's close frame was the bad one (Autobahn 7.3.6): it will send no other, so
    the server's close ends the handshake and the server drops TCP (it used to wait for
    another close, for the whole close timeout)."""
    c = opened(slow_close_server)
    c.sock.sendall(frames.encode_frame(frames.OP_CLOSE, b"\x03\xe8" + b"*" * 124, mask=True))
    assert frames.parse_close(read_close(c.sock))[0] == 1002
    assert seconds_until_eof(c.sock) < AT_ONCE
    c.sock.close()


@pytest.mark.parametrize("body, code", [(struct.pack("!H", 1000) + b"\xff", 1007),
                                        (struct.pack("!H", 999), 1002), (b"\x03", 1002)])
def test_a_malformed_close_body_is_answered_with_its_code(slow_close_server, body, code):
    c = opened(slow_close_server)
    c.sock.sendall(frames.encode_frame(frames.OP_CLOSE, body, mask=True))
    assert frames.parse_close(read_close(c.sock))[0] == code
    assert seconds_until_eof(c.sock) < AT_ONCE
    c.sock.close()


def test_invalid_text_fails_before_the_frame_is_whole(slow_close_server):
    """RFC 6455 8.1: 1007 as soon as the invalid bytes arrive, without the rest."""
    c = opened(slow_close_server)
    frame = frames.encode_frame(frames.OP_TEXT, b'{"type": "\xc0\xaf' + b"x" * 5000, mask=True)
    c.sock.sendall(frame[:40])
    assert frames.parse_close(read_close(c.sock))[0] == 1007
    c.sock.close()


def test_a_refused_connection_waits_for_the_peers_close_even_after_a_frame_it_cannot_read(
        slow_close_server):
    """An admission refusal (4404 here) reads on for the peer's close; a frame over its
    small decoder's cap used to end the wait at once, cutting TCP with the peer's data
    unread (which resets the connection and can destroy the close frame in flight)."""
    sock = socket.create_connection(("127.0.0.1", slow_close_server.port), timeout=5)
    key = frames.client_key()
    sock.sendall(frames.upgrade_request("127.0.0.1", slow_close_server.port,
                                        "/api/1/ws/nothing-here", key))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    head, _, rest = head.partition(b"\r\n\r\n")
    assert frames.upgrade_response(head, key) == (101, True)
    sock.sendall(frames.encode_frame(frames.OP_TEXT, b"x" * 2000, mask=True))
    decoder = frames.FrameDecoder(1 << 20, expect_mask=False)
    events = decoder.feed(rest)
    body = events[0][1] if events else read_close(sock, decoder)
    assert frames.parse_close(body)[0] == 4404
    sock.settimeout(0.5)
    with pytest.raises(socket.timeout):  # still waiting for our close
        sock.recv(4096)
    close = frames.close_frame(4404, mask=True)
    sock.sendall(close[:3])
    sock.sendall(close[3:])
    assert seconds_until_eof(sock) < AT_ONCE
    sock.close()


# ---------------------------------------------------------------------- the client

class ScriptedServer:
    """One WebSocket server socket on a free port, played by the test."""

    def __init__(self):
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(10)

    def accept(self):
        sock, _ = self.listener.accept()
        sock.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        key = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:")][0]
        sock.sendall(frames.handshake_response(key.decode()))
        self.decoder = frames.FrameDecoder(1 << 20)
        return sock

    def close(self):
        self.listener.close()


@pytest.fixture
def scripted():
    srv = ScriptedServer()
    yield srv
    srv.close()


def frame(data):
    return frames.text_frame(orjson.dumps({"success": True, "data": data}))


WELCOME = frame({"type": "connected", "data": {"clientId": "c1", "limits": {}}})


def start_client(port, received):
    ended = threading.Event()
    client = WSClient(f"ws://127.0.0.1:{port}/api/1/ws/echo", max_reconnect_attempts=0)
    client.on_message(received.append)
    client.on_status_change(lambda new, old: ended.set() if new == DISCONNECTED else None)
    client._start()
    return client, ended


def test_the_client_delivers_what_came_before_a_bad_frame_then_closes_with_the_code(
        scripted):
    """A message in the same read as a protocol error is delivered, and the client sends
    a close frame with the code before it lets go (it used to drop both: no message, and
    TCP cut without a close)."""
    received = []
    client, ended = start_client(scripted.port, received)
    sock = scripted.accept()
    try:
        sock.sendall(WELCOME + frame({"type": "news", "n": 1}) + frames.encode_frame(0x3, b""))
        assert frames.parse_close(read_close(sock, scripted.decoder))[0] == 1002
        assert [m["data"]["type"] for m in received] == ["news"]
        sock.sendall(frames.close_frame(1002))
        sock.close()
        assert ended.wait(AT_ONCE)
    finally:
        client.disconnect()


def test_the_client_fails_invalid_text_with_1007(scripted):
    received = []
    client, ended = start_client(scripted.port, received)
    sock = scripted.accept()
    try:
        sock.sendall(WELCOME + frames.text_frame(b'{"x": "\xff"}'))
        assert frames.parse_close(read_close(sock, scripted.decoder))[0] == 1007
    finally:
        sock.close()
        client.disconnect()


def test_the_client_answers_a_close_with_a_bad_reason_1007(scripted):
    """RFC 6455 7.1.6 and 8.1: a close reason that is not UTF-8 is answered 1007 (the
    client used to answer 1002 for every malformed close)."""
    client, ended = start_client(scripted.port, [])
    sock = scripted.accept()
    try:
        sock.sendall(WELCOME + frames.encode_frame(frames.OP_CLOSE, b"\x03\xe8\xff\xfe"))
        assert frames.parse_close(read_close(sock, scripted.decoder))[0] == 1007
    finally:
        sock.close()
        client.disconnect()


def test_after_the_close_handshake_the_client_lets_the_server_close_tcp_first(scripted):
    """RFC 6455 7.1.1: the server closes TCP first; the client waits for it (briefly)
    rather than dropping the socket as soon as its close frame is out."""
    client, ended = start_client(scripted.port, [])
    sock = scripted.accept()
    try:
        sock.sendall(WELCOME + frames.close_frame(1000))
        assert frames.parse_close(read_close(sock, scripted.decoder))[0] == 1000
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):  # the client still holds its end
            sock.recv(4096)
        assert not ended.is_set()
        sock.close()
        assert ended.wait(AT_ONCE)
    finally:
        client.disconnect()
    wait_for(lambda: client.get_status() == DISCONNECTED, message="disconnected")
