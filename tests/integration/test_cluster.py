"""Multi-worker fan-out over Redis: ``gunicorn -k gevent -w 3`` and private redis-servers.

Clients are opened in parallel; the cluster app holds each worker's loop for 20 ms in
``on_connect``, so the parallel handshakes spread over all three workers (checked).
"""

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_py
from servers import GunicornServer, RedisServer, SentinelServer, run_python, wait_for

from flask_jpulse_ws.testing import ConnectionClosedError, WSTestClient

APP = "cluster_app:create_app()"
NS = "/api/1/ws/cluster"
WORKERS = 3


def start_cluster(redis_url, **settings):
    srv = GunicornServer(app=APP, workers=WORKERS,
                         settings={"JPULSE_WS_REDIS_URL": redis_url, **settings}).start()
    wait_for(lambda: len(srv.worker_pids()) == WORKERS, message="three workers")
    return srv


@pytest.fixture(scope="module")
def cluster(relay_url):
    srv = start_cluster(relay_url)
    yield srv
    srv.stop()


class Client:
    """A test client, the pid of the worker that holds it, its id and resume token."""

    def __init__(self, ws, pid, client_id, token=None):
        self.ws, self.pid, self.client_id, self.token = ws, pid, client_id, token

    def request(self, message, timeout=5):
        return self.ws.request(message, timeout=timeout)


def _open(server, path, headers=None, client_id=None, resume=None):
    query = f"?uuid={client_id}" if client_id else ""
    query += f"&resume={resume}" if client_id and resume else ""
    ws = WSTestClient(server.ws_url(path + query), headers=headers)
    token = ws.receive(type="connected")["data"]["data"]["resumeToken"]
    who = ws.request({"type": "whoami"})["data"]
    return Client(ws, who["pid"], who["clientId"], token)


def open_spread(server, n, path=NS, headers=None, workers=WORKERS):
    """``n`` clients opened in parallel, spread over ``workers`` workers (checked).

    A worker that is still booting takes no connection: more parallel batches are
    opened until every worker holds a client.
    """
    def batch(k):
        with ThreadPoolExecutor(10) as pool:
            return list(pool.map(lambda _: _open(server, path, headers), range(k)))

    clients = batch(n)
    deadline = time.monotonic() + 10
    while len({c.pid for c in clients}) < workers and time.monotonic() < deadline:
        clients += batch(6)
    assert len({c.pid for c in clients}) >= workers, Counter(c.pid for c in clients)
    return clients


def close_all(clients):
    for c in clients:
        c.ws.close()


def frames_of(client, msg_type, count, timeout=5.0):
    """The next ``count`` data values of type ``msg_type`` (other types skipped)."""
    return [client.ws.receive(type=msg_type, timeout=timeout)["data"]["data"]
            for _ in range(count)]


def collect(client, counts, timeout=5.0):
    """Data values by type until ``counts[type]`` of each have arrived."""
    got = {t: [] for t in counts}
    deadline = time.monotonic() + timeout
    while any(len(got[t]) < n for t, n in counts.items()):
        data = client.ws.receive(timeout=max(0.0, deadline - time.monotonic()))["data"]
        if isinstance(data, dict) and data.get("type") in got:
            got[data["type"]].append(data["data"])
    return got


def no_more(client, *msg_types):
    """Nothing of ``msg_types`` is left for ``client``: its own marker broadcast (sent
    after, relayed in order) arrives before any such frame. Other clients' markers
    are skipped."""
    marker = f"marker-{time.monotonic_ns()}"
    client.ws.send({"type": "seq", "data": marker})
    while True:
        data = client.ws.receive(timeout=5)["data"]
        if not isinstance(data, dict):
            continue
        if data.get("type") == "seq" and data["data"] == marker:
            return True
        if data.get("type") in msg_types and not str(data["data"]).startswith("marker-"):
            return False


