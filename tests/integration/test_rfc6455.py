"""Strict RFC 6455 closing, on real sockets: the server under gunicorn's gevent worker,
and the Python client against a scripted server on a free port.

Autobahn|Testsuite measures the same behaviours (``make compliance``); these tests keep
them in place without it.
"""

import socket
import struct
import time

import pytest

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
