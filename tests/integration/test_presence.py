"""Presence across processes: ``gunicorn -k gevent -w 3`` sharing a private redis-server,
and one worker without Redis.

Rooms are ``/api/1/ws/presence-rooms/<name>`` (tests/apps/presence_app.py), one per
test. Clients are opened in parallel; the app holds a worker's loop for 20 ms for the
first clients of a room, so they spread over the three workers (checked).
"""

import json
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from servers import GunicornServer, RedisServer, wait_for

from flask_jpulse_ws.client import connect
from flask_jpulse_ws.testing import WSTestClient

APP = "presence_app:create_app()"
WORKERS = 3
TTL = 2.0  # shortened: members of a killed worker vanish within this (plus a refresh)
BATCH = 0.5


def room(name):
    return f"/api/1/ws/presence-rooms/{name}"


@pytest.fixture(scope="module")
def cluster(relay_url):
    srv = GunicornServer(app=APP, workers=WORKERS, settings={
        "JPULSE_WS_REDIS_URL": relay_url, "JPULSE_WS_CHANNEL_PREFIX": "presence-test",
        "JPULSE_WS_PRESENCE_TTL": TTL, "JPULSE_WS_PRESENCE_BATCH": BATCH}).start()
    wait_for(lambda: len(srv.worker_pids()) == WORKERS, message="three workers")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def single():
    """One worker, no Redis: presence is the worker's own memory."""
    srv = GunicornServer(app=APP, settings={"JPULSE_WS_PRESENCE_BATCH": BATCH}).start()
    yield srv
    srv.stop()


#: Seconds a client may take to open, be welcomed and learn which worker holds it.
OPEN_TIMEOUT = 30.0


