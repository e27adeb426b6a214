"""flask_jpulse_ws.client against gunicorn: the browser client's scenarios, without a browser."""

import os
import re
import signal
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from servers import ROOT, run_python, wait_for

from flask_jpulse_ws import client as ws_client
from flask_jpulse_ws.client import connect, get_connections

#: Short intervals so reconnect scenarios take a second, not a minute.
FAST = {"reconnect_base_interval": 0.2, "reconnect_max_interval": 1.0,
        "max_reconnect_attempts": 20}
ECHO = "/api/1/ws/echo"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def room(name):
    return f"/api/1/ws/room/{name}"


@pytest.fixture
def clients():
    """``clients(url, **options)`` connects a recorded client; all disconnected at the end."""
    made = []

    def make(url, **options):
        rec = Recorder()
        c = connect(url, on_status_change=rec.status, on_message=rec.message,
                    on_resync=rec.resync, **options)
        rec.client = c
        c.rec = rec
        made.append(c)
        return c

    yield make
    for c in made:
        c.disconnect()


class Recorder:
    """Everything a client reports, in order (callbacks run on its reader)."""

    def __init__(self):
        self.client = None
        self.statuses = ["connecting"]
        self.times = [time.monotonic()]
        self.messages = []
        self.resyncs = []
        self.ids = []
        self._lock = threading.Lock()

    def status(self, new, old):
        with self._lock:
            self.statuses.append(new)
            self.times.append(time.monotonic())
            if new == "connected":
                wait_for(lambda: self.client, message="connect() to return")
                self.ids.append(self.client.get_client_id())

    def message(self, frame):
        self.messages.append(frame)
        if frame["data"].get("type") == "question":
            self.client.reply(frame, {"answer": 42})

    def resync(self, info):
        self.resyncs.append(info["reason"])


def wait_status(c, status, timeout=10):
    wait_for(lambda: c.get_status() == status, timeout=timeout, interval=0.01,
             message=f"status {status!r} (statuses {c.rec.statuses})")


def upgrades(server, path):
    return server.http().get(f"/_test/upgrades?path={path}")["count"]


@contextmanager
def frozen(server):
    """SIGSTOP the master and its workers for the block; SIGCONT whatever happens."""
    pids = [server.proc.pid] + server.worker_pids()
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def test_connect_welcome_send_and_receive(app_server, clients):
    """The welcome sets `connected`, the id and the limits; a sent broadcast comes back."""
    c = clients(app_server.ws_url(ECHO))
    assert c.get_status() == "connecting"
    assert c.wait_connected(10)
    assert UUID.match(c.get_client_id())
    assert c.get_limits()["maxSize"] == 65536
    assert c.send({"type": "broadcast", "data": {"n": 1}}) is True
    wait_for(lambda: c.rec.messages, message="the broadcast")
    frame = c.rec.messages[0]
    assert frame["success"] is True
    assert frame["data"]["type"] == "broadcast" and frame["data"]["data"] == {"n": 1}
    assert c.rec.statuses == ["connecting", "connected"]


def test_status_sequence_across_server_restart(own_server, clients):
    """Killed and restarted on the same port: connected -> reconnecting -> connected."""
    srv = own_server()
    c = clients(srv.ws_url(room("restart")), **FAST)
    wait_status(c, "connected")
    first_id = c.get_client_id()
    srv.kill()
    wait_status(c, "reconnecting")
    assert c.send({"type": "broadcast"}) is False
    assert c.request({"type": "whoami"})["code"] == "NOT_CONNECTED"
    own_server(port=srv.port)
    wait_status(c, "connected", timeout=20)
    assert c.rec.statuses == ["connecting", "connected", "reconnecting", "connected"]
    assert c.rec.resyncs == ["reconnect"]
    assert c.rec.ids == [first_id, first_id]


def test_logout_closes_4401_and_the_client_stops(app_server, clients):
    """Logout closes the socket 4401: `auth-required`, and no further upgrade requests."""
    path = "/api/1/ws/secure/py-logout"
    http = app_server.http()
    assert http.post("/login", {"username": "alice"}) == "ok"
    cookies = {cookie.name: cookie.value for cookie in http.jar}
    c = clients(app_server.ws_url(path), cookies=cookies, **FAST)
    wait_status(c, "connected")
    assert c.request({"type": "whoami"})["data"]["username"] == "alice"
    http.post("/logout")
    wait_status(c, "auth-required")
    time.sleep(5 * FAST["reconnect_base_interval"])  # observation window, where a retry would be
    assert upgrades(app_server, path) == 1
    assert c.rec.statuses == ["connecting", "connected", "auth-required"]
    assert c not in get_connections()


