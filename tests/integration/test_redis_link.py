"""The auto-pipelined link to Redis, against private redis-servers: many callers share
one connection, and every failure ends as LinkDown (reported once), LinkBusy (not an
outage) or CommandFailed, never as an exception out of redis-py.

The process is not gevent-patched, so callers are threads (the threads fallback of
``concurrency``); the gunicorn storm tests cover the gevent side. A slow Redis is made
with ``DEBUG SLEEP`` sent through the link itself, so that the flusher is known to be
waiting on it (polled, not slept on).
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import RedisServer, wait_for

from flask_jpulse_ws.cluster import redis_link
from flask_jpulse_ws.cluster.id_claims import IdClaims
from flask_jpulse_ws.cluster.redis_link import CommandFailed, LinkBusy, LinkDown, RedisLink
from flask_jpulse_ws.cluster.redis_relay import RedisRelay

PATH = "/api/1/ws/storm"


def make_link(url, downs, max_connections=None):
    """A link made as the relay makes it: short timeouts, no retries."""
    options = {"socket_timeout": 2.0, "socket_connect_timeout": 0.5,
               "retry": Retry(NoBackoff(), 0)}
    if max_connections:
        options["max_connections"] = max_connections
    return RedisLink(redis_py.Redis.from_url(url, **options), on_down=downs.append)


@pytest.fixture
def debug_redis():
    """A private redis-server that accepts DEBUG SLEEP."""
    srv = RedisServer(args=["--enable-debug-command", "yes"]).start()
    yield srv
    srv.stop()


def hold_flusher(link, seconds):
    """Start a DEBUG SLEEP through ``link`` and return once its flusher is waiting on it:
    everything queued meanwhile waits behind it. Returns the thread that waits."""
    calls = link.calls

    def sleep_in_redis():
        try:
            link.call("DEBUG", "SLEEP", str(seconds), timeout=30)
        except LinkDown:
            pass  # a test that kills Redis meanwhile

    waiter = threading.Thread(target=sleep_in_redis)
    waiter.start()
    wait_for(lambda: link.calls == calls + 1 and link.queued == 0, timeout=10,
             message="the DEBUG SLEEP taken by the flusher")
    return waiter


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
    assert len(redis_py.Redis.from_url(redis_server.url).keys("link-test:{*}:cid:*")) == 50


def test_every_caller_gets_its_own_results_in_the_order_it_queued(redis_server):
    """300 callers at once, each with a value only it can get back; one caller's
    commands run in its order."""
    link = make_link(redis_server.url, [])
    with ThreadPoolExecutor(20) as pool:
        got = list(pool.map(lambda i: link.call("ECHO", f"caller-{i}"), range(300)))
    assert got == [f"caller-{i}".encode() for i in range(300)]
    rec = link.pipeline()
    for i in range(5):
        rec.rpush("order", i)
    assert link.run(rec) == [1, 2, 3, 4, 5]
    assert link.call("LRANGE", "order", 0, -1) == [b"0", b"1", b"2", b"3", b"4"]


def test_redis_gone_is_link_down_reported_once_and_queued_calls_fail_with_it(debug_redis):
    """A Redis that dies under a waiting pipeline fails that call and every call queued
    behind it with LinkDown, and tells the circuit once; the link reconnects when Redis
    is back."""
    downs = []
    link = make_link(debug_redis.url, downs)
    waiter = hold_flusher(link, 5)
    outcomes = []

    def queued_call():
        try:
            link.call("PING", timeout=10)
        except Exception as exc:  # noqa: BLE001 - the outcome is the assertion
            outcomes.append(type(exc))

    behind = [threading.Thread(target=queued_call) for _ in range(3)]
    for t in behind:
        t.start()
    wait_for(lambda: link.queued == 3, timeout=5, message="three calls queued")
    port = debug_redis.port
    debug_redis.kill()
    for t in behind:
        t.join(10)
    waiter.join(10)
    assert outcomes == [LinkDown] * 3 and len(downs) == 1
    with pytest.raises(LinkDown):
        link.call("PING")  # still gone: down again, at once
    restarted = RedisServer(port=port).start()
    try:
        assert link.call("PING") is True
    finally:
        restarted.stop()


@pytest.mark.parametrize("warned", [False, True], ids=["idle", "recheck"])
def test_a_restart_the_link_did_not_see_is_not_an_outage(debug_redis, monkeypatch, warned):
    """Redis restarted while the link sent nothing (the degraded relay sends nothing): the
    next call gets a new connection instead of failing on the old one and reopening the
    circuit, whether the link was idle for IDLE_CHECK or the relay's subscriber, which
    saw the restart, asked for a recheck (a lost subscription does)."""
    if not warned:
        monkeypatch.setattr(redis_link, "IDLE_CHECK", 0.0)
    downs = []
    link = make_link(debug_redis.url, downs)
    assert link.call("PING") is True
    port = debug_redis.port
    debug_redis.kill()
    restarted = RedisServer(port=port).start()
    try:
        if warned:
            link.recheck()
        assert link.call("PING") is True
        assert downs == [] and link.failures == 0
    finally:
        restarted.stop()


def test_a_socket_closed_under_a_waiting_pipeline_is_link_down_not_a_crash(debug_redis):
    """The 0.1.0 symptom: a socket closed under redis-py while it waited for a reply
    raised OSError or ValueError ("I/O operation on closed file") into a handshake.
    The link maps whatever comes out, reports it once, and works again afterwards."""
    downs = []
    link = make_link(debug_redis.url, downs)
    assert link.call("PING") is True
    conn = link._conn  # the one connection the flusher keeps
    outcome = []

    def sleeping_call():
        try:
            link.call("DEBUG", "SLEEP", "1", timeout=10)
        except Exception as exc:  # noqa: BLE001 - the outcome is the assertion
            outcome.append(exc)

    t = threading.Thread(target=sleeping_call)
    t.start()
    wait_for(lambda: link.queued == 0 and link.calls == 2, timeout=5,
             message="the DEBUG SLEEP in flight")
    conn._sock.close()  # what the old circuit did to connections other greenlets used
    t.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], LinkDown)
    assert len(downs) == 1
    wait_for(lambda: link.call("PING") is True, timeout=5, message="link back")


def test_a_slow_redis_is_busy_not_down_and_a_cancelled_call_is_never_sent(debug_redis):
    """A caller that gives up behind a slow Redis gets LinkBusy; the circuit is not
    told, and its call, still queued, is never sent."""
    downs = []
    link = make_link(debug_redis.url, downs)
    other = redis_py.Redis.from_url(debug_redis.url)
    waiter = hold_flusher(link, 1)
    with pytest.raises(LinkBusy) as busy:
        link.call("SET", "late", "1", timeout=0.1)
    assert busy.value.sent is False
    waiter.join(10)
    assert link.call("PING") is True
    assert downs == [] and link.status()["busy"] == 1
    assert other.get("late") is None


def test_a_bad_argument_fails_its_caller_alone(redis_server):
    """redis-py refuses None and bool only while packing the whole pipeline: the link
    checks each call first, so nobody else's call fails and the circuit stays shut."""
    downs = []
    link = make_link(redis_server.url, downs)
    with pytest.raises(CommandFailed, match="NoneType"):
        link.call("SET", "bad", None)
    with pytest.raises(CommandFailed, match="bool"):
        link.call("SET", "bad", True)
    assert link.call("SET", "good", "v") is True and downs == []