@pytest.mark.cluster
def test_broadcast_reaches_every_client_once_in_order(cluster):
    """30 clients on 3 workers: every broadcast from every worker arrives once, in order."""
    clients = open_spread(cluster, 30)
    try:
        spread = Counter(c.pid for c in clients)
        assert len(spread) == WORKERS and sum(spread.values()) >= 30
        senders = {}
        for c in clients:
            senders.setdefault(c.pid, c)  # one sender on each worker
        for i in range(20):
            for pid, sender in senders.items():
                sender.ws.send({"type": "seq", "data": [pid, i]})
        for c in clients:
            got = frames_of(c, "seq", 20 * WORKERS)
            for pid in senders:
                assert [i for p, i in got if p == pid] == list(range(20)), (c.pid, pid)
        # Nothing twice: no client has a late copy of any of them (frames_of below
        # would skip one silently).
        assert [c.pid for c in clients if not no_more(c, "seq")] == []
        # A REST burst from whichever worker takes the request: same guarantee.
        cluster.http().post("/_test/burst", {"path": NS, "count": 50})
        for c in clients:
            assert [d["seq"] for d in frames_of(c, "burst", 50)] == list(range(50))
        assert [c.pid for c in clients if not no_more(c, "seq", "burst")] == []
    finally:
        close_all(clients)


@pytest.mark.cluster
def test_send_to_client_held_by_another_worker(cluster):
    """``send_to_client`` reaches a client on another worker exactly once."""
    clients = open_spread(cluster, 9)
    try:
        a = clients[0]
        b = next(c for c in clients if c.pid != a.pid)
        reply = a.request({"type": "dm", "to": b.client_id, "data": "hello"})["data"]
        assert reply == {"local": False, "pid": a.pid}
        assert b.ws.receive(type="dm")["data"]["data"] == "hello"
        # From a REST handler on any worker too.
        cluster.http().post("/_test/send", {"path": NS, "clientId": b.client_id,
                                            "data": {"type": "dm", "data": "rest"}})
        assert b.ws.receive(type="dm")["data"]["data"] == "rest"
        for other in clients:
            if other is not b:
                assert no_more(other, "dm")
    finally:
        close_all(clients)


def _open_elsewhere(server, pid, client_id, headers=None, resume=None, tries=40):
    """A client asking for ``client_id`` that lands on a worker other than ``pid``."""
    for _ in range(tries):
        c = _open(server, NS, headers=headers, client_id=client_id, resume=resume)
        if c.pid != pid:
            return c
        c.ws.close()
    raise AssertionError(f"every connection landed on worker {pid}")


@pytest.mark.cluster
def test_a_client_id_held_on_another_worker_is_not_given_to_another_identity(cluster):
    """The per-process rule holds across workers: an id held elsewhere is refused to
    another identity (fresh id, nothing of the owner's reaches it), even one that holds
    its resume token, kept for the same identity, and free again once its holders have
    left."""
    owner = _open(cluster, NS)
    stranger = {"User-Agent": "someone-else/1.0"}  # anonymous identity: IP + User-Agent
    thief = _open_elsewhere(cluster, owner.pid, owner.client_id, headers=stranger,
                            resume=owner.token)
    assert thief.client_id != owner.client_id
    cluster.http().post("/_test/send", {"path": NS, "clientId": owner.client_id,
                                        "data": {"type": "dm", "data": "private"}})
    assert owner.ws.receive(type="dm")["data"]["data"] == "private"
    assert no_more(thief, "dm")
    twin = _open_elsewhere(cluster, owner.pid, owner.client_id,  # same identity
                           resume=owner.token)
    assert twin.client_id == owner.client_id
    thief.ws.close()
    owner.ws.close()
    twin.ws.close()

    def free_again():
        c = _open(cluster, NS, headers=stranger, client_id=owner.client_id,
                  resume=owner.token)
        c.ws.close()
        return c.client_id == owner.client_id
    wait_for(free_again, timeout=5, message="the claim released after its holders left")


@pytest.mark.cluster
def test_a_client_id_without_its_resume_token_is_not_kept_on_another_worker(cluster):
    """Behind one NAT with the same browser (same IP, same User-Agent: one anonymous
    identity), a client that copies another's id (presence lists show it) but not its
    resume token gets a fresh id on another worker, and neither the owner's directed
    messages nor its server requests reach it; the owner keeps its id."""
    owner = _open(cluster, NS)
    copier = _open_elsewhere(cluster, owner.pid, owner.client_id)
    assert copier.client_id != owner.client_id
    cluster.http().post("/_test/send", {"path": NS, "clientId": owner.client_id,
                                        "data": {"type": "dm", "data": "private"}})
    assert owner.ws.receive(type="dm")["data"]["data"] == "private"
    assert no_more(copier, "dm")
    asked = cluster.http().post("/_test/ask", {"path": NS, "clientId": owner.client_id,
                                               "data": {"type": "question"}, "timeout": 1})
    assert owner.ws.receive(type="question")  # to the owner only: it does not answer
    assert asked["result"]["code"] == "REQUEST_TIMEOUT"
    assert no_more(copier, "question")
    assert owner.request({"type": "whoami"})["data"]["clientId"] == owner.client_id
    owner.ws.close()
    copier.ws.close()


