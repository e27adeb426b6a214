"""The relay on a real Redis Cluster: 6 redis-server nodes (3 masters, 3 replicas) on
free ports, and ``gunicorn -k gevent -w 3`` workers given ``redis+cluster://``.

Rooms are chosen so that their channels live on different masters; each worker's relay
status is read through a client it holds (the cluster app's ``relay`` message).
"""

import threading
import time

import pytest
import redis as redis_py
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry
from servers import GunicornServer, RedisClusterServers, wait_for
from test_cluster import APP, WORKERS, close_all, open_spread

from flask_jpulse_ws import Emitter
from flask_jpulse_ws.cluster.keys import namespace_channel
from flask_jpulse_ws.testing import WSTestClient

pytestmark = pytest.mark.cluster

PREFIX = "rc"
ROOMS = "/api/1/ws/cluster-rooms/"


#: The clients read only after the traffic: no pings meanwhile (a pong timeout).
QUIET = {"JPULSE_WS_PING_INTERVAL": 60, "JPULSE_WS_PONG_TIMEOUT": 60}


def slot_of_room(room):
    return key_slot(namespace_channel(PREFIX, ROOMS + room).encode())


@pytest.fixture(scope="module")
def redis_cluster(redis_cluster_nodes):
    """The session's cluster (a migrated slot harms no other test); the failover tests
    start clusters of their own."""
    return redis_cluster_nodes


def start_server(url, **settings):
    srv = GunicornServer(app=APP, workers=WORKERS,
                         settings={"JPULSE_WS_REDIS_URL": url,
                                   "JPULSE_WS_CHANNEL_PREFIX": PREFIX, **settings}).start()
    wait_for(lambda: len(srv.worker_pids()) == WORKERS, message="three workers")
    return srv


@pytest.fixture(scope="module")
def server(redis_cluster):
    srv = start_server(redis_cluster.url)
    yield srv
    srv.stop()


def rooms_on_every_master(nodes, count=2):
    """``count`` room names per master, by the master serving each room's slot now."""
    by_port = {}
    n = 0
    while len(by_port) < len(nodes.master_ports()) or \
            any(len(v) < count for v in by_port.values()):
        room = f"r{n}"
        n += 1
        rooms = by_port.setdefault(nodes.port_of_slot(slot_of_room(room)), [])
        if len(rooms) < count:
            rooms.append(room)
    return by_port


def open_rooms(server, rooms, per_room=WORKERS * 2):
    """Clients of every room spread over every worker."""
    return {room: open_spread(server, per_room, path=ROOMS + room) for room in rooms}


def assert_reaches_everyone(clients_by_room, sender_room=None, timeout=10.0):
    for room, clients in clients_by_room.items():
        if sender_room is not None and room != sender_room:
            continue
        marker = f"{room}-{time.monotonic()}"
        clients[0].ws.send({"type": "seq", "data": marker})
        for c in clients:
            got = c.ws.receive(type="seq", timeout=timeout)["data"]["data"]
            assert got == marker, (room, c.pid)


def drain_types(client, seconds=0.3):
    """Types of every frame that arrives within ``seconds``."""
    return [m.get("data", {}).get("type") for m in client.ws.receive_all(seconds)]


class Traffic:
    """Numbered broadcasts to each room from an ``Emitter`` (a plain process's view),
    every 20 ms per room, in a thread; a seq counts as published only when the
    ``SPUBLISH`` returned (one that raised was never sent)."""

    def __init__(self, url, rooms):
        self.url, self.rooms = url, rooms
        self.published = {room: [] for room in rooms}
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        emitter = Emitter(self.url, channel_prefix=PREFIX, timeout=1.0)
        seq = 0
        while not self._stop.is_set():
            seq += 1
            for room in self.rooms:
                try:
                    emitter.broadcast(ROOMS + room, {"type": "n", "data": seq})
                    self.published[room].append(seq)
                except Exception:  # noqa: BLE001 - the shard is failing over
                    self.failures += 1
            time.sleep(0.02)
        emitter.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def check_stream(client, published, quiet=0.5):
    """What one client got of a room's numbered stream (read until ``quiet`` seconds
    pass without a frame): in order, never twice, and a missing seq only before a
    ``_resync`` it was sent (no silent gap)."""
    events = []
    while True:
        try:
            message = client.ws.receive(timeout=quiet)
        except TimeoutError:
            break
        kind = message["data"]["type"]
        if kind == "n":
            events.append(message["data"]["data"])
        elif kind == "_resync":
            events.append("resync")
    seqs = [e for e in events if e != "resync"]
    assert seqs == sorted(set(seqs)), f"out of order or twice: {seqs}"
    first = seqs[0] if seqs else None
    missing = [n for n in published if first is not None and n >= first and n not in seqs]
    if missing:
        last_resync = max(i for i, e in enumerate(events) if e == "resync") \
            if "resync" in events else None
        assert last_resync is not None, f"silent gap: {missing[:10]}"
        after = [e for e in events[last_resync:] if e != "resync"]
        assert after and all(n < after[0] for n in missing), \
            f"a gap after the last _resync: {missing[:10]}"
    return seqs, events.count("resync")


