"""Handshake storms on the multi-process path: ``gunicorn -k gevent -w 2`` over a private
redis-server, 2,000 sockets opened at once with 250 handshakes in flight.

Every socket is admitted with a clean stream (the frame decoder fails on any stray
byte), no handshake ends in an HTTP error, the relay never calls a healthy Redis
degraded, every socket's id is claimed in Redis, and one broadcast afterwards reaches
all 2,000. The same holds with Redis SIGKILLed in the middle of the storm and started
again: sockets admitted meanwhile are claimed once Redis is back.
"""

import asyncio
import time

import psutil
import pytest
import redis as redis_py
from servers import GunicornServer, RedisServer, wait_for
from storm import open_many, raise_open_files, wait_all

APP = "core_app:create_app()"
PATH = "/api/1/ws/echo"
SOCKETS = 2000
IN_FLIGHT = 250
#: Seconds Redis stops answering in the middle of the first storm (a slow Redis, or a
#: busy one: under the link's reply timeout, so it must not count as an outage).
REDIS_PAUSE = 0.5
SETTINGS = {"JPULSE_WS_MAX_CONNECTIONS_PER_IP": 100000, "JPULSE_WS_HANDSHAKE_RATE": 0,
            "JPULSE_WS_PING_INTERVAL": 60, "JPULSE_WS_PONG_TIMEOUT": 60}
#: What the logs of a storm must never show.
BAD_LOG_LINES = ("Traceback", "Invalid HTTP request line", "Error handling request",
                 " 500 ")

pytestmark = pytest.mark.cluster


@pytest.fixture
def storm_redis():
    srv = RedisServer(args=["--enable-debug-command", "yes"]).start()
    yield srv
    srv.stop()


def start_workers(redis_url):
    raise_open_files(3 * SOCKETS + 1000)
    srv = GunicornServer(app=APP, workers=2,
                         settings={"JPULSE_WS_REDIS_URL": redis_url, **SETTINGS}).start()
    wait_for(lambda: len(srv.worker_pids()) == 2, message="two workers")
    return srv


def sockets_per_worker(srv):
    """Established connections each worker holds (both must hold some)."""
    return [sum(1 for c in psutil.Process(pid).net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == srv.port)
            for pid in srv.worker_pids()]


def claimed_ids(redis_url):
    client = redis_py.Redis.from_url(redis_url)
    return sum(1 for _ in client.scan_iter(match="*:cid:*", count=1000))


def _pause(redis_url, opened):
    """DEBUG SLEEP in Redis: (seconds it took, upgrades still to open when it ended)."""
    started = time.monotonic()
    redis_py.Redis.from_url(redis_url).execute_command("DEBUG", "SLEEP", REDIS_PAUSE)
    return time.monotonic() - started, SOCKETS - opened[0]


def workers_relaying(redis_url):
    """Workers whose stats row is in Redis: each writes it every 2 s, only while its
    relay is whole (after a restart of an empty Redis, only those that recovered)."""
    client = redis_py.Redis.from_url(redis_url)
    return sum(1 for _ in client.scan_iter(match="*:{stats}:*"))


def broadcast(srv, marker):
    srv.http().post("/_test/broadcast", {"path": PATH, "data": {"type": "after",
                                                                "data": marker}})


def bad_lines(srv):
    return [line for line in srv.log().splitlines() if any(b in line for b in BAD_LOG_LINES)]


def run_storm(storm_redis, scenario):
    """``scenario(srv, storm_redis)`` against two fresh workers, stopped afterwards."""
    srv = start_workers(storm_redis.url)
    try:
        asyncio.run(scenario(srv, storm_redis))
    finally:
        srv.stop()


async def claimed_and_reached(srv, storm_redis, clients, marker, timeout):
    """Every socket holds an id claim in Redis, one broadcast reaches every socket, and
    the logs are clean."""
    await asyncio.to_thread(wait_for, lambda: claimed_ids(storm_redis.url) == SOCKETS,
                            timeout=timeout, message="an id claim for every socket")
    await asyncio.to_thread(broadcast, srv, marker)
    missing = await wait_all(clients, marker, timeout=15)
    assert missing == [], f"{len(missing)} sockets missed the broadcast"
    assert bad_lines(srv) == []


def test_two_thousand_handshakes_at_once_are_all_admitted_and_reached(storm_redis):
    """2,000 upgrades, 250 in flight, Redis pausing for 0.5 s in the middle: all
    admitted, all claimed, no degraded relay, one broadcast reaches every socket."""
    run_storm(storm_redis, _storm)


async def _storm(srv, storm_redis):
    paused = []
    opened = [0]

    async def pause_redis_midway(count):  # slow is not down: nothing may degrade
        opened[0] = count
        if count == SOCKETS // 3 and not paused:
            paused.append(asyncio.ensure_future(asyncio.to_thread(_pause, storm_redis.url,
                                                                  opened)))

    clients, failures = await open_many(srv.port, PATH, SOCKETS, IN_FLIGHT,
                                        on_opened=pause_redis_midway)
    try:
        assert paused, "Redis was not paused during the storm"
        paused_for, left_to_open = await paused[0]
        assert paused_for >= REDIS_PAUSE * 0.9  # Redis really stopped answering...
        assert left_to_open > IN_FLIGHT  # ...while at least IN_FLIGHT upgrades were to go
        assert failures == {} and len(clients) == SOCKETS
        assert all(c.error is None and c.close_code is None for c in clients)
        assert min(sockets_per_worker(srv)) > 0  # the storm really hit both workers
        assert "degraded" not in srv.log(), srv.log()[-3000:]
        await claimed_and_reached(srv, storm_redis, clients, "after-storm", timeout=10)
    finally:
        for c in clients:
            c.abort()


def test_redis_killed_mid_storm_admits_everyone_and_claims_them_when_back(storm_redis):
    """Redis SIGKILLed after 500 of 2,000 upgrades and started again empty: every
    socket is admitted meanwhile, every id is claimed once Redis is back, and one
    broadcast after the restore reaches all."""
    run_storm(storm_redis, _storm_with_outage)


async def _storm_with_outage(srv, storm_redis):
    killed = []

    async def kill_redis_midway(count):
        if count == SOCKETS // 4 and not killed:
            killed.append(count)
            storm_redis.kill()

    clients, failures = await open_many(srv.port, PATH, SOCKETS, IN_FLIGHT,
                                        on_opened=kill_redis_midway)
    try:
        assert killed, "Redis was not killed during the storm"
        assert failures == {} and len(clients) == SOCKETS
        assert all(c.error is None and c.close_code is None for c in clients)
        assert "degraded" in srv.log()  # the outage was seen...
        storm_redis.start()  # the same port, empty
        await asyncio.to_thread(wait_for, lambda: workers_relaying(storm_redis.url) == 2,
                                timeout=20, message="both workers relaying again")
        # ...and every socket, admitted before, during or after it, holds its claim.
        await claimed_and_reached(srv, storm_redis, clients, "after-restore", timeout=20)
    finally:
        for c in clients:
            c.abort()
