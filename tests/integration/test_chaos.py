"""Chaos: the demo app on three gevent workers and Redis, faults injected mid-stream.

A steady stream of acknowledged writes runs throughout: REST todo creates (stored in
SQLite, acknowledged by HTTP 201) and WebSocket note creates (stored in Redis,
acknowledged by a successful reply). During the stream one worker is killed with SIGKILL
and Redis is killed with SIGKILL and restarted on the same port. Redis runs with
``appendonly yes`` / ``appendfsync always``: the demo keeps its notes there, and only a
Redis that persists every write can keep a SIGKILL from erasing acknowledged notes.
"""

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
from http.client import HTTPException

import psutil
import pytest
from servers import ROOT, GunicornServer, RedisServer, wait_for

from flask_jpulse_ws.client import CONNECTED, connect
from flask_jpulse_ws.testing import HTTPSession, WSTestClient

APP = "example_app:create_app()"
TODO = "/api/1/ws/hello-todo"
NOTES = "/api/1/ws/hello-notes"
API = "/api/1/hello-todo"
WORKERS = 3
CLIENTS = 12  # 6 on each demo namespace, 4 on each worker
WRITE_PERIOD = 0.05  # seconds between two writes of one writer thread


class PersistentRedis(RedisServer):
    """A private redis-server that fsyncs every write to its append-only file."""

    def start(self) -> "PersistentRedis":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _answers(self.port), timeout=10, message="redis-server")
        return self


def _answers(port):
    import redis
    return redis.Redis(port=port, socket_timeout=0.5).ping()


class Watched:
    """A Python client and what it went through: statuses and resyncs, timestamped."""

    def __init__(self, url):
        self.statuses = []
        self.resyncs = []
        self.client = connect(url, reconnect_base_interval=0.2, reconnect_max_interval=1.0,
                              max_reconnect_attempts=100, ping_interval=2, pong_timeout=2,
                              on_status_change=lambda new, old: self.statuses.append(
                                  (time.monotonic(), new)),
                              on_resync=lambda r: self.resyncs.append(
                                  (time.monotonic(), r.get("reason"))))


def open_on(worker, pids, url):
    """A watched client accepted by ``worker``: the others are paused (SIGSTOP) meanwhile."""
    others = [p for p in pids if p != worker]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        w = Watched(url)
        wait_for(w.client.is_connected, timeout=10, message=f"a client on worker {worker}")
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)
    return w