def reply_to(client, request_id, timeout=5.0):
    """The reply frame to ``client``'s message ``request_id`` (other frames skipped)."""
    return client.ws.receive(timeout=timeout, match=lambda m: m.get("requestId") == request_id)


def answer_question(client, reply):
    """Wait for the server's question to ``client`` and answer it with ``reply``."""
    question = client.ws.receive(type="question")
    assert question["requestId"]
    client.ws.send({**reply, "requestId": question["requestId"]})
    return question["data"]


@pytest.mark.cluster
def test_request_to_a_client_held_by_another_worker(cluster):
    """``ns.request`` reaches a client on another worker; its reply, or its error
    reply, comes back to the asking handler."""
    clients = open_spread(cluster, 9)
    try:
        a = clients[0]
        b = next(c for c in clients if c.pid != a.pid)
        a.ws.send({"type": "ask", "to": b.client_id, "data": {"q": 1}, "requestId": "r1"})
        question = answer_question(b, {"type": "answer", "v": 42})
        assert question["data"] == {"q": 1}
        answer = reply_to(a, "r1")
        assert answer["data"]["pid"] == a.pid != b.pid
        result = answer["data"]["result"]
        assert result["success"] is True and result["data"]["v"] == 42
        a.ws.send({"type": "ask", "to": b.client_id, "requestId": "r2"})
        answer_question(b, {"success": False, "error": "no way", "code": "NOPE"})
        result = reply_to(a, "r2")["data"]["result"]
        assert (result["success"], result["code"], result["error"]) == (False, "NOPE", "no way")
        # From a REST handler, on whichever worker takes it.
        http = cluster.http()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(http.post, "/_test/ask",
                                  {"path": NS, "clientId": b.client_id,
                                   "data": {"type": "question", "data": "rest"}})
            assert answer_question(b, {"type": "answer", "v": "from-b"})["data"] == "rest"
            rest = pending.result(timeout=10)
        assert rest["result"]["success"] is True and rest["result"]["data"]["v"] == "from-b"
        for other in clients:
            if other is not b:
                assert no_more(other, "question")
    finally:
        close_all(clients)


@pytest.mark.cluster
def test_request_to_another_worker_fails_cleanly(cluster):
    """Nobody holds the id: NOT_CONNECTED without waiting the whole timeout; a client
    that does not answer: REQUEST_TIMEOUT; one that leaves while asked: CONNECTION_LOST."""
    clients = open_spread(cluster, 9)
    try:
        a = clients[0]
        b = next(c for c in clients if c.pid != a.pid)
        t0 = time.monotonic()
        reply = a.request({"type": "ask", "to": "nobody-has-this-id", "timeout": 20},
                          timeout=15)["data"]
        assert reply["result"]["code"] == "NOT_CONNECTED"
        assert time.monotonic() - t0 < 10  # the accept wait, not the 20 s timeout
        reply = a.request({"type": "ask", "to": b.client_id, "timeout": 0.5})["data"]
        assert reply["result"]["code"] == "REQUEST_TIMEOUT"
        b.ws.receive(type="question")  # it was asked, and kept quiet
        a.ws.send({"type": "ask", "to": b.client_id, "timeout": 10, "requestId": "r3"})
        b.ws.receive(type="question")
        b.ws.close()
        result = reply_to(a, "r3", timeout=8)["data"]["result"]
        assert result["code"] == "CONNECTION_LOST"
        assert a.request({"type": "whoami"})["data"]["pid"] == a.pid  # a is unaffected
    finally:
        close_all(clients)


