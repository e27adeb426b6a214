"""A Connection over ``socket.socketpair()``: no app, no server, real sockets.

This process is not gevent-patched, so ``concurrency`` runs the reader and the writer
as threads. The test plays the client on the other end of the pair.
"""

import os
import socket
import threading
import time

import pytest
from servers import wait_for

from flask_jpulse_ws import concurrency
from flask_jpulse_ws.config import Settings
from flask_jpulse_ws.context import Context
from flask_jpulse_ws.core import frames
from flask_jpulse_ws.core.frames import FrameDecoder
from flask_jpulse_ws.server.connection import Connection
from flask_jpulse_ws.server.namespace import Namespace, NamespaceTemplate

pytestmark = pytest.mark.skipif(concurrency.using_gevent(),
                                reason="written for the threads fallback")

PATH = "/api/1/ws/socketpair"
#: Bytes of the server's kernel send buffer: small, so it fills after a few frames.
SNDBUF = 16 * 1024
#: Seconds any read of the client side may wait before the test fails.
READ_DEADLINE = 5.0


class _AppState:
    """What a Namespace reads from its app when it is built: the settings."""

    def __init__(self, settings):
        self.settings = settings


@pytest.fixture
def pair():
    """(server socket, client socket); the client's reads fail after READ_DEADLINE."""
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    client.settimeout(READ_DEADLINE)
    yield server, client
    client.close()
    server.close()


@pytest.fixture
def connect(pair):
    """``connect(**settings) -> (conn, client, drops)``, the reader already running."""
    server, client = pair
    readers = []

    def make(on_message=lambda conn, payload: None, **overrides):
        settings = Settings(**overrides)
        ns = Namespace(_AppState(settings), NamespaceTemplate(None, PATH), PATH, {})
        drops = []
        conn = Connection(server, ns, "client-1", Context(namespace=PATH),
                          settings=settings, on_drop=drops.append)
        reader = threading.Thread(target=conn.run, args=(on_message,), daemon=True)
        reader.start()
        readers.append(reader)
        return conn, client, drops

    yield make
    client.shutdown(socket.SHUT_RDWR)  # the reader sees the end of the stream
    for reader in readers:
        reader.join(READ_DEADLINE)


def read_until_close(client, decoder):
    """Every event the server sent, up to and including its close frame."""
    events = []
    while not events or events[-1][0] != frames.OP_CLOSE:
        data = client.recv(65536)
        assert data, f"the stream ended before a close frame, after {len(events)} events"
        events += decoder.feed(data)
    return events


def read_to_end(client):
    """What the client receives until the server shuts the socket down."""
    data = b""
    while True:
        chunk = client.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_slow_consumer_is_closed_4503_after_whole_frames(connect):
    """A client that stops reading is closed 4503 once the queue is full, and reading
    later it finds whole frames, in order, then the close."""
    conn, client, drops = connect(max_queue_bytes=64 * 1024, close_timeout=30)
    sent = 0
    while conn.send_frame(frames.text_frame(b'{"seq":%d,"pad":"%s"}' % (sent, b"x" * 3000))):
        sent += 1
        assert sent < 1000, "the queue bound was never reached"
    assert drops == ["slowConsumer"]
    assert conn.close_code == 4503
    assert not conn.send_frame(frames.text_frame(b"{}"))  # nothing after the close

    events = read_until_close(client, FrameDecoder(1 << 20, expect_mask=False))
    *data, close = events
    seqs = [int(payload.split(b",")[0][len(b'{"seq":'):]) for _, payload in data]
    assert all(op == frames.OP_TEXT for op, _ in data)
    assert seqs == list(range(len(seqs))) and 0 < len(seqs) < sent
    assert frames.parse_close(close[1])[0] == 4503


def test_close_handshake_ends_when_the_peer_answers(connect):
    """``close(1000)`` sends a close frame; the peer's masked answer shuts the socket
    down at once, long before the close timeout."""
    conn, client, _ = connect(close_timeout=30)
    conn.close(1000)
    decoder = FrameDecoder(1 << 20, expect_mask=False)
    [(opcode, body)] = read_until_close(client, decoder)
    assert frames.parse_close(body) == (1000, "")
    client.sendall(frames.close_frame(1000, mask=True))
    assert read_to_end(client) == b""  # nothing more, then the shutdown
    wait_for(lambda: not conn.open, timeout=READ_DEADLINE, message="the reader to end")
    assert conn.close_code == 1000