def test_redis_errors_are_command_failed_for_their_caller_alone(redis_server):
    """A command Redis refuses is CommandFailed for its caller; the others in the same
    pipeline get their results."""
    downs = []
    link = make_link(redis_server.url, downs)
    link.call("SET", "text", "x")
    rec = link.pipeline()
    rec.incr("text")
    with pytest.raises(CommandFailed):
        link.run(rec)
    assert link.call("GET", "text") == b"x" and downs == []


def test_scripts_are_loaded_in_the_same_pipeline_and_keep_the_queue_order(debug_redis):
    """A script is loaded ahead of its first call on a connection, so a script call and
    the plain call queued after it run in that order, even after Redis flushed its
    scripts (0.1.0's retry after NOSCRIPT ran the plain call first)."""
    link = make_link(debug_redis.url, [])
    push = link.register_script("return redis.call('RPUSH', KEYS[1], ARGV[1])")
    assert link.eval(push, ["warm"], ["x"]) == 1
    redis_py.Redis.from_url(debug_redis.url).script_flush()
    link._client.connection_pool.disconnect()  # a new connection, as after a restart
    link._loaded.clear()
    waiter = hold_flusher(link, 0.5)
    first, second = link.pipeline(), link.pipeline()
    push(keys=["o"], args=["A"], client=first)
    second.rpush("o", "B")
    assert link.post(first) and link.post(second)  # both queued behind the sleep
    waiter.join(10)
    wait_for(lambda: link.call("LLEN", "o") == 2, timeout=5, message="both pushes")
    assert link.call("LRANGE", "o", 0, -1) == [b"A", b"B"]