@pytest.mark.cluster
def test_rest_broadcast_to_a_room_with_no_local_member(cluster):
    """A REST broadcast on a worker that never saw the room reaches its members."""
    room = f"/api/1/ws/cluster-rooms/solo-{os.getpid()}"
    member = _open(cluster, room)
    try:
        http = cluster.http()

        def post(i):  # parallel and busy for 50 ms: the requests spread over workers
            return http.post("/_test/broadcast-pid",
                             {"path": room, "spin": 0.05, "data": {"type": "news", "data": i}})

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(post, range(12)))
        remote = [a for a in answers if a["pid"] != member.pid]
        assert remote, "every request landed on the member's worker"
        assert all(a["local"] == 0 for a in remote)
        got = frames_of(member, "news", 12)
        assert sorted(got) == list(range(12))
        assert no_more(member, "news")
    finally:
        member.ws.close()


@pytest.mark.cluster
def test_logout_closes_that_session_on_every_worker(cluster):
    """``logout_user()`` on one worker closes the session's sockets everywhere with 4401."""
    session, other_session = cluster.http(), cluster.http()
    session.post("/_test/login/alice")
    other_session.post("/_test/login/alice")
    mine = open_spread(cluster, 9, "/api/1/ws/cluster-secure",
                       {"Cookie": session.cookie_header()}, workers=2)
    theirs = open_spread(cluster, 6, "/api/1/ws/cluster-secure",
                         {"Cookie": other_session.cookie_header()}, workers=2)
    try:
        assert {c.request({"type": "whoami"})["data"]["username"] for c in mine} == {"alice"}
        t0 = time.monotonic()
        session.post("/_test/logout")
        codes = [c.ws.wait_closed(timeout=2) for c in mine]
        assert codes == [4401] * len(mine)
        assert time.monotonic() - t0 < 1.0
        for c in theirs:  # the same user's other browser session stays open
            assert c.request({"type": "whoami"})["data"]["username"] == "alice"
    finally:
        close_all(mine + theirs)


@pytest.mark.cluster
def test_remove_namespace_closes_its_clients_on_every_worker(cluster):
    """``ws.remove_namespace`` on one worker closes the room's clients everywhere (4404)."""
    room = f"/api/1/ws/cluster-rooms/doomed-{os.getpid()}"
    clients = open_spread(cluster, 9, room)
    try:
        cluster.http().post("/_test/remove", {"path": room})
        assert [c.ws.wait_closed(timeout=3) for c in clients] == [4404] * len(clients)
    finally:
        close_all(clients)


@pytest.mark.cluster
def test_emitter_from_a_plain_python_process(cluster, relay_url):
    """A script without Flask app or gevent broadcasts and sends to one client."""
    clients = open_spread(cluster, 6)
    try:
        target = clients[-1]
        script = f"""
import sys
from flask_jpulse_ws import Emitter
assert "gevent" not in sys.modules
with Emitter({relay_url!r}, channel_prefix="another-app") as other:
    other.broadcast({NS!r}, {{"type": "news", "data": "not for us"}})
with Emitter({relay_url!r}) as e:
    print(e.broadcast({NS!r}, {{"type": "news", "data": "from cron"}}))
    e.send_to_client({NS!r}, {target.client_id!r}, {{"type": "dm", "data": "just you"}})
assert "gevent" not in sys.modules
"""
        assert run_python(script, timeout=20) == str(WORKERS)  # every worker is subscribed
        for c in clients:  # the other prefix's message never arrives, and it was first
            message = c.ws.receive(type="news")["data"]
            assert message["data"] == "from cron" and message["ctx"] == {"username": ""}
        assert target.ws.receive(type="dm")["data"]["data"] == "just you"
        assert all(no_more(c, "dm") for c in clients[:-1])
    finally:
        close_all(clients)


@pytest.mark.cluster
def test_cluster_stats_list_every_worker(cluster):
    """``ws.get_stats(cluster=True)`` merges one row per worker plus totals."""
    clients = open_spread(cluster, 9)
    try:
        pids = set(cluster.worker_pids())

        def merged():
            # One snapshot must show it all: a worker's row can be older than its joins
            # (rows are refreshed every 2 s), and admission counts a socket before it
            # joins its namespace.
            stats = cluster.http().get("/_test/cluster-stats")["cluster"]
            in_ns = [n for n in stats["namespaces"] if n["path"] == NS]
            ok = ({r["pid"] for r in stats["instances"]} == pids
                  and stats["totals"]["connections"] == len(clients)
                  and in_ns and in_ns[0]["clients"] == len(clients))
            return stats if ok else None

        stats = wait_for(merged, timeout=10, message="three instances with all clients")
        assert stats["totals"]["instances"] == WORKERS
        for row in stats["instances"]:
            assert set(row) >= {"instanceId", "pid", "host", "started", "connections",
                                "namespaces"}
        [ns] = [n for n in stats["namespaces"] if n["path"] == NS]
        assert ns == {"path": NS, "clients": len(clients), "instances": WORKERS}
    finally:
        close_all(clients)