def test_anonymous_client_on_secure_path_gets_auth_required(app_server, clients):
    """4401 at the handshake: `auth-required` without ever being connected, one attempt."""
    path = "/api/1/ws/secure/py-anon"
    c = clients(app_server.ws_url(path), **FAST)
    wait_status(c, "auth-required")
    assert c.rec.statuses == ["connecting", "auth-required"]
    assert upgrades(app_server, path) == 1


def test_replaced_client_takes_a_new_id_4409(app_server, clients):
    """A second client with the same id and identity replaces the first, which renews its id."""
    url = app_server.ws_url(room("py-dup"))
    first = clients(url, **FAST)
    wait_status(first, "connected")
    shared = first.get_client_id()
    second = clients(url, client_id=shared, resume_token=first.get_resume_token(), **FAST)
    wait_status(second, "connected")
    assert second.get_client_id() == shared
    wait_for(lambda: len(first.rec.ids) == 2, message="the replaced client back")
    assert first.rec.statuses == ["connecting", "connected", "reconnecting", "connected"]
    assert first.rec.resyncs == ["replaced"]
    assert UUID.match(first.rec.ids[1]) and first.rec.ids[1] != shared
    assert second.rec.statuses == ["connecting", "connected"]


def test_id_is_kept_across_reconnect_and_differs_between_clients(app_server, clients):
    """reconnect() keeps the id the server confirmed; two clients get different ids."""
    url = app_server.ws_url(ECHO)
    a = clients(url, **FAST)
    wait_status(a, "connected")
    before = a.get_client_id()
    a.reconnect()
    wait_for(lambda: len(a.rec.ids) == 2, message="reconnected")
    assert a.rec.ids == [before, before]
    assert a.rec.resyncs == ["reconnect"]
    b = clients(url, **FAST)
    wait_status(b, "connected")
    assert b.get_client_id() != before


def test_an_id_comes_back_only_with_its_resume_token(app_server, clients):
    """``client_id=`` with the ``resume_token=`` of the welcome that gave it keeps that
    id in a later client; without the token (a copied id), the server gives a fresh one."""
    url = app_server.ws_url(ECHO)
    a = clients(url, **FAST)
    wait_status(a, "connected")
    mine, token = a.get_client_id(), a.get_resume_token()
    assert token and len(token) == 43
    a.disconnect()
    again = clients(url, client_id=mine, resume_token=token, **FAST)
    wait_status(again, "connected")
    assert again.get_client_id() == mine and again.get_resume_token() == token
    copied = clients(url, client_id=mine, **FAST)
    wait_status(copied, "connected")
    assert copied.get_client_id() != mine
    assert again.rec.statuses == ["connecting", "connected"]  # not pushed out (no 4409)


def test_frozen_server_is_detected_within_ping_plus_pong(own_server, clients):
    """SIGSTOP: no `_pong`, so the socket is dropped within ping_interval + pong_timeout."""
    srv = own_server()
    c = clients(srv.ws_url(room("py-frozen")), ping_interval=0.5, pong_timeout=0.5, **FAST)
    wait_status(c, "connected")
    with frozen(srv):
        stopped_at = time.monotonic()
        wait_status(c, "reconnecting", timeout=5)
        detected_at = c.rec.times[c.rec.statuses.index("reconnecting")]
        assert detected_at - stopped_at <= 0.5 + 0.5 + 0.25, detected_at - stopped_at
    wait_status(c, "connected", timeout=15)


def test_request_gets_its_reply_or_a_timeout(app_server, clients):
    """request() returns the reply frame, or REQUEST_TIMEOUT; a late reply is dropped."""
    c = clients(app_server.ws_url(ECHO))
    wait_status(c, "connected")
    reply = c.request({"type": "whoami"})
    assert reply["success"] is True and reply["data"]["clientId"] == c.get_client_id()
    late = c.request({"type": "slow", "seconds": 1}, timeout=0.2)
    assert late["success"] is False and late["code"] == "REQUEST_TIMEOUT"
    assert c.request({"type": "whoami"})["success"] is True  # answered after the late one
    assert c.rec.messages == []  # replies never reach on_message, late ones neither