def relay_status(client):
    return client.ws.request({"type": "relay"})["data"]


def test_broadcasts_cross_workers_on_every_shard(server, redis_cluster):
    by_port = rooms_on_every_master(redis_cluster)
    rooms = [room for rooms in by_port.values() for room in rooms]
    clients = open_rooms(server, rooms)
    try:
        assert_reaches_everyone(clients)
        status = relay_status(clients[rooms[0]][0])
        assert status["degraded"] is False
        assert status["cluster"]["masters"] == 3
        # Sharded pub/sub: each room's channel has subscribers on its own shard only.
        for port, port_rooms in by_port.items():
            with redis_cluster.client(port) as r:
                for room in port_rooms:
                    channel = namespace_channel(PREFIX, ROOMS + room)
                    assert r.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == WORKERS
        # The Emitter takes the same URL and reaches every client of a room.
        with Emitter(redis_cluster.url, channel_prefix=PREFIX) as emitter:
            room = rooms[-1]
            assert emitter.broadcast(ROOMS + room, {"type": "seq", "data": "emitted"}) \
                == WORKERS
            for c in clients[room]:
                assert c.ws.receive(type="seq", timeout=5)["data"]["data"] == "emitted"
    finally:
        close_all([c for cs in clients.values() for c in cs])


def test_directed_sends_and_requests_reach_another_worker(server, redis_cluster):
    clients = open_spread(server, WORKERS * 2, path=ROOMS + "dm")
    try:
        asker = clients[0]
        target = next(c for c in clients if c.pid != asker.pid)
        reply = asker.ws.request({"type": "dm", "to": target.client_id, "data": "psst"})
        assert reply["data"]["local"] is False
        assert target.ws.receive(type="dm", timeout=5)["data"]["data"] == "psst"
    finally:
        close_all(clients)