def connections_per_worker(pids, port):
    """Established TCP connections to ``port`` held by each worker."""
    out = {}
    for pid in pids:
        conns = psutil.Process(pid).net_connections(kind="tcp")
        out[pid] = sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED
                       and c.laddr and c.laddr.port == port)
    return out


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_worker_kill_and_redis_restart_lose_no_acknowledged_write(tmp_path):
    """SIGKILL a worker and restart Redis mid-stream: every acknowledged todo and note is
    still there, the other workers live on, and every client ends connected after a
    ``_resync``."""
    redis = PersistentRedis().start()
    env = {"EXAMPLE_DB_URL": f"sqlite:///{tmp_path / 'chaos.sqlite3'}",
           "SECRET_KEY": "test-secret", "REDIS_URL": redis.url, "HELLO_NOTES_MAX": "5000",
           "JPULSE_WS_CHANNEL_PREFIX": "chaos"}
    server = GunicornServer(app=APP, workers=WORKERS, chdir=ROOT, env=env)
    watched = []
    stop = threading.Event()
    threads = []
    try:
        server.start()
        original = set(wait_for(lambda: len(server.worker_pids()) == WORKERS
                                and server.worker_pids(), message="three workers"))
        pids = sorted(original)
        paths = [TODO, NOTES] * (CLIENTS // 2)
        watched = [open_on(pids[k % WORKERS], pids, server.ws_url(p))
                   for k, p in enumerate(paths)]
        spread = wait_for(lambda: (lambda s: sum(s.values()) >= CLIENTS and s)(
            connections_per_worker(original, server.port)), message="client sockets")
        assert all(spread.values()), f"clients not spread over the workers: {spread}"
        victim = pids[0]

        acked_todos, acked_notes, errors = {}, {}, []

        def todo_writer():
            http = HTTPSession(server.base)
            i = 0
            while not stop.is_set():
                title = f"chaos-{i}"
                try:
                    resp = http.post(API, json_body={"title": title}, timeout=5)
                    if resp.status == 201:
                        acked_todos[resp.json()["data"]["id"]] = (title, time.monotonic())
                    else:
                        errors.append(("todo", resp.status))
                except (OSError, HTTPException, urllib.error.URLError) as exc:
                    errors.append(("todo", repr(exc)))  # not acknowledged: may or may not exist
                i += 1
                stop.wait(WRITE_PERIOD)

        def note_writer(w, tag):
            i = 0
            while not stop.is_set():
                text = f"{tag}-{i}"
                reply = w.client.request({"type": "note-create", "data": {"text": text}},
                                         timeout=3)
                if reply.get("success") is True:
                    acked_notes[reply["data"]["note"]["id"]] = (text, time.monotonic())
                else:
                    errors.append(("note", reply.get("code")))
                i += 1
                stop.wait(WRITE_PERIOD)

        note_clients = [w for w in watched if w.client.url.endswith(NOTES)]
        threads = [threading.Thread(target=todo_writer, daemon=True)] + [
            threading.Thread(target=note_writer, args=(w, f"w{k}"), daemon=True)
            for k, w in enumerate(note_clients[:2])]
        for t in threads:
            t.start()

        wait_for(lambda: len(acked_todos) >= 10 and len(acked_notes) >= 10, timeout=10,
                 message="the stream flowing")
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(server.worker_pids()) == WORKERS and victim not in
                 server.worker_pids(), timeout=20, message="gunicorn replacing the worker")
        stop.wait(1.0)
        redis.kill()
        stop.wait(1.0)
        redis.start()
        restarted_at = time.monotonic()
        wait_for(lambda: sum(1 for _, t in acked_notes.values() if t > restarted_at) >= 10
                 and sum(1 for _, t in acked_todos.values() if t > restarted_at) >= 10,
                 timeout=15, message="acknowledged writes after the Redis restart")
        stop.set()
        for t in threads:
            t.join(10)

        wait_for(lambda: all(w.client.get_status() == CONNECTED for w in watched),
                 timeout=15, message="every client connected again")
        wait_for(lambda: all(any(t > killed_at for t, _ in w.resyncs) for w in watched),
                 timeout=15, message="a _resync at every client")
        reasons = {r for w in watched for t, r in w.resyncs if t > killed_at}
        assert reasons <= {"reconnect", "relay-gap"}, reasons
        assert "relay-gap" in reasons  # clients of the surviving workers stayed connected
        orphans = [w for w in watched if any(t > killed_at and s != CONNECTED
                                             for t, s in w.statuses)]
        assert orphans, "no client went through a reconnect"

        http = HTTPSession(server.base)
        stored = {t["id"]: t["title"] for t in http.get(API).json()["data"]}
        missing_todos = {i: v[0] for i, v in acked_todos.items() if stored.get(i) != v[0]}
        with WSTestClient(server.ws_url(NOTES)) as reader:
            reader.receive(type="connected")
            init = reader.receive(type="notes-init", timeout=5)["data"]["data"]
        notes = {n["id"]: n["text"] for n in init["notes"]}
        missing_notes = {i: v[0] for i, v in acked_notes.items() if notes.get(i) != v[0]}
        assert not missing_todos, f"acknowledged todos lost: {missing_todos}"
        assert not missing_notes, f"acknowledged notes lost: {missing_notes}"

        survivors = original - {victim}
        assert survivors <= set(server.worker_pids()), "a worker other than the victim died"
        assert len(server.worker_pids()) == WORKERS
        print(f"\nchaos: {len(acked_todos)} todos and {len(acked_notes)} notes acknowledged, "
              f"all found; {len(errors)} writes refused or cut during the faults; "
              f"clients per worker {sorted(spread.values())}, {len(orphans)} reconnected; "
              f"resync reasons {sorted(reasons)}; errors {sorted(set(map(str, errors)))}")
    finally:
        stop.set()
        for w in watched:
            w.client.disconnect()
        server.stop()
        redis.stop()


