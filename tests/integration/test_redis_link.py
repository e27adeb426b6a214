"""The auto-pipelined link to Redis, against private redis-servers: many callers share
one connection, and every failure ends as LinkDown (reported once), LinkBusy (not an
outage) or CommandFailed, never as an exception out of redis-py.

The process is not gevent-patched, so callers are threads (the threads fallback of
``concurrency``); the gunicorn storm tests cover the gevent side.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import RedisServer, wait_for

from flask_jpulse_ws.cluster.id_claims import IdClaims
from flask_jpulse_ws.cluster.redis_link import CommandFailed, LinkBusy, LinkDown, RedisLink

PATH = "/api/1/ws/storm"


def make_link(url, downs, max_connections=None):
    """A link made as the relay makes it: short timeouts, no retries."""
    options = {"socket_timeout": 2.0, "socket_connect_timeout": 0.5,
               "retry": Retry(NoBackoff(), 0)}
    if max_connections:
        options["max_connections"] = max_connections
    return RedisLink(redis_py.Redis.from_url(url, **options), on_down=downs.append)


def test_fifty_concurrent_claims_over_a_two_connection_pool_degrade_nothing(redis_server):
    """50 handshakes claiming at once through a pool of 2 connections: every claim is
    made, nothing is reported as an outage, and Redis saw a handful of pipelines."""
    downs = []
    link = make_link(redis_server.url, downs, max_connections=2)
    claims = IdClaims(link, "link-test", b"k", available=lambda: True)
    start = threading.Barrier(50)

    def claim(i):
        start.wait()
        return claims.claim(PATH, f"00000000-0000-4000-8000-{i:012d}", ("anon", str(i)))

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(claim, range(50)))
    assert all(value is not None and not later for _, value, later in results), \
        claims.status()
    assert claims.status()["made"] == 50 and claims.status()["deferred"] == 0
    assert downs == []
    assert link.batches < 50  # coalesced: several claims per pipeline
    assert len(redis_py.Redis.from_url(redis_server.url).keys("link-test:cid:*")) == 50


def test_calls_keep_their_order_and_results():
    """Results go back to the caller that asked, in the order the calls were queued."""
    srv = RedisServer().start()
    try:
        link = make_link(srv.url, [])
        with ThreadPoolExecutor(20) as pool:
            got = list(pool.map(lambda i: link.call("INCR", f"n{i % 3}"), range(300)))
        assert sorted(got) == sorted(list(range(1, 101)) * 3)
        rec = link.pipeline()
        for i in range(5):
            rec.rpush("order", i)
        assert link.run(rec) == [1, 2, 3, 4, 5]
        assert link.call("LRANGE", "order", 0, -1) == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        srv.stop()


def test_redis_gone_is_link_down_reported_once_and_queued_calls_fail_at_once():
    """A dead Redis fails the calls with LinkDown and tells the circuit once per batch,
    without leaving an exception of redis-py's to the caller."""
    downs = []
    srv = RedisServer().start()
    link = make_link(srv.url, downs)
    assert link.call("PING") is True
    srv.kill()
    with pytest.raises(LinkDown):
        link.call("PING")
    assert len(downs) == 1 and downs[0]
    srv = RedisServer(port=srv.port).start()  # back: the link reconnects by itself
    try:
        assert link.call("PING") is True
    finally:
        srv.stop()


def test_a_socket_closed_under_a_waiting_pipeline_is_link_down_not_a_crash():
    """The 0.1.0 symptom: a socket closed under redis-py while it waited for a reply
    raised OSError or ValueError ("I/O operation on closed file") into a handshake.
    The link maps whatever comes out, reports it once, and works again afterwards."""
    srv = RedisServer(args=["--enable-debug-command", "yes"]).start()
    try:
        downs = []
        link = make_link(srv.url, downs)
        assert link.call("PING") is True
        conn = link._client.connection_pool._available_connections[0]
        threading.Timer(0.2, conn._sock.close).start()  # mid-read, from another thread
        with pytest.raises(LinkDown):
            link.call("DEBUG", "SLEEP", "0.5")
        assert len(downs) == 1
        wait_for(lambda: link.call("PING") is True, timeout=3, message="link back")
    finally:
        srv.stop()


def test_a_slow_redis_is_busy_not_down():
    """A caller that gives up on a slow Redis gets LinkBusy; the circuit is not told,
    and its call, still queued behind the slow one, is never sent."""
    srv = RedisServer(args=["--enable-debug-command", "yes"]).start()
    try:
        _slow_redis_is_busy_not_down(srv)
    finally:
        srv.stop()


def _slow_redis_is_busy_not_down(srv):
    downs = []
    link = make_link(srv.url, downs)
    other = redis_py.Redis.from_url(srv.url)
    other.delete("late")
    sleeper = threading.Thread(target=lambda: other.execute_command("DEBUG", "SLEEP", "0.6"))
    sleeper.start()
    time.sleep(0.05)
    in_flight = threading.Thread(target=lambda: link.call("PING", timeout=5))
    in_flight.start()  # the flusher now waits for Redis
    time.sleep(0.05)
    with pytest.raises(LinkBusy):
        link.call("SET", "late", "1", timeout=0.1)
    sleeper.join()
    in_flight.join()
    assert link.call("PING") is True
    assert downs == [] and link.status()["busy"] == 1
    assert other.get("late") is None  # cancelled before it was sent


def test_redis_errors_are_command_failed_and_scripts_survive_a_flush(redis_server):
    """A command Redis refuses is CommandFailed for its caller alone; a script whose
    cache Redis lost (restart, SCRIPT FLUSH) is loaded again and run."""
    downs = []
    link = make_link(redis_server.url, downs)
    script = link.register_script("return ARGV[1] .. '!'")
    assert link.eval(script, [], ["a"]) == b"a!"
    redis_py.Redis.from_url(redis_server.url).script_flush()
    assert link.eval(script, [], ["b"]) == b"b!"
    link.call("SET", "text", "x")
    with pytest.raises(CommandFailed):
        link.call("INCR", "text")
    assert link.call("GET", "text") == b"x" and downs == []


def test_a_full_queue_is_busy_at_once(redis_server):
    """Beyond MAX_QUEUED waiting calls a caller is refused at once instead of growing."""
    link = RedisLink(redis_py.Redis.from_url(redis_server.url), on_down=lambda r: None,
                     max_queued=0)
    with pytest.raises(LinkBusy):
        link.call("PING")
    assert link.post(link.pipeline()) is False
    wait_for(lambda: link.status()["busy"] == 2, timeout=2, message="busy counted")
