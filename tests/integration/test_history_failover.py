"""Recovery across a change of Redis master: an exact replay or ``recovered: false``,
never ``recovered: true`` with a hole.

The epoch follows the master's replication id (``master_replid``): a promoted replica or
a master restarted from an older snapshot may lack the last entries of the stream, and
would give their offsets out again to new broadcasts.
"""

import socket
import threading

import pytest
import redis as redis_py
from redis.crc import key_slot
from servers import GunicornServer, RedisClusterServers, RedisServer, SentinelServer, wait_for

from flask_jpulse_ws.cluster.keys import history_keys
from flask_jpulse_ws.testing import WSTestClient

pytestmark = pytest.mark.cluster

PATH = "/api/1/ws/history"
PREFIX = "failover"
META, STREAM = history_keys(PREFIX, PATH)
NO_INFO_WARNING = "Redis refuses INFO to this user"


def start_server(url):
    return GunicornServer(settings={"JPULSE_WS_REDIS_URL": url,
                                    "JPULSE_WS_CHANNEL_PREFIX": PREFIX}).start()


def join(server, since=None):
    query = f"?since={since[0]}:{since[1]}" if since else ""
    c = WSTestClient(server.ws_url(PATH + query))
    return c, c.receive(type="connected")["data"]["data"]


def broadcast(server, n):
    server.http().post("/_test/burst", {"path": PATH, "count": n, "size": 10})


def last_position(c, n):
    frames = [c.receive(timeout=10) for _ in range(n)]
    assert all(f["data"]["type"] == "burst" for f in frames)
    return frames[-1]["epoch"], frames[-1]["offset"]


def recover(server, since):
    """Reconnect with ``since``: (the seqs replayed, the ``_recovered`` data, welcome)."""
    c, welcome = join(server, since)
    seqs = []
    while True:
        frame = c.receive(timeout=10)
        if frame["data"]["type"] == "_recovered":
            c.close()
            return seqs, frame["data"]["data"], welcome
        seqs.append(frame["data"]["data"]["seq"])


def relay_restored(server):
    """Wait until the worker has seen Redis go and come back (no broadcast meanwhile:
    a broadcast that fails starts a new epoch on its own)."""
    def restored():
        relay = server.http().get("/_test/stats")["relay"]
        return relay["outages"] >= 1 and not relay["degraded"]
    wait_for(restored, timeout=30, interval=0.1, message="the relay to come back")


def assert_no_hole(seqs, recovered, missed):
    """Either ``recovered: false`` or every missed frame, in order."""
    assert recovered["recovered"] is False or seqs == missed, \
        f"recovered: true with a hole: replayed {seqs}, missed {missed}"