GARBAGE = [
    b"not json", b"[1, 2]", b"{}", b'"a string"', b"\xff\xfe",
    {"op": "nonsense"},
    {"op": "broadcast"},  # no path, no payload
    {"op": "broadcast", "path": ["not", "hashable"], "payload": "{}"},
    {"op": "broadcast", "path": "/api/1/ws/nowhere", "payload": "{}"},
    {"op": "send", "path": "/api/1/ws/open-rooms/target", "clientId": None, "payload": 5},
    {"op": "hbroadcast", "path": "/api/1/ws/open-rooms/target", "payload": "{}",
     "epoch": "e", "offset": "not a number"},
    {"op": "remove", "path": None},
    {"op": "revoke"},  # no token
    {"op": "presence", "path": 7, "joined": "x"},
    {"op": "resync", "paths": 7},
]


@pytest.mark.cluster
def test_garbage_on_the_relay_channel_neither_stops_the_relay_nor_reaches_clients(
        make_server, redis_server):
    """Malformed operations published on the namespace's and the control channel are
    logged and skipped: the worker lives, clients get none of it, and relayed
    broadcasts still arrive."""
    import redis as redis_py

    from flask_jpulse_ws.cluster.keys import control_channel, namespace_channel
    from flask_jpulse_ws.cluster.relay import encode_op

    srv = make_server(settings={"JPULSE_WS_REDIS_URL": redis_server.url,
                                "JPULSE_WS_CHANNEL_PREFIX": "inject"})
    path = "/api/1/ws/open-rooms/target"
    pid = wait_for(srv.worker_pids, message="the worker")[0]
    pub = redis_py.Redis.from_url(redis_server.url)
    with WSTestClient(srv.ws_url(path)) as c:
        c.receive(type="connected")
        channels = [namespace_channel("inject", path), control_channel("inject")]
        for channel in channels:  # subscribed before the welcome: nothing to wait for
            assert pub.pubsub_numsub(channel)[0][1] == 1
        for item in GARBAGE:
            data = item if isinstance(item, bytes) else encode_op("intruder", item.pop("op"),
                                                                  item)
            for channel in channels:
                assert pub.publish(channel, data) == 1
        legit = encode_op("other-host", "broadcast", {
            "path": path, "type": "check",
            "payload": '{"success":true,"data":{"type":"check","data":"after"}}'})
        pub.publish(channels[0], legit)
        got = c.receive_all(timeout=1.0)
        assert [m["data"]["type"] for m in got] == ["check"], got
        srv.http().post("/_test/broadcast", {"path": path,
                                             "data": {"type": "local", "data": 1}})
        assert c.receive(type="local")["data"]["data"] == 1
    assert srv.worker_pids() == [pid]
    assert not srv.http().get("/_test/stats")["relay"]["degraded"]


@pytest.mark.cluster
def test_a_relayed_revoke_without_a_token_closes_no_anonymous_socket(make_server, redis_server):
    """``{"op": "revoke", "token": null}`` on the relay must revoke nothing.

    Regression test: ``revoke_session`` once matched every socket whose
    ``session_token`` is None (every anonymous connection) and closed them all 4401 on
    every worker. It now ignores a token that is not a non-empty string.
    """
    import redis as redis_py

    from flask_jpulse_ws.cluster.keys import control_channel, namespace_channel
    from flask_jpulse_ws.cluster.relay import encode_op

    srv = make_server(settings={"JPULSE_WS_REDIS_URL": redis_server.url,
                                "JPULSE_WS_CHANNEL_PREFIX": "revoke-null"})
    path = "/api/1/ws/open-rooms/anon"
    pub = redis_py.Redis.from_url(redis_server.url)
    with WSTestClient(srv.ws_url(path)) as c:
        c.receive(type="connected")
        pub.publish(control_channel("revoke-null"), encode_op("intruder", "revoke",
                                                              {"token": None}))
        # Published after the revoke to the same subscriber connection: applied after it.
        pub.publish(namespace_channel("revoke-null", path), encode_op("other-host", "broadcast", {
            "path": path, "type": "still-here",
            "payload": '{"success":true,"data":{"type":"still-here","data":1}}'}))
        assert c.receive(type="still-here")["data"]["data"] == 1
