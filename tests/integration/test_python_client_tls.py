"""flask_jpulse_ws.client over wss:// against gunicorn --certfile: TLS at both ends.

A throwaway CA (trustme) signs a certificate for 127.0.0.1 only; the client trusts that
CA through ``ssl_context``. The server is tests/apps/browser_app.py, as for the
plain-socket tests in test_python_client.py.
"""

import re
import socket
import ssl
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pytest
import trustme
from servers import HTTP, GunicornServer, run_python, wait_for

from flask_jpulse_ws.client import connect
from flask_jpulse_ws.core import frames

ECHO = "/api/1/ws/echo"
FAST = {"reconnect_base_interval": 0.2, "reconnect_max_interval": 1.0,
        "max_reconnect_attempts": 20}
SETTINGS = {
    # Server pings every 0.3 s, pong within 2 s: the client's pongs must pass TLS.
    "JPULSE_WS_PING_INTERVAL": 0.3, "JPULSE_WS_PONG_TIMEOUT": 2,
    # The stress test sends hundreds of messages a second from one client...
    "JPULSE_WS_RATE_MAX_MESSAGES": 100000,
    # ...and the server broadcasts 13 MiB without yielding: what the socket buffers do
    # not take waits in the connection's queue, whose bound must hold it.
    "JPULSE_WS_MAX_QUEUE_BYTES": 64 * 1024 * 1024,
}


def room(name):
    return f"/api/1/ws/room/{name}"


class TLSServer(GunicornServer):
    """browser_app under ``gunicorn -k gevent --certfile --keyfile``: https and wss."""

    def __init__(self, pem, client_context, **kwargs):
        super().__init__(app="browser_app:create_app()", settings=SETTINGS,
                         env={"GUNICORN_CMD_ARGS": f"--certfile={pem} --keyfile={pem}"},
                         **kwargs)
        self.client_context = client_context

    @property
    def base(self):
        return f"https://127.0.0.1:{self.port}"

    def ws_url(self, path, host="127.0.0.1"):
        return f"wss://{host}:{self.port}{path}"

    def http(self):
        return HTTP(self.base, ssl_context=self.client_context)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def trusting(ca):
    """A default client context (certificate and host name checked) that trusts the CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tls_server(ca, trusting, tmp_path_factory):
    pem = tmp_path_factory.mktemp("tls") / "server.pem"
    # 127.0.0.1 only: wss://localhost is the wrong host name for it.
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    srv = TLSServer(pem, trusting).start()
    yield srv
    srv.stop()


class StallingServer:
    """A one-connection wss server that stops reading for ``pause`` seconds after the
    welcome, with a small receive buffer: a client's writes then wait in ``sendall``.
    It records the client's app messages and answers ``_ping``."""

    def __init__(self, cert, pause):
        self.pause = pause
        self.received = []
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.context)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        raw, _ = self.listener.accept()
        with self.context.wrap_socket(raw, server_side=True) as conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            key = re.search(rb"Sec-WebSocket-Key: (\S+)", head).group(1).decode()
            conn.sendall(frames.handshake_response(key))
            self._send(conn, "connected", {"clientId": "0b5bd1a4-8c4b-4f4e-9a59-5d1f3c2b1a00"})
            time.sleep(self.pause)
            decoder = frames.FrameDecoder(1 << 24)
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for opcode, payload in decoder.feed(data):
                    if opcode == frames.OP_CLOSE:
                        conn.sendall(frames.close_frame(1000))
                        return
                    message = orjson.loads(payload)
                    if message.get("type") == "_ping":
                        self._send(conn, "_pong", {})
                    else:
                        self.received.append(message)

    @staticmethod
    def _send(conn, type_, data):
        body = {"success": True, "data": {"type": type_, "data": data}}
        conn.sendall(frames.text_frame(orjson.dumps(body)))


class Recorder:
    """Statuses and app frames, in order (callbacks run on the client's reader)."""

    def __init__(self):
        self.statuses = ["connecting"]
        self.messages = []

    def status(self, new, old):
        self.statuses.append(new)

    def message(self, frame):
        self.messages.append(frame)


@pytest.fixture
def clients():
    """``clients(url, **options)`` connects a recorded client; all disconnected at the end."""
    made = []

    def make(url, **options):
        rec = Recorder()
        c = connect(url, on_status_change=rec.status, on_message=rec.message, **options)
        c.rec = rec
        made.append(c)
        return c

    yield make
    for c in made:
        c.disconnect()


def wait_status(c, status, timeout=10):
    wait_for(lambda: c.get_status() == status, timeout=timeout, interval=0.01,
             message=f"status {status!r} (statuses {c.rec.statuses})")


def of_type(c, type_):
    return [m["data"]["data"] for m in list(c.rec.messages) if m["data"]["type"] == type_]


def upgrades(server, path):
    return server.http().get(f"/_test/upgrades?path={path}")["count"]


