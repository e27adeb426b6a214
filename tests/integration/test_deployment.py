"""Deployments that used to break with no error: gunicorn workers that cannot hold a
socket (sync, gthread) and ``gunicorn --preload`` with Redis, against real gunicorn
processes and a private redis-server."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from servers import GunicornServer, wait_for

from flask_jpulse_ws.testing import HandshakeRefused, WSTestClient

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("worker_class, args", [("sync", []), ("gthread", ["--threads", "2"])])
def test_a_worker_that_cannot_hold_sockets_refuses_at_once_and_says_how_to_fix_it(
        worker_class, args):
    """Before, the first sockets took the worker's threads, every later request hung, and
    the worker was killed 30 s later. Now each upgrade is refused (HTTP 500) at once, the
    log names the fix, and the worker keeps serving HTTP."""
    srv = GunicornServer(worker_class=worker_class, args=args).start()
    try:
        for _ in range(3):  # more upgrades than the worker has threads
            started = time.monotonic()
            with pytest.raises(HandshakeRefused) as refused:
                WSTestClient(srv.ws_url("/api/1/ws/echo"), timeout=5)
            assert refused.value.status == 500 and time.monotonic() - started < 3
            assert b"-k gevent" in refused.value.body
        assert srv.http().get("/_test/stats")["openConnections"] == 0  # HTTP still served
        wait_for(lambda: "refusing WebSocket upgrades (HTTP 500)" in srv.log(), timeout=5,
                 message="the log line")
        assert srv.log().count("refusing WebSocket upgrades") == 1  # once, not per request
    finally:
        srv.stop()


def _whoami(srv):
    ws = WSTestClient(srv.ws_url("/api/1/ws/cluster"))
    ws.receive(type="connected")
    return ws, ws.request({"type": "relay"})["data"]["hostId"]


def test_preload_gives_each_worker_its_own_host_id_and_every_broadcast_arrives(redis_server):
    """With ``--preload`` the app is made in the master: every worker used to keep its
    host id and drop the others' messages as its own echo (a broadcast reached 7 of 12
    sockets). Each worker now takes a new id after the fork."""
    srv = GunicornServer(app="cluster_app:create_app()", workers=2, args=["--preload"],
                         settings={"JPULSE_WS_REDIS_URL": redis_server.url}).start()
    clients = []
    try:
        wait_for(lambda: len(srv.worker_pids()) == 2, message="two workers")
        deadline = time.monotonic() + 20
        hosts = set()
        while (len(clients) < 12 or len(hosts) < 2) and time.monotonic() < deadline:
            with ThreadPoolExecutor(6) as pool:  # in parallel: both workers take some
                for ws, host in pool.map(lambda _: _whoami(srv), range(6)):
                    clients.append(ws)
                    hosts.add(host)
        assert len(hosts) == 2, "the two workers share one host id"
        srv.http().post("/_test/broadcast", {"path": "/api/1/ws/cluster",
                                             "data": {"type": "news", "data": "all"}})
        for ws in clients:
            assert ws.receive(type="news")["data"]["data"] == "all"
    finally:
        for ws in clients:
            ws.close()
        srv.stop()


@pytest.mark.parametrize("setting, expected", [(None, 10000), (0, 700)])
def test_a_worker_raises_the_collectors_young_threshold_when_it_first_holds_a_socket(
        setting, expected):
    """A gevent worker starts with CPython's thresholds (700, 10, 10) and raises the young
    one to JPULSE_WS_GC_THRESHOLD (10,000 by default) at its first WebSocket, so that the
    sockets it holds do not cost a full collection for every quarter the heap grows;
    0 leaves the collector alone."""
    settings = {} if setting is None else {"JPULSE_WS_GC_THRESHOLD": setting}
    srv = GunicornServer(settings=settings).start()
    try:
        assert srv.http().get("/_test/gc-threshold")["threshold"] == [700, 10, 10]
        ws = WSTestClient(srv.ws_url("/api/1/ws/echo"))
        ws.receive(type="connected")
        assert srv.http().get("/_test/gc-threshold")["threshold"] == [expected, 10, 10]
        ws.close()
    finally:
        srv.stop()