def test_a_plain_url_to_a_cluster_node_is_refused_with_a_clear_error(redis_cluster):
    port = redis_cluster.master_ports()[0]
    srv = GunicornServer(app=APP, workers=1,
                         settings={"JPULSE_WS_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                                   "JPULSE_WS_CHANNEL_PREFIX": PREFIX}).start()
    try:
        ws = WSTestClient(srv.ws_url(ROOMS + "plain"))
        ws.receive(type="connected")
        wait_for(lambda: "names a node of a Redis Cluster" in srv.log(), timeout=10,
                 message="the topology error in the log")
        assert ws.request({"type": "relay"})["data"]["degraded"] is True
        ws.close()
    finally:
        srv.stop()


def test_a_cluster_url_to_a_single_redis_is_refused_with_a_clear_error(redis_server):
    url = redis_server.url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0]
    srv = GunicornServer(app=APP, workers=1,
                         settings={"JPULSE_WS_REDIS_URL": url,
                                   "JPULSE_WS_CHANNEL_PREFIX": PREFIX}).start()
    try:
        ws = WSTestClient(srv.ws_url(ROOMS + "single"))
        ws.receive(type="connected")
        wait_for(lambda: "is not a Redis Cluster node" in srv.log()
                 or "cluster support disabled" in srv.log(), timeout=10,
                 message="the topology error in the log")
        ws.close()
    finally:
        srv.stop()


def migrate_slot(nodes, slot, source_port, target_port):
    """Move ``slot`` (and its keys) from one master to another, as redis-cli does."""
    src, dst = nodes.client(source_port), nodes.client(target_port)
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command(
        "CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while True:
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if not keys:
            break
        src.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
    for port in nodes.master_ports():
        with nodes.client(port) as r:
            r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    src.close()
    dst.close()


def test_a_migrated_slot_is_followed_and_only_its_paths_resync(redis_cluster):
    srv = start_server(redis_cluster.url, **QUIET)
    by_port = rooms_on_every_master(redis_cluster, count=1)
    (source, (moved,)), (target, (stayed,)) = list(by_port.items())[:2]
    clients = open_rooms(srv, [moved, stayed])
    try:
        assert_reaches_everyone(clients)
        with Traffic(redis_cluster.url, [moved, stayed]) as traffic:
            time.sleep(0.5)
            migrate_slot(redis_cluster, slot_of_room(moved), source, target)
            wait_for(lambda: redis_cluster.port_of_slot(slot_of_room(moved)) == target)
            time.sleep(1.5)
        # In order, never twice, no silent gap; every client of the moved room was told
        # it may have missed something, the other room's clients were not.
        for c in clients[moved]:
            seqs, resyncs = check_stream(c, traffic.published[moved])
            assert resyncs >= 1 and seqs[-1] == traffic.published[moved][-1]
        for c in clients[stayed]:
            seqs, resyncs = check_stream(c, traffic.published[stayed])
            assert resyncs == 0 and seqs == traffic.published[stayed][
                traffic.published[stayed].index(seqs[0]):]
        # The subscription followed the slot: broadcasts keep crossing workers.
        assert_reaches_everyone(clients)
        with redis_cluster.client(target) as r:
            channel = namespace_channel(PREFIX, ROOMS + moved)
            assert r.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == WORKERS
        for c in clients[moved]:
            assert relay_status(c)["degraded"] is False
    finally:
        close_all([c for cs in clients.values() for c in cs])
        srv.stop()


def replica_of(nodes, master_port):
    with nodes.client(nodes.alive()[0]) as r:
        for _, _, master, *replicas in r.execute_command("CLUSTER", "SLOTS"):
            if int(master[1]) == master_port and replicas:
                return int(replicas[0][1])
    raise LookupError(f"no replica of {master_port}")


def fail_over(nodes, victim, how):
    """SIGKILL the master; or a manual ``CLUSTER FAILOVER`` on its replica (the old
    master stays up, as a replica); or ``DEBUG SLEEP`` on it past the node timeout (its
    connections stay open but deaf, then it comes back as a replica)."""
    if how == "kill":
        nodes.kill(victim)
    elif how == "manual":
        with nodes.client(replica_of(nodes, victim)) as r:
            r.execute_command("CLUSTER", "FAILOVER")
    else:
        def sleep():  # once: no retry (a second DEBUG SLEEP would queue behind it)
            with redis_py.Redis(port=victim, socket_timeout=10,
                                retry=Retry(NoBackoff(), 0)) as r:
                r.execute_command("DEBUG", "SLEEP", 4)
        threading.Thread(target=sleep, daemon=True).start()


@pytest.mark.parametrize("how", ["kill", "manual", "sleep"])
def test_a_master_failover_is_healed_and_every_namespace_resumes(how):
    """A numbered stream to a room on the failing shard and one on another: every
    namespace resumes within 5 s of the promotion, in order, never twice, no silent gap;
    every worker ends restored."""
    nodes = RedisClusterServers(masters=3, replicas=1, node_timeout_ms=1000).start()
    srv = start_server(nodes.url, **QUIET)
    by_port = rooms_on_every_master(nodes, count=1)
    victim, (room,) = next(iter(by_port.items()))
    other_room = next(r for port, (r,) in by_port.items() if port != victim)
    clients = open_rooms(srv, [room, other_room])
    try:
        assert_reaches_everyone(clients)
        with Traffic(nodes.url, [room, other_room]) as traffic:
            time.sleep(0.5)
            fail_over(nodes, victim, how)
            wait_for(lambda: nodes.port_of_slot(slot_of_room(room)) != victim,
                     timeout=30, message="the replica promoted")
            time.sleep(5.0)
            published_until = {r: len(traffic.published[r]) for r in (room, other_room)}
            time.sleep(1.0)
        for r in (room, other_room):
            for c in clients[r]:
                seqs, resyncs = check_stream(c, traffic.published[r])
                assert set(traffic.published[r][published_until[r] - 20:]) <= set(seqs)
        wait_for(lambda: all(not relay_status(c)["degraded"] for c in clients[room]),
                 timeout=20, message="every worker restored")
        assert_reaches_everyone(clients)
    finally:
        close_all([c for cs in clients.values() for c in cs])
        srv.stop()
        nodes.stop()


def test_plain_redis_clients_of_the_url(redis_cluster):
    from flask_jpulse_ws import redis_client

    r = redis_client(redis_cluster.url)
    assert isinstance(r, redis_py.cluster.RedisCluster)
    r.set("rc-probe", "1")
    assert r.get("rc-probe") == b"1"
    r.close()