def test_wss_welcome_request_and_broadcast(tls_server, trusting, clients):
    """Over wss with the CA in ssl_context: welcome, request/reply, a broadcast back."""
    c = clients(tls_server.ws_url(ECHO), ssl_context=trusting)
    assert c.wait_connected(10), c.rec.statuses
    assert c.get_limits()["maxSize"] == 65536
    reply = c.request({"type": "whoami"})
    assert reply["success"] is True and reply["data"]["clientId"] == c.get_client_id()
    assert c.send({"type": "broadcast", "data": {"n": 1}}) is True
    wait_for(lambda: of_type(c, "broadcast"), message="the broadcast")
    assert of_type(c, "broadcast") == [{"n": 1}]
    assert c.rec.statuses == ["connecting", "connected"]


def test_server_request_and_close_codes_over_tls(tls_server, trusting, clients):
    """A server request is answered; close frames pass TLS both at the handshake (4404)
    and on an open connection (4409: the replaced client takes a new id)."""
    path = room("tls-ask")
    c = clients(tls_server.ws_url(path), ssl_context=trusting)
    c.on_message(lambda frame: frame.get("requestId") and c.reply(frame, {"answer": 42}))
    assert c.wait_connected(10)
    result = tls_server.http().post("/_test/ask", {"path": path,
                                                    "clientId": c.get_client_id()})
    assert result["success"] is True and result["data"]["answer"] == 42
    gone = clients(tls_server.ws_url("/api/1/ws/tls-no-such-thing"), ssl_context=trusting)
    wait_status(gone, "disconnected")
    assert gone.rec.statuses == ["connecting", "disconnected"]
    twin = clients(tls_server.ws_url(path), ssl_context=trusting,
                   client_id=c.get_client_id(), resume_token=c.get_resume_token())
    assert twin.wait_connected(10)
    wait_for(lambda: c.rec.statuses.count("connected") == 2, message="the replaced one back")
    assert c.get_client_id() != twin.get_client_id()