def test_server_request_is_answered_with_reply(app_server, clients):
    """A server request reaches on_message; reply(frame, data) answers it."""
    path = room("py-ask")
    c = clients(app_server.ws_url(path))
    wait_status(c, "connected")
    result = app_server.http().post("/_test/ask", {"path": path, "clientId": c.get_client_id()})
    assert result["success"] is True and result["data"]["answer"] == 42


def test_send_returns_false_while_disconnected(app_server, clients):
    """An unknown namespace closes 4404: `disconnected`, send() false, no retry."""
    path = "/api/1/ws/py-no-such-thing"
    c = clients(app_server.ws_url(path), **FAST)
    wait_status(c, "disconnected")
    assert c.send({"type": "x"}) is False
    assert c.request({"type": "x"})["code"] == "NOT_CONNECTED"
    assert c.rec.statuses == ["connecting", "disconnected"]
    assert upgrades(app_server, path) == 1


def test_exhausted_attempts_end_disconnected(app_server, clients):
    """Refused (4500) every time: 1 + max_reconnect_attempts upgrades, then `disconnected`."""
    path = room("busy-py")
    c = clients(app_server.ws_url(path), reconnect_base_interval=0.05,
                reconnect_max_interval=0.1, max_reconnect_attempts=3)
    wait_status(c, "disconnected")
    assert c.rec.statuses == ["connecting", "reconnecting", "disconnected"]
    assert upgrades(app_server, path) == 4
    assert c not in get_connections()


def test_disconnect_does_not_reconnect(app_server, clients):
    """disconnect(): `disconnected` at once, out of get_connections(), no more upgrades."""
    path = room("py-bye")
    c = clients(app_server.ws_url(path), **FAST)
    wait_status(c, "connected")
    c.disconnect()
    assert c.get_status() == "disconnected"
    assert c not in get_connections()
    time.sleep(5 * FAST["reconnect_base_interval"])  # observation window
    assert upgrades(app_server, path) == 1
    assert c.rec.statuses == ["connecting", "connected", "disconnected"]


def test_get_connections_lists_live_clients(app_server, clients):
    """get_connections() lists live clients; a disconnected one leaves."""
    a = clients(app_server.ws_url(room("py-list-a")))
    b = clients(app_server.ws_url(room("py-list-b")))
    wait_status(a, "connected")
    wait_status(b, "connected")
    assert a in get_connections() and b in get_connections()
    a.disconnect()
    assert a not in get_connections() and b in get_connections()


def test_close_codes_map_to_the_browser_clients_actions():
    """The same table as jpulse-ws.js closeAction() (protocol.md section 3)."""
    action = ws_client.close_action
    assert [action(c) for c in (4401, 4403)] == ["auth", "auth"]
    assert action(4409) == "replaced" and action(4529) == "full"
    assert [action(c) for c in (4404, 4000, 4418, 4499)] == ["stop"] * 4
    assert [action(c) for c in (1000, 1001, 1005, 1006, 1008, 1009, 1011, 4503, 4500,
                                4999)] == ["retry"] * 10


def test_works_under_gevent(app_server):
    """In a monkey-patched process the reader is a greenlet; the same calls work."""
    script = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import gevent
        from flask_jpulse_ws import concurrency
        from flask_jpulse_ws.client import connect
        assert concurrency.using_gevent()
        c = connect({app_server.ws_url(ECHO)!r}, ping_interval=0.2, pong_timeout=1)
        assert c.wait_connected(10), c.get_status()
        replies = gevent.joinall([gevent.spawn(c.request, {{"type": "whoami"}})
                                  for _ in range(20)], timeout=10)
        assert all(g.value["success"] for g in replies), [g.value for g in replies]
        gevent.sleep(0.6)  # a few heartbeats through the greenlet reader
        assert c.is_connected()
        c.disconnect()
        print("ok", c.get_status())
    """)
    assert run_python(script, timeout=60, cwd=Path(__file__).parent) == "ok disconnected"


def test_docs_show_the_live_server_example_verbatim():
    """docs/client.md embeds tests/integration/test_live_server.py as it is."""
    example = (Path(__file__).parent / "test_live_server.py").read_text()
    doc = (ROOT / "docs" / "client.md").read_text()
    assert example[example.index("import pytest"):] in doc