def test_a_script_flushed_between_calls_is_loaded_again(redis_server):
    """SCRIPT FLUSH (or a Redis restart the link did not see): NOSCRIPT, loaded, sent
    once more."""
    link = make_link(redis_server.url, [])
    script = link.register_script("return ARGV[1] .. '!'")
    assert link.eval(script, [], ["a"]) == b"a!"
    redis_py.Redis.from_url(redis_server.url).script_flush()
    assert link.eval(script, [], ["b"]) == b"b!"


def test_a_full_queue_or_a_stopped_link_refuses_at_once(redis_server):
    """Beyond MAX_QUEUED waiting calls a caller is refused at once instead of growing;
    a stopped link refuses as down, without making callers wait."""
    link = RedisLink(redis_py.Redis.from_url(redis_server.url), on_down=lambda r: None,
                     max_queued=0)
    with pytest.raises(LinkBusy):
        link.call("PING")
    assert link.post(link.pipeline()) is False
    assert link.status()["busy"] == 2
    stopped = make_link(redis_server.url, [])
    stopped.stop()
    with pytest.raises(LinkDown, match="stopped"):
        stopped.call("PING", timeout=30)


def test_a_relay_that_lost_its_subscription_recovers_on_the_next_answer(debug_redis,
                                                                        monkeypatch):
    """Redis restarted soon after the link's last batch (the idle check is kept out of
    the way): the lost subscription asks the link for a recheck, so the relay's PING
    after the resubscribe gets a new connection and the relay recovers at once, instead
    of failing on the dead socket ("publisher unavailable") and waiting for a probe."""
    monkeypatch.setattr(redis_link, "IDLE_CHECK", 60.0)
    relay = RedisRelay(debug_redis.url, "t", "host-1", on_op=lambda op: None,
                       on_gap=lambda reason: 0, on_late=lambda paths: None,
                       on_recovered=lambda: None, stats_row=lambda: {})
    relay.announce = False  # no stats posts: the link is used by this test alone
    relay.start()
    try:
        wait_for(lambda: relay._subscribed and not relay.degraded, timeout=5,
                 message="relay subscribed")
        assert relay.publish("broadcast", path=PATH, data={"n": 1}) is not None
        port = debug_redis.port
        debug_redis.kill()
        restarted = RedisServer(port=port).start()
        try:
            wait_for(lambda: relay.outages == 1 and not relay.degraded, timeout=5,
                     message="relay recovered")
            assert "publisher unavailable" not in relay.last_error, relay.last_error
            assert relay.link.failures == 0
        finally:
            restarted.stop()
    finally:
        relay.stop()