def test_server_answers_a_close_over_tls(tls_server, trusting):
    """The server's frames go through TLS to the very end: its echo of a client's close
    frame arrives before it closes the socket (a raw TLS socket, to see the frames)."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    with trusting.wrap_socket(socket.create_connection(("127.0.0.1", tls_server.port)),
                              server_hostname="127.0.0.1") as sock:
        sock.settimeout(10)
        sock.sendall((f"GET {ECHO} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        decoder = frames.FrameDecoder(1 << 20, expect_mask=False)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        events = decoder.feed(rest) if rest else []
        while not events:
            events = decoder.feed(sock.recv(65536))
        assert orjson.loads(events[0][1])["data"]["type"] == "connected"
        sock.sendall(frames.close_frame(1000, mask=True))
        opcodes = []
        while frames.OP_CLOSE not in opcodes:
            data = sock.recv(65536)
            assert data, f"closed without a close frame after {opcodes}"
            opcodes += [op for op, _ in decoder.feed(data)]


def test_heartbeat_and_reconnect_over_tls(tls_server, trusting, clients):
    """Client `_ping`s and server pings keep the socket up; reconnect() opens a new one."""
    c = clients(tls_server.ws_url(ECHO), ssl_context=trusting, ping_interval=0.2,
                pong_timeout=1, **FAST)
    assert c.wait_connected(10)
    time.sleep(3)  # 15 client pings, 10 server pings: a missing pong would drop the socket
    assert c.rec.statuses == ["connecting", "connected"]
    c.reconnect()
    wait_for(lambda: c.rec.statuses.count("connected") == 2, message="reconnected")
    assert c.request({"type": "whoami"})["success"] is True


def test_concurrent_writers_and_large_frames_stay_intact(tls_server, trusting, clients):
    """Four threads send while the server broadcasts 200 x 64 KiB and two threads make
    requests: every frame arrives whole and in order, and the socket survives.

    With one shared SSLSocket the reader's short timeouts cut writers' frames and
    SSL_read/SSL_write ran at once on one connection; this is the case that broke."""
    path = room("tls-stress")
    c = clients(tls_server.ws_url(path), ssl_context=trusting, ping_interval=0.1,
                pong_timeout=5)
    assert c.wait_connected(10)
    writers, per_writer, ticks, tick_pad = 4, 50, 200, 64 * 1024
    failures = []

    def pad(w, n):
        return chr(ord("a") + w) * (1000 + n * 7919 % 30000)  # sizes cross TLS records

    def write(w):
        for n in range(per_writer):
            if not c.send({"type": "broadcast", "data": {"w": w, "n": n, "pad": pad(w, n)}}):
                failures.append(("send", w, n))

    def ask():
        for _ in range(20):
            reply = c.request({"type": "whoami"})
            if not reply["success"] or reply["data"]["clientId"] != c.get_client_id():
                failures.append(("request", reply))

    def burst():
        sent = tls_server.http().post("/_test/burst",
                                      {"path": path, "count": ticks, "pad": tick_pad})
        if sent != {"sent": ticks}:
            failures.append(("burst", sent))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    threads += [threading.Thread(target=ask) for _ in range(2)]
    threads.append(threading.Thread(target=burst))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    wait_for(lambda: len(of_type(c, "tick")) == ticks and
             len(of_type(c, "broadcast")) == writers * per_writer, timeout=30,
             message="every frame")
    got = of_type(c, "tick")
    assert [t["seq"] for t in got] == list(range(ticks))
    assert all(t["pad"] == "x" * tick_pad for t in got)
    echoed = of_type(c, "broadcast")
    for w in range(writers):
        mine = [m for m in echoed if m["w"] == w]
        assert [m["n"] for m in mine] == list(range(per_writer))
        assert all(m["pad"] == pad(w, m["n"]) for m in mine)
    assert c.rec.statuses == ["connecting", "connected"]


def test_writes_wait_out_a_stalled_server(ca, trusting, clients):
    """The server reads nothing for 1.5 s while four threads send 4.8 MB: sendall waits
    (the reader's 0.1 s waits between pings do not cut it), then every frame arrives
    whole and in order on the same socket. A shared SSLSocket dropped the socket here."""
    srv = StallingServer(ca.issue_cert("127.0.0.1"), pause=1.5)
    c = clients(f"wss://127.0.0.1:{srv.port}/api/1/ws/stall", ssl_context=trusting,
                ping_interval=0.1, pong_timeout=5, max_reconnect_attempts=0)
    assert c.wait_connected(10)
    writers, per_writer = 4, 20
    results = []

    def write(w):
        results.extend(c.send({"type": "m", "w": w, "n": n, "pad": "z" * 60000})
                       for n in range(per_writer))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * (writers * per_writer)
    wait_for(lambda: len(srv.received) == writers * per_writer, message="every frame")
    for w in range(writers):
        assert [m["n"] for m in srv.received if m["w"] == w] == list(range(per_writer))
    assert all(m["pad"] == "z" * 60000 for m in srv.received)
    assert c.rec.statuses == ["connecting", "connected"]


def test_untrusted_certificate_never_connects(tls_server, clients, caplog):
    """The default context does not trust the throwaway CA: no upgrade is ever sent,
    every attempt fails, the log says why."""
    path = room("tls-untrusted")
    c = clients(tls_server.ws_url(path), reconnect_base_interval=0.05,
                reconnect_max_interval=0.1, max_reconnect_attempts=2)
    wait_status(c, "disconnected")
    assert c.rec.statuses == ["connecting", "reconnecting", "disconnected"]
    assert c.send({"type": "x"}) is False
    assert upgrades(tls_server, path) == 0
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_wrong_host_name_never_connects(tls_server, ca, trusting, clients, caplog):
    """A trusted certificate for 127.0.0.1 does not pass for localhost: host names are
    checked by default; a context that turns the check off connects."""
    path = room("tls-hostname")
    c = clients(tls_server.ws_url(path, host="localhost"), ssl_context=trusting,
                reconnect_base_interval=0.05, reconnect_max_interval=0.1,
                max_reconnect_attempts=1)
    wait_status(c, "disconnected")
    assert "connected" not in c.rec.statuses
    assert "Hostname mismatch" in caplog.text
    assert upgrades(tls_server, path) == 0
    lax = ssl.create_default_context()
    ca.configure_trust(lax)
    lax.check_hostname = False
    ok = clients(tls_server.ws_url(path, host="localhost"), ssl_context=lax)
    assert ok.wait_connected(10)


def test_tls_under_gevent(tls_server, ca_file):
    """In a monkey-patched process (a greenlet reader): requests, heartbeats and
    concurrent sends from many greenlets over wss."""
    script = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import ssl
        import gevent
        from flask_jpulse_ws import concurrency
        from flask_jpulse_ws.client import connect
        assert concurrency.using_gevent()
        got = []
        c = connect({tls_server.ws_url(room("tls-gevent"))!r}, ping_interval=0.2,
                    pong_timeout=1, on_message=got.append,
                    ssl_context=ssl.create_default_context(cafile={ca_file!r}))
        assert c.wait_connected(10), c.get_status()
        replies = gevent.joinall([gevent.spawn(c.request, {{"type": "whoami"}})
                                  for _ in range(20)], timeout=10)
        assert all(g.value["success"] for g in replies), [g.value for g in replies]

        def write(w):
            for n in range(30):
                assert c.send({{"type": "broadcast",
                               "data": {{"w": w, "n": n, "pad": "p" * (n * 997)}}}})

        gevent.joinall([gevent.spawn(write, w) for w in range(4)], timeout=20,
                       raise_error=True)
        deadline = gevent.get_hub().loop.now() + 20
        while len(got) < 120 and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.05)
        data = [f["data"]["data"] for f in got]
        for w in range(4):
            mine = [d for d in data if d["w"] == w]
            assert [d["n"] for d in mine] == list(range(30)), mine
            assert all(d["pad"] == "p" * (d["n"] * 997) for d in mine)
        gevent.sleep(0.6)  # a few heartbeats through the greenlet reader
        assert c.is_connected()
        c.disconnect()
        print("ok", c.get_status())
    """)
    assert run_python(script, timeout=90, cwd=Path(__file__).parent) == "ok disconnected"
