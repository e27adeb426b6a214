"""Interest routing over Redis: a worker listens only to the namespaces it holds clients
of (``cluster/interest.py``), with real ``gunicorn -k gevent -w 3`` workers and a private
redis-server.

Each worker's relay counters are read through a client it holds (the cluster app's
``relay`` message answers with ``backend.status()``).
"""

import pytest
import redis as redis_py
from servers import wait_for
from test_cluster import NS, close_all, open_spread, start_cluster

from flask_jpulse_ws import Emitter
from flask_jpulse_ws.cluster.keys import namespace_channel
from flask_jpulse_ws.cluster.remote_request import NOBODY_HOLDS_IT
from flask_jpulse_ws.testing import WSTestClient

pytestmark = pytest.mark.cluster

PREFIX = "interest"
ROOMS = "/api/1/ws/cluster-rooms/"
LINGER = 1.0


@pytest.fixture(scope="module")
def cluster(redis_server):
    srv = start_cluster(redis_server.url, JPULSE_WS_CHANNEL_PREFIX=PREFIX,
                        JPULSE_WS_UNSUBSCRIBE_LINGER=LINGER)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def one_per_worker(cluster):
    """A client in NS on every worker, to read that worker's relay counters."""
    clients = open_spread(cluster, 6)
    by_pid = {}
    for c in clients:
        by_pid.setdefault(c.pid, c)
    yield by_pid
    close_all(clients)


def relay_of(client):
    return client.request({"type": "relay"})["data"]


def listeners(redis_url, path):
    channel = namespace_channel(PREFIX, path)
    return redis_py.Redis.from_url(redis_url).pubsub_numsub(channel)[0][1]


def open_on_one_worker(server, path):
    ws = WSTestClient(server.ws_url(path))
    ws.receive(type="connected")
    pid = ws.request({"type": "whoami"})["data"]["pid"]
    return ws, pid


def test_subscribed_before_the_welcome(cluster, redis_server, one_per_worker):
    """Once a client has its welcome, its worker already listens to the namespace: a
    broadcast published right after it arrives, with no wait in between."""
    path = ROOMS + "fresh-room"
    assert listeners(redis_server.url, path) == 0
    ws, _ = open_on_one_worker(cluster, path)
    try:
        assert listeners(redis_server.url, path) == 1
        with Emitter(redis_server.url, channel_prefix=PREFIX) as emitter:
            assert emitter.broadcast(path, {"type": "first", "data": 1}) == 1
        assert ws.receive(type="first")["data"]["data"] == 1
    finally:
        ws.close()


def test_a_worker_without_clients_of_a_namespace_receives_nothing_for_it(
        cluster, redis_server, one_per_worker):
    """300 broadcasts to a room held on one worker: Redis delivers them to that worker
    only; the others' relays receive none of them."""
    path = ROOMS + "held-once"
    ws, holder = open_on_one_worker(cluster, path)
    try:
        before = {pid: relay_of(c) for pid, c in one_per_worker.items()}
        with Emitter(redis_server.url, channel_prefix=PREFIX) as emitter:
            reached = [emitter.broadcast(path, {"type": "n", "data": i}) for i in range(300)]
        assert set(reached) == {1}  # one process listens: the holder
        assert [ws.receive(type="n")["data"]["data"] for _ in range(300)] == list(range(300))
        after = {pid: relay_of(c) for pid, c in one_per_worker.items()}
        for pid in one_per_worker:
            got = after[pid]["received"] - before[pid]["received"]
            if pid == holder:
                assert got >= 300
            else:
                assert got == 0, (pid, before[pid], after[pid])
    finally:
        ws.close()


def test_the_last_client_leaving_unsubscribes_after_the_linger(cluster, redis_server,
                                                              one_per_worker):
    """While the linger lasts, messages for the room are dropped undecoded (counted as
    unrouted); then the worker unsubscribes and Redis sends it nothing more."""
    path = ROOMS + "left-behind"
    ws, holder = open_on_one_worker(cluster, path)
    watcher = one_per_worker[holder]
    ws.close()
    wait_for(lambda: relay_of(watcher)["interest"]["held"] == 1,  # only NS is held
             message="the room's last client gone")
    unrouted = relay_of(watcher)["unrouted"]
    with Emitter(redis_server.url, channel_prefix=PREFIX) as emitter:
        # Each broadcast that still reached the worker (linger not over) is dropped there.
        reached = sum(emitter.broadcast(path, {"type": "late", "data": i}) for i in range(20))
    wait_for(lambda: relay_of(watcher)["unrouted"] - unrouted == reached,
             message=f"{reached} broadcasts dropped before decoding")
    wait_for(lambda: listeners(redis_server.url, path) == 0, timeout=10 + LINGER,
             message="the unsubscription after the linger")


def test_a_request_to_a_path_nobody_holds_fails_without_waiting(cluster, one_per_worker):
    """PUBLISH answers how many processes listen: none means NOT_CONNECTED at once,
    not after the accept wait; a held path still waits for its holder."""
    reply = cluster.http().post("/_test/ask", {
        "path": ROOMS + "nobody-here", "clientId": "00000000-0000-4000-8000-000000000000",
        "data": {}, "timeout": 5})
    assert reply["result"]["code"] == "NOT_CONNECTED"
    assert reply["result"]["error"] == NOBODY_HOLDS_IT
    reply = cluster.http().post("/_test/ask", {
        "path": NS, "clientId": "00000000-0000-4000-8000-000000000000",
        "data": {}, "timeout": 5})
    assert reply["result"]["code"] == "NOT_CONNECTED"
    assert reply["result"]["error"] != NOBODY_HOLDS_IT  # listened to: the accept wait