@pytest.mark.cluster
def test_redis_outage_keeps_local_delivery_and_resyncs():
    """Redis SIGKILLed mid-stream: workers live, local clients keep receiving, relaying
    resumes within 2 s of the restart and every client receives ``_resync``."""
    redis = RedisServer().start()
    server = start_cluster(redis.url)
    clients = []
    try:
        clients = open_spread(server, 9)
        pids = set(server.worker_pids())
        sender = _open(server, NS)  # not checked: request() skips what it is not waiting for
        clients.append(sender)
        local = [c for c in clients[:-1] if c.pid == sender.pid]
        remote = [c for c in clients if c.pid != sender.pid]
        seq = 0

        def send():
            nonlocal seq
            t0 = time.monotonic()
            sender.request({"type": "seq", "data": seq})  # replied after local delivery
            assert time.monotonic() - t0 < 0.5, "the worker blocked on Redis"
            seq += 1

        for _ in range(10):
            send()
        for c in local + remote:
            assert frames_of(c, "seq", 10) == list(range(10))

        redis.kill()
        for c in {c.pid: c for c in clients}.values():  # every worker notices
            wait_for(lambda c=c: c.request({"type": "relay"})["data"]["degraded"],
                     timeout=3, message=f"worker {c.pid} degraded")
            # ... and says so in its public stats too.
            assert c.request({"type": "stats"})["data"]["degraded"] is True, c.pid
        assert server.http().get("/_test/stats")["relay"]["degraded"] is True
        for _ in range(20):
            send()
        for c in local:
            assert frames_of(c, "seq", 20) == list(range(10, 30))
        # A request to a client on another worker cannot travel: it fails at once.
        t0 = time.monotonic()
        asked = sender.request({"type": "ask", "to": remote[0].client_id, "timeout": 5})
        assert asked["data"]["result"]["code"] == "NOT_CONNECTED"
        assert time.monotonic() - t0 < 1.5, "waited for an accept that could not come"

        redis = RedisServer(port=redis.port).start()
        restarted = time.monotonic()
        first_after = seq

        def resumed():  # keep streaming until every remote client has a new one
            send()
            return all(c.pid in resumed_pids for c in remote)

        resumed_pids = set()
        received = {id(c): [] for c in remote}
        resyncs = Counter()

        def drain(c):
            # A short read per client: the poll loop must not add seconds to the
            # time it measures.
            for m in c.ws.receive_all(timeout=0.005):
                kind = m["data"]["type"]
                if kind == "_resync":
                    assert m["data"]["data"] == {"reason": "relay-gap"}
                    resyncs[id(c)] += 1
                elif kind == "seq":
                    received[id(c)].append(m["data"]["data"])
                    if m["data"]["data"] >= first_after:
                        resumed_pids.add(c.pid)

        def poll():
            for c in remote:
                drain(c)
            return resumed()

        wait_for(poll, timeout=5, interval=0.05, message="remote delivery resumed")
        assert time.monotonic() - restarted < 2.0
        for c in remote:
            drain(c)
            got = received[id(c)]
            assert got == sorted(set(got)), "duplicate or out of order"
            assert resyncs[id(c)] >= 1 or c.ws.receive(type="_resync", timeout=2)
        for c in local:  # the sender's worker lost its subscription too: its _resync
            # comes when its subscriber is back, after what it delivered here meanwhile
            got = collect(c, {"_resync": 1, "seq": seq - 30})
            assert got["_resync"] == [{"reason": "relay-gap"}]
            assert got["seq"] == list(range(30, seq))
        assert set(server.worker_pids()) == pids, "a worker died"
        for c in {c.pid: c for c in clients}.values():
            status = c.request({"type": "relay"})["data"]
            assert status["degraded"] is False and status["outages"] >= 1
            public = c.request({"type": "stats"})["data"]  # ws.get_stats()["relay"]
            assert public["degraded"] is False and public["outages"] >= 1, c.pid
        public = server.http().get("/_test/stats")["relay"]
        assert public["degraded"] is False and public["outages"] >= 1
        log = server.log()
        assert "Redis relay degraded" in log and "Redis relay restored" in log
    finally:
        close_all(clients)
        server.stop()
        redis.stop()