class ReplicationLink:
    """A TCP relay between a replica and its master that a test can freeze: the master's
    writes stop reaching the replica, as in a network partition."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the master is gone
                down.close()
                continue
            self.sockets += [down, up]
            threading.Thread(target=self._pump, args=(up, down, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(down, up, False), daemon=True).start()

    def _pump(self, src, dst, from_master):
        try:
            while True:
                data = src.recv(65536)
                if not data or (from_master and self.frozen.is_set()):
                    return  # what the master writes from now on never reaches the replica
                dst.sendall(data)
        except OSError:
            return

    def close(self):
        self.listener.close()
        for s in self.sockets:
            s.close()


def test_a_stale_replica_promoted_by_sentinel_never_recovers_a_client_with_a_hole():
    """The replica misses the master's last 5 broadcasts, the master dies, Sentinel
    promotes the replica and 10 more are broadcast: a client that had the lost 5 must
    not be told it recovered while it missed some of the 10."""
    master = RedisServer().start()
    link = ReplicationLink(master.port)
    replica = RedisServer(args=["--replicaof", "127.0.0.1", str(link.port)]).start()
    # Sentinel re-points a replica that replicates through another address (the link)
    # only after failover-timeout: long enough for the whole test.
    sentinel = SentinelServer(master.port, failover_timeout_ms=120000).start()
    server = None
    try:
        with redis_py.Redis(port=sentinel.port, socket_timeout=2) as s:
            wait_for(lambda: len(s.sentinel_slaves(sentinel.service)) == 1, timeout=15,
                     message="sentinel sees the replica")
        server = start_server(sentinel.url())
        c, _ = join(server)
        broadcast(server, 3)
        last_position(c, 3)
        with redis_py.Redis(port=replica.port, socket_timeout=2) as r:
            wait_for(lambda: r.xlen(STREAM) == 3, message="the replica to have 3 entries")
            link.frozen.set()
            broadcast(server, 5)
            position = last_position(c, 5)
            assert r.xlen(STREAM) == 3  # the last 5 live only on the master
        c.close()
        master.kill()
        link.close()
        with redis_py.Redis(port=sentinel.port, socket_timeout=2) as s:
            wait_for(lambda: int(s.sentinel_get_master_addr_by_name(sentinel.service)[1])
                     == replica.port, timeout=30, interval=0.2,
                     message="sentinel promoted the replica")
        relay_restored(server)
        broadcast(server, 10)  # the client misses all 10
        seqs, recovered, welcome = recover(server, position)
        assert_no_hole(seqs, recovered, list(range(10)))
        assert recovered["recovered"] is False and welcome["epoch"] != position[0]
    finally:
        if server is not None:
            server.stop()
        link.close()
        for proc in (sentinel, replica, master):
            proc.stop()


def test_redis_restarted_from_an_older_snapshot_never_recovers_a_client_with_a_hole():
    """Redis is SIGKILLed and comes back from an RDB saved 3 broadcasts earlier; the
    offsets of those 3 are given to new broadcasts, which the client must not skip."""
    redis = RedisServer().start()
    server = start_server(redis.url)
    try:
        c, _ = join(server)
        broadcast(server, 3)
        last_position(c, 3)
        with redis_py.Redis(port=redis.port) as r:
            r.save()
        broadcast(server, 3)
        position = last_position(c, 3)
        c.close()
        redis.kill()
        restarted = RedisServer(port=redis.port)
        restarted.dir = redis.dir  # the same dump.rdb
        redis = restarted.start()
        with redis_py.Redis(port=redis.port) as r:
            assert int(r.hget(META, "offset")) == 3  # the snapshot, 3 behind the client
        relay_restored(server)
        broadcast(server, 5)
        seqs, recovered, _ = recover(server, position)
        assert_no_hole(seqs, recovered, list(range(5)))
    finally:
        server.stop()
        redis.stop()


def test_a_stream_written_under_another_master_starts_a_new_epoch(redis_server):
    """A replication id in the meta hash that is not the master's own (the stream came
    from a former master) refuses recovery and numbers the next broadcast 1, anew."""
    server = start_server(redis_server.url)
    try:
        c, _ = join(server)
        broadcast(server, 3)
        position = last_position(c, 3)
        with redis_py.Redis(port=redis_server.port) as r:
            r.hset(META, "rid", "0" * 40)
        seqs, recovered, welcome = recover(server, position)
        assert recovered == {"recovered": False, "count": 0} and seqs == []
        assert welcome["epoch"] != position[0] and welcome["offset"] == 0
        fresh, _ = join(server)
        broadcast(server, 1)
        assert last_position(fresh, 1) == (welcome["epoch"], 1)
        fresh.close()
        c.close()
    finally:
        server.stop()
        with redis_py.Redis(port=redis_server.port) as r:
            r.delete(META, STREAM)


def test_one_master_keeps_one_epoch_across_appends_and_app_restarts(redis_server):
    """Restarting the app changes nothing: the epoch is the stream's, recovery across the
    restart replays every frame, and the meta hash holds the master's replication id."""
    server = start_server(redis_server.url)
    try:
        c, start = join(server)
        broadcast(server, 30)
        epoch, _ = last_position(c, 30)
        c.close()
        server.stop()
        server = start_server(redis_server.url)
        broadcast(server, 30)
        seqs, recovered, welcome = recover(server, (start["epoch"], start["offset"]))
        assert recovered == {"recovered": True, "count": 60}
        assert seqs == list(range(30)) * 2
        assert epoch == start["epoch"] == welcome["epoch"]
        assert welcome["offset"] == start["offset"] + 60
        with redis_py.Redis(port=redis_server.port) as r:
            assert r.hget(META, "rid").decode() == r.info("replication")["master_replid"]
    finally:
        server.stop()
        with redis_py.Redis(port=redis_server.port) as r:
            r.delete(META, STREAM)


def test_a_user_without_info_keeps_history_and_is_warned_once():
    """An ACL that forbids INFO turns failover detection off, not history: recovery
    still replays exactly, and the worker logs one warning however many broadcasts."""
    redis = RedisServer().start()
    with redis_py.Redis(port=redis.port) as r:
        r.acl_setuser("jp", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                      commands=["+@all", "-info"])
    server = start_server(f"redis://jp:pw@127.0.0.1:{redis.port}/0")
    try:
        c, _ = join(server)
        broadcast(server, 3)
        position = last_position(c, 3)
        c.close()
        broadcast(server, 20)
        seqs, recovered, _ = recover(server, position)
        assert recovered == {"recovered": True, "count": 20} and seqs == list(range(20))
        assert server.log().count(NO_INFO_WARNING) == 1
    finally:
        server.stop()
        redis.stop()


def test_a_redis_cluster_failover_never_recovers_a_client_with_a_hole():
    """The namespace's shard loses its master; its replica is promoted. A client away
    during the failover gets an exact replay or ``recovered: false``; one connected
    within the same master's epoch recovers exactly."""
    nodes = RedisClusterServers(masters=3, replicas=1, node_timeout_ms=1000).start()
    server = start_server(nodes.url)
    try:
        c, start = join(server)
        broadcast(server, 10)
        last_position(c, 10)
        c.close()
        # Within one master: an exact replay.
        seqs, recovered, _ = recover(server, (start["epoch"], start["offset"]))
        assert recovered == {"recovered": True, "count": 10} and seqs == list(range(10))
        victim = nodes.port_of_slot(key_slot(META.encode()))
        nodes.kill(victim)
        wait_for(lambda: nodes.port_of_slot(key_slot(META.encode())) != victim,
                 timeout=30, message="the replica promoted")
        relay_restored(server)
        broadcast(server, 5)
        seqs, recovered, welcome = recover(server, (start["epoch"], start["offset"]))
        assert_no_hole(seqs, recovered, list(range(10)) + list(range(5)))
        # The promoted replica has a replication id of its own: a new epoch.
        assert welcome["epoch"] != start["epoch"]
        assert recovered["recovered"] is False
    finally:
        server.stop()
        nodes.stop()