class Client:
    """A test client, the pid of the worker holding it, its id, and every ``_presence``
    batch it received (frames are kept while other replies are awaited)."""

    def __init__(self, server, path, headers=None):
        # Opening is not what these tests measure: several clients open at once on a
        # busy machine (each holding its worker's loop 20 ms), so they wait generously.
        self.ws = WSTestClient(server.ws_url(path), headers=headers, timeout=OPEN_TIMEOUT)
        self.batches = []
        welcome = self.receive(lambda m: _type(m) == "connected", timeout=OPEN_TIMEOUT)
        self.presence_flag = welcome["data"]["data"].get("presence")
        who = self.request({"type": "whoami"}, timeout=OPEN_TIMEOUT)["data"]
        self.pid, self.client_id = who["pid"], who["clientId"]

    def receive(self, match, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            frame = self.ws.receive(timeout=max(0.0, deadline - time.monotonic()))
            if _type(frame) == "_presence":
                self.batches.append(frame["data"]["data"])
            if match(frame):
                return frame

    def request(self, message, timeout=5.0):
        rid = f"r{time.monotonic_ns()}"
        self.ws.send({**message, "requestId": rid})
        return self.receive(lambda m: m.get("requestId") == rid, timeout)

    def drain(self, seconds):
        """Collect ``_presence`` batches for ``seconds``."""
        try:
            self.receive(lambda m: False, timeout=seconds)
        except TimeoutError:
            pass

    def seen(self, kind):
        return [m["clientId"] for b in self.batches for m in b.get(kind, ())]

    def who(self):
        return self.request({"type": "who"})["data"]

    def close(self):
        self.ws.close()


def _type(frame):
    data = frame.get("data")
    return data.get("type") if isinstance(data, dict) else None


def open_spread(server, path, n, headers=None, workers=WORKERS):
    """``n`` clients opened in parallel, on every worker (more are opened until so)."""
    def batch(k):
        with ThreadPoolExecutor(10) as pool:
            return list(pool.map(lambda _: Client(server, path, headers), range(k)))

    clients = batch(n)
    deadline = time.monotonic() + 10
    while len({c.pid for c in clients}) < workers and time.monotonic() < deadline:
        clients += batch(3)
    assert len({c.pid for c in clients}) >= workers, Counter(c.pid for c in clients)
    return clients


def one_per_worker(clients):
    return list({c.pid: c for c in clients}.values())


def ids_everywhere(clients, expected, timeout=5.0):
    """Every worker's ``presence()`` lists exactly ``expected`` client ids."""
    def check():
        return all({m["clientId"] for m in c.who()["members"]} == expected
                   for c in one_per_worker(clients))
    wait_for(check, timeout=timeout, interval=0.1, message=f"presence == {len(expected)} ids")


def test_single_worker_without_redis_tracks_members_and_events(single):
    """In memory: the welcome says presence; members, stats and batched join/leave."""
    path = room("memory")
    a = Client(single, path)
    b = Client(single, path)
    assert a.presence_flag is True
    reply = a.request({"type": "_presence"})
    assert reply["success"] is True and "partial" not in reply["data"]
    assert {m["clientId"] for m in reply["data"]["members"]} == {a.client_id, b.client_id}
    assert reply["data"]["stats"] == {"clients": 2, "users": 2}
    member = next(m for m in reply["data"]["members"] if m["clientId"] == b.client_id)
    assert set(member) == {"clientId", "username", "connectedAt", "info"}
    assert member["connectedAt"].endswith("Z") and member["info"] == {}
    wait_for(lambda: a.drain(0.2) or b.client_id in a.seen("joined"), message="joined b")
    assert b.request({"type": "info", "data": {"status": "away"}})["data"] == {"ok": True}
    wait_for(lambda: a.drain(0.2) or b.client_id in a.seen("updated"), message="updated b")
    assert next(m for m in a.who()["members"] if m["clientId"] == b.client_id)["info"] == \
        {"status": "away"}
    b.close()
    wait_for(lambda: a.drain(0.2) or b.client_id in a.seen("left"), message="left b")
    assert [m["clientId"] for m in a.who()["members"]] == [a.client_id]
    a.close()


def test_get_stats_shows_the_presence_batching(single):
    """``ws.get_stats()["presence"]``: members held here, event frames sent (batched) and
    the batch interval."""
    path = room("stats")
    a = Client(single, path)
    b = Client(single, path)
    wait_for(lambda: a.drain(0.2) or b.client_id in a.seen("joined"), message="joined b")
    stats = single.http().get("/_test/stats")["presence"]
    assert stats["localMembers"] >= 2 and stats["framesSent"] >= 1
    assert stats["batchInterval"] == BATCH and stats["reaped"] == 0
    a.close()
    b.close()


def test_non_presence_namespace_has_no_presence_flag(single):
    """A namespace without presence=True: no flag in the welcome, ``_presence`` refused."""
    c = WSTestClient(single.ws_url("/api/1/ws/echo"))
    welcome = c.receive(type="connected")
    assert "presence" not in welcome["data"]["data"]
    c.send({"type": "_presence", "requestId": "x"})
    reply = c.receive(match=lambda m: m.get("requestId") == "x")
    assert reply["success"] is False
    c.close()


def test_presence_requests_count_against_the_rate_window(single):
    """``_presence`` costs a member list: a flood of them is rate limited like any
    message (50 per second by default), and the connection stays usable."""
    c = WSTestClient(single.ws_url(room("presence-flood")))
    c.receive(type="connected")
    for i in range(60):
        c.send({"type": "_presence", "requestId": f"p{i}"})
    replies = [c.receive(match=lambda m, i=i: m.get("requestId") == f"p{i}")
               for i in range(60)]
    limited = [r for r in replies if r.get("code") == "RATE_LIMIT_EXCEEDED"]
    answered = [r for r in replies if r.get("success") is True]
    assert len(answered) == 50 and len(limited) == 10
    assert all("members" in r["data"] for r in answered)
    c.close()


def test_python_client_keeps_its_member_map_in_step(single):
    """The Python client loads the members after the welcome and follows the batches."""
    path = room("python-client")
    events = []
    a = connect(single.ws_url(path), on_presence=events.append)
    b = None
    try:
        assert a.wait_connected(5)
        wait_for(lambda: [m["clientId"] for m in a.get_presence()] == [a.get_client_id()],
                 message="own member loaded")
        assert events[0]["snapshot"] is True
        b = connect(single.ws_url(path))
        assert b.wait_connected(5)
        both = {a.get_client_id(), b.get_client_id()}
        wait_for(lambda: {m["clientId"] for m in a.get_presence()} == both, message="b joined")
        wait_for(lambda: {m["clientId"] for m in b.get_presence()} == both, message="b's list")
        assert any(b.get_client_id() in [m["clientId"] for m in e["joined"]] for e in events)
        reply = a.presence()
        assert reply["success"] is True and reply["data"]["stats"]["clients"] == 2
        b.disconnect()
        wait_for(lambda: [m["clientId"] for m in a.get_presence()] == [a.get_client_id()],
                 message="b left")
        assert any(b.get_client_id() in [m["clientId"] for m in e["left"]] for e in events)
    finally:
        a.disconnect()
        if b is not None:
            b.disconnect()


@pytest.mark.cluster
def test_redis_outage_answers_with_own_members_marked_partial():
    """Redis killed: the reply lists this worker's members at once, with partial: true."""
    redis = RedisServer().start()
    srv = GunicornServer(app=APP, settings={
        "JPULSE_WS_REDIS_URL": redis.url, "JPULSE_WS_PRESENCE_TTL": TTL,
        "JPULSE_WS_PRESENCE_BATCH": BATCH}).start()
    try:
        path = room("outage")
        a, b = Client(srv, path), Client(srv, path)
        reply = a.request({"type": "_presence"})["data"]
        assert "partial" not in reply and len(reply["members"]) == 2
        redis.kill()
        wait_for(lambda: a.request({"type": "_presence"}, timeout=3)["data"].get("partial"),
                 message="a partial answer")
        started = time.monotonic()
        reply = a.request({"type": "_presence"})["data"]
        assert time.monotonic() - started < 0.5  # the open circuit skips Redis
        assert reply["partial"] is True
        assert {m["clientId"] for m in reply["members"]} == {a.client_id, b.client_id}
        a.close()
        b.close()
    finally:
        srv.stop()
        redis.stop()


@pytest.mark.cluster
def test_members_appear_on_every_worker_and_leaving_removes_them(cluster):
    """Clients joining on three workers are listed by each worker; leavers disappear."""
    clients = open_spread(cluster, room("spread-list"), 9)
    try:
        ids_everywhere(clients, {c.client_id for c in clients})
        leaving = one_per_worker(clients)  # one client from each worker leaves
        for c in leaving:
            c.close()
        staying = [c for c in clients if c not in leaving]
        ids_everywhere(staying, {c.client_id for c in staying})
        gone = {c.client_id for c in leaving}
        for c in one_per_worker(staying):  # every worker told its clients who left
            wait_for(lambda c=c: c.drain(0.2) or gone <= set(c.seen("left")),
                     message="left events")
    finally:
        for c in clients:
            c.close()


@pytest.mark.cluster
def test_presence_stats_count_users_not_tabs(cluster):
    """alice with 3+ tabs on at least two workers, bob with 2 and one anonymous client:
    every worker counts 3 users, however many tabs."""
    path = room("spread-users")
    sessions = {}
    for name in ("alice", "bob"):
        http = cluster.http()
        http.post(f"/_test/login/{name}")
        sessions[name] = {"Cookie": http.cookie_header()}

    def open_parallel(headers):
        with ThreadPoolExecutor(6) as pool:
            return list(pool.map(lambda h: Client(cluster, path, h), headers))

    clients = open_parallel([sessions["alice"]] * 3 + [sessions["bob"]] * 2 + [None])
    try:
        # One user's tabs must be held by different workers, or the count proves
        # nothing about de-duplication across processes: more tabs until they are.
        deadline = time.monotonic() + 10
        while len({c.pid for c in clients[:3]} |
                  {c.pid for c in clients[6:]}) < 2 and time.monotonic() < deadline:
            clients += open_parallel([sessions["alice"]] * 3)
        alice = clients[:3] + clients[6:]
        assert len({c.pid for c in alice}) >= 2, Counter(c.pid for c in alice)
        n = len(clients)
        assert Counter(c.request({"type": "whoami"})["data"]["username"]
                       for c in clients) == {"alice": len(alice), "bob": 2, "": 1}
        ids_everywhere(clients, {c.client_id for c in clients})
        for c in one_per_worker(clients):
            assert c.who()["stats"] == {"clients": n, "users": 3}
        server_side = cluster.http().get(f"/_test/presence?path={path}")
        assert server_side["stats"] == {"clients": n, "users": 3}
        assert sorted(m["username"] for m in server_side["members"]) == \
            [""] + ["alice"] * len(alice) + ["bob", "bob"]
    finally:
        for c in clients:
            c.close()


def _info_of(c, client_id):
    return next(m["info"] for m in c.who()["members"] if m["clientId"] == client_id)


@pytest.mark.cluster
def test_presence_info_is_limited_to_1_kib_and_reaches_every_worker(cluster):
    """``set_presence_info``: a 1024-byte info is listed with the member by every worker
    and announced as ``updated``; 1025 bytes, or not a dict, is refused (BAD_INFO) and
    leaves the listed info as it was."""
    clients = open_spread(cluster, room("info"), 3)
    try:
        a = clients[0]
        others = [c for c in one_per_worker(clients) if c.pid != a.pid]
        ids_everywhere(clients, {c.client_id for c in clients})
        for c in others:
            c.drain(2 * BATCH)  # the joins are announced first
            c.batches.clear()
        largest = {"p": "x" * 1016}
        assert len(json.dumps(largest, separators=(",", ":"))) == 1024
        assert a.request({"type": "info", "data": largest})["data"] == {"ok": True}
        for c in others:  # on the other workers: in the list and in an `updated` batch
            wait_for(lambda c=c: _info_of(c, a.client_id) == largest, timeout=5,
                     interval=0.1, message=f"a's info listed by worker {c.pid}")
            wait_for(lambda c=c: c.drain(0.2) or a.client_id in c.seen("updated"),
                     message="updated event")
            [update] = [m for b in c.batches for m in b.get("updated", ())
                        if m["clientId"] == a.client_id]
            assert update["info"] == largest
        for bad in ({"p": "x" * 1017}, ["not", "a", "dict"], "text"):
            reply = a.request({"type": "info", "data": bad})
            assert reply["success"] is False and reply["code"] == "BAD_INFO", reply
        assert "1024 bytes" in a.request({"type": "info", "data": {"p": "x" * 2000}})["error"]
        assert _info_of(a, a.client_id) == largest  # its own worker kept the old info
        # A valid change after the refused ones: once the other workers list it, any
        # announcement of a refused info would have come before it.
        back = {"status": "back"}
        assert a.request({"type": "info", "data": back})["data"] == {"ok": True}
        for c in others:
            wait_for(lambda c=c: _info_of(c, a.client_id) == back, timeout=5, interval=0.1,
                     message=f"a's new info listed by worker {c.pid}")
            wait_for(lambda c=c: c.drain(0.2) or
                     {"status": "back"} in [m["info"] for b in c.batches
                                            for m in b.get("updated", ())],
                     message="the second updated event")
            infos = [m["info"] for b in c.batches for m in b.get("updated", ())
                     if m["clientId"] == a.client_id]
            assert infos == [largest, back], infos
    finally:
        for c in clients:
            c.close()


@pytest.mark.cluster
def test_burst_of_500_joins_is_batched(cluster):
    """500 clients joining at once reach each watcher in a few frames, not 500."""
    path = room("burst")
    watchers = open_spread(cluster, path, 3)
    watchers = one_per_worker(watchers)
    for w in watchers:
        w.drain(2 * BATCH)  # the watchers' own joins are announced first
        w.batches.clear()
    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        joiners = list(pool.map(lambda _: WSTestClient(cluster.ws_url(path)), range(500)))
    opened = time.monotonic() - started
    try:
        for w in watchers:
            wait_for(lambda w=w: w.drain(0.2) or len(set(w.seen("joined"))) >= 500,
                     timeout=15, message="500 joins seen")
        span = time.monotonic() - started
        counts = [len(w.batches) for w in watchers]
        # One frame per namespace per tick on each worker, whatever the burst.
        limit = span / BATCH + 3
        print(f"\n500 joins opened in {opened:.2f} s, seen by every watcher within "
              f"{span:.2f} s; _presence frames per watcher: {counts} (limit {limit:.0f})")
        assert all(n <= limit for n in counts), counts
        assert all(len(w.seen("joined")) == 500 for w in watchers)  # each join once
    finally:
        for j in joiners:
            j.close()
    for w in watchers:
        w.batches.clear()
    for w in watchers:
        wait_for(lambda w=w: w.drain(0.2) or len(set(w.seen("left"))) >= 500,
                 timeout=15, message="500 leaves seen")
        assert len(w.batches) <= 20
    assert len(watchers[0].who()["members"]) == len(watchers)
    for w in watchers:
        w.close()


@pytest.mark.cluster
def test_killed_worker_loses_its_members_everywhere_within_ttl(cluster):
    """SIGKILL a worker: its members expire, one survivor reaps them, all hear `left`."""
    clients = open_spread(cluster, room("spread-kill"), 9)
    victim = clients[0].pid
    doomed = {c.client_id for c in clients if c.pid == victim}
    survivors = [c for c in clients if c.pid != victim]
    ids_everywhere(clients, {c.client_id for c in clients})
    for c in survivors:
        c.drain(2 * BATCH)
        c.batches.clear()
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    try:
        ids_everywhere(survivors, {c.client_id for c in survivors}, timeout=TTL * 3)
        took = time.monotonic() - killed_at
        print(f"\nmembers of the killed worker gone everywhere after {took:.2f} s "
              f"(TTL {TTL} s, refresh every {TTL / 3:.2f} s)")
        assert took <= TTL + TTL / 3 + 1.5
        for c in survivors:  # each dead member announced exactly once to each survivor
            wait_for(lambda c=c: c.drain(0.2) or doomed <= set(c.seen("left")),
                     message="left events for the dead worker's members")
            c.drain(2 * BATCH)
            assert Counter(c.seen("left")) == {cid: 1 for cid in doomed}
    finally:
        for c in clients:
            c.close()