def _sentinel_master_port(sentinel):
    with redis_py.Redis(port=sentinel.port, socket_timeout=2) as r:
        return int(r.sentinel_get_master_addr_by_name(sentinel.service)[1])


@pytest.mark.cluster
def test_relay_follows_a_sentinel_failover():
    """``redis+sentinel://``: relaying works through the master Sentinel names, and after
    the master is SIGKILLed and Sentinel promotes the replica, it resumes with a
    ``_resync`` to every client, nothing twice, no worker lost."""
    master = RedisServer().start()
    replica = RedisServer(args=["--replicaof", "127.0.0.1", str(master.port)]).start()
    sentinel = SentinelServer(master.port).start()
    server = None
    clients = []
    try:
        def replica_known():
            with redis_py.Redis(port=sentinel.port, socket_timeout=2) as r:
                return len(r.sentinel_slaves(sentinel.service)) == 1
        wait_for(replica_known, timeout=15, message="sentinel sees the replica")
        server = start_cluster(sentinel.url())
        clients = open_spread(server, 9)
        sender = clients[0]
        remote = [c for c in clients if c.pid != sender.pid]
        for i in range(5):
            sender.request({"type": "seq", "data": i})  # its own copies are skipped
        for c in clients[1:]:
            assert frames_of(c, "seq", 5) == list(range(5))

        master.kill()
        wait_for(lambda: _sentinel_master_port(sentinel) == replica.port, timeout=30,
                 interval=0.2, message="sentinel promoted the replica")
        received = {id(c): [] for c in remote}
        resynced = set()
        seq = 5

        def resumed():
            nonlocal seq
            sender.request({"type": "seq", "data": seq})
            seq += 1
            for c in remote:
                for m in c.ws.receive_all(timeout=0.005):
                    if m["data"]["type"] == "_resync":
                        resynced.add(id(c))
                    elif m["data"]["type"] == "seq":
                        received[id(c)].append(m["data"]["data"])
            return all(received[id(c)] for c in remote)

        wait_for(resumed, timeout=20, interval=0.1, message="relaying resumed after failover")
        for c in remote:
            got = received[id(c)]
            assert got == sorted(set(got)), "duplicate or out of order"
            assert id(c) in resynced or c.ws.receive(type="_resync", timeout=3)
        status = sender.request({"type": "relay"})["data"]
        assert status["degraded"] is False and status["outages"] >= 1
        assert len(set(server.worker_pids())) == WORKERS
    finally:
        close_all(clients)
        if server is not None:
            server.stop()
        for proc in (sentinel, replica, master):
            proc.stop()