def test_a_peer_that_never_answers_the_close_is_cut_after_the_close_timeout(connect):
    """Without the peer's close frame, the socket is shut down after the close timeout."""
    conn, client, _ = connect(close_timeout=0.3)
    started = time.monotonic()
    conn.close(1000)
    data = read_to_end(client)  # never answers, only reads
    waited = time.monotonic() - started
    [(opcode, body)] = FrameDecoder(1 << 20, expect_mask=False).feed(data)
    assert opcode == frames.OP_CLOSE and frames.parse_close(body)[0] == 1000
    assert 0.25 <= waited < READ_DEADLINE
    wait_for(lambda: not conn.open, timeout=READ_DEADLINE, message="the reader to end")


def test_frames_written_to_a_full_kernel_buffer_arrive_whole(connect):
    """A large frame sent while the kernel buffer is full is finished by the writer and
    arrives byte for byte once the peer reads."""
    conn, client, _ = connect(max_queue_bytes=8 << 20)
    filler = os.urandom(256 * 1024)  # far over the kernel buffer: its write is partial
    large = os.urandom(2 << 20)
    assert conn.send_frame(frames.encode_frame(frames.OP_BINARY, filler))
    assert conn.send_frame(frames.encode_frame(frames.OP_BINARY, large))  # never waits
    assert conn.send_frame(frames.text_frame(b'{"last":true}'))

    decoder = FrameDecoder(4 << 20, expect_mask=False)
    events = []
    while len(events) < 3:
        data = client.recv(65536)
        assert data, f"the stream ended after {len(events)} frames"
        events += decoder.feed(data)
    assert events == [(frames.OP_BINARY, filler), (frames.OP_BINARY, large),
                      (frames.OP_TEXT, b'{"last":true}')]


def test_a_masked_frame_sent_one_byte_at_a_time_is_one_message(connect):
    """Inbound bytes are buffered until the frame is whole: one message, not pieces."""
    messages = []
    conn, client, _ = connect(on_message=lambda c, payload: messages.append(payload))
    payload = b'{"type":"chat","data":"' + "héllo".encode() * 40 + b'"}'
    for byte in frames.encode_frame(frames.OP_TEXT, payload, mask=True):
        client.sendall(bytes((byte,)))
    client.sendall(frames.encode_frame(frames.OP_TEXT, b'{"type":"end"}', mask=True))
    wait_for(lambda: len(messages) == 2, timeout=READ_DEADLINE, message="both messages")
    assert messages == [payload, b'{"type":"end"}']


def test_the_reader_ends_only_once_the_queued_frames_and_the_close_answer_are_written(pair):
    """When the peer closes while frames still wait for it, ``run()`` returns only after
    the writer has written them and the close answer: the server closes the socket (or,
    under werkzeug, writes an HTTP response on it) as soon as ``run()`` returns, and the
    peer used to get a cut stream without a close (Autobahn 9.2.6 under werkzeug)."""
    server, client = pair
    settings = Settings(max_queue_bytes=8 << 20, close_timeout=10)
    ns = Namespace(_AppState(settings), NamespaceTemplate(None, PATH), PATH, {})
    conn = Connection(server, ns, "client-1", Context(namespace=PATH), settings=settings,
                      on_drop=lambda reason: None)

    def serve():  # what the server does with the socket once the view returns
        conn.run(lambda c, payload: None)
        server.shutdown(socket.SHUT_RDWR)

    reader = threading.Thread(target=serve, daemon=True)
    reader.start()
    payload = os.urandom(64 * 1024)
    for _ in range(32):  # 2 MiB: far over the kernel buffers, so most of it is queued
        assert conn.send_frame(frames.encode_frame(frames.OP_BINARY, payload))
    client.sendall(frames.close_frame(1000, mask=True))
    wait_for(lambda: conn.close_code == 1000, timeout=READ_DEADLINE, message="the close")
    time.sleep(0.2)  # the reader would have returned by now: let a cut stream show
    events = read_until_close(client, FrameDecoder(1 << 20, expect_mask=False))
    assert events[:-1] == [(frames.OP_BINARY, payload)] * 32
    assert frames.parse_close(events[-1][1])[0] == 1000
    reader.join(READ_DEADLINE)
    assert not reader.is_alive()