def cut_after_resyncs_only(client, timeout=5.0):
    """Read until the connection ends; return its close code (1006: cut, no frame).

    A frame may come first: the only data frame the server sends unasked to a client
    of NS is ``_resync`` (a worker welcomes a client before its channel subscription is
    confirmed, within FOLLOW_WAIT, and resyncs it once confirmed, which a busy CI machine
    can push past the client's first request). Anything else fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = client.ws.receive(timeout=max(0.0, deadline - time.monotonic()))
        except ConnectionClosedError as closed:
            return closed.code
        assert message["data"]["type"] == "_resync", message


@pytest.mark.cluster
def test_killed_worker_clients_reconnect_and_nothing_is_delivered_twice(redis_server):
    """SIGKILL one worker: its clients reconnect to the others, each frame arrives once."""
    server = start_cluster(redis_server.url, JPULSE_WS_CHANNEL_PREFIX="kill-test")
    clients = []
    try:
        clients = open_spread(server, 30)
        victim = clients[0].pid
        orphans = [c for c in clients if c.pid == victim]
        survivors = [c for c in clients if c.pid != victim]
        os.kill(victim, signal.SIGKILL)
        for c in orphans:
            assert cut_after_resyncs_only(c) == 1006
        # Reconnect with the same ids, as the browser client does.
        with ThreadPoolExecutor(10) as pool:
            back = list(pool.map(lambda c: _open(server, NS, client_id=c.client_id,
                                                 resume=c.token), orphans))
        assert [c.client_id for c in back] == [c.client_id for c in orphans]
        assert victim not in {c.pid for c in back}
        clients = survivors + back
        for i in range(15):
            survivors[0].ws.send({"type": "seq", "data": i})
        server.http().post("/_test/burst", {"path": NS, "count": 15})
        for c in clients:
            got = collect(c, {"seq": 15, "burst": 15})
            assert got["seq"] == list(range(15))
            assert [d["seq"] for d in got["burst"]] == list(range(15))
            assert no_more(c, "seq")
        target = back[0]
        server.http().post("/_test/send", {"path": NS, "clientId": target.client_id,
                                           "data": {"type": "dm", "data": "once"}})
        assert target.ws.receive(type="dm")["data"]["data"] == "once"
        assert no_more(target, "dm")
    finally:
        close_all(clients)
        server.stop()


@pytest.mark.cluster
def test_redis_relay_refuses_unpatched_gevent():
    """Under gevent without a patched socket the relay refuses to start, saying why."""
    gevent = pytest.importorskip("gevent")
    from flask import Flask

    from flask_jpulse_ws import JPulseWS, concurrency

    if concurrency.using_gevent():  # pragma: no cover - this process is never patched
        pytest.skip("socket is monkey-patched in this process")
    app = Flask(__name__)
    app.config["JPULSE_WS_REDIS_URL"] = "redis://127.0.0.1:1/0"
    JPulseWS(app)
    backend = app.extensions["jpulse_ws"].backend
    with pytest.raises(RuntimeError, match="monkey-patch"):
        gevent.spawn(backend.start).get()


@pytest.mark.cluster
def test_send_to_user_reaches_every_socket_of_that_user_on_every_worker(cluster):
    """``ws.send_to_user``: all of alice's sockets, wherever they are, and nobody else;
    with ``path``, only her sockets in that namespace."""
    alice, bob = cluster.http(), cluster.http()
    alice.post("/_test/login/alice")
    bob.post("/_test/login/bob")
    hers = open_spread(cluster, 6, headers={"Cookie": alice.cookie_header()})
    his = open_spread(cluster, 3, headers={"Cookie": bob.cookie_header()}, workers=1)
    try:
        local = cluster.http().post("/_test/send-user", {
            "userId": "alice", "data": {"type": "dm", "data": "for alice"}})["local"]
        assert 0 <= local < len(hers)  # some are on other workers: not counted here
        for c in hers:
            assert c.ws.receive(type="dm")["data"]["data"] == "for alice"
        assert all(no_more(c, "dm") for c in his)
        cluster.http().post("/_test/send-user", {"userId": "alice", "path": "/api/1/ws/echo",
                                                 "data": {"type": "dm", "data": "elsewhere"}})
        assert all(no_more(c, "dm") for c in hers)  # none of hers is in /api/1/ws/echo
    finally:
        close_all(hers + his)



@pytest.mark.cluster
def test_a_logged_out_session_is_refused_on_every_worker_and_by_later_ones(cluster,
                                                                           relay_url):
    """Logout on one worker: a replay of the session's cookie is refused 4401 by every
    worker, and by a server started afterwards (it learns it from Redis)."""
    http = cluster.http()
    http.post("/_test/login/alice")
    stolen = {"Cookie": http.cookie_header()}
    http.post("/_test/logout")
    with ThreadPoolExecutor(6) as pool:  # in parallel: the replays land on every worker
        codes = list(pool.map(lambda _: WSTestClient(cluster.ws_url(NS), headers=stolen)
                              .wait_closed(), range(6)))
    assert codes == [4401] * 6
    later = start_cluster(relay_url)
    try:
        assert WSTestClient(later.ws_url(NS), headers=stolen).wait_closed() == 4401
        fresh = later.http()
        fresh.post("/_test/login/alice")
        c = WSTestClient(later.ws_url(NS), headers={"Cookie": fresh.cookie_header()})
        assert c.receive(type="connected")
        c.close()
    finally:
        later.stop()
