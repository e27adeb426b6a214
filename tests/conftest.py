import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import (  # noqa: E402
    GunicornServer,
    RedisClusterServers,
    RedisServer,
    SentinelServer,
    wait_for,
)


@pytest.fixture(scope="module")
def server(request):
    """A gevent gunicorn serving tests/apps/core_app.py; a module may set SETTINGS."""
    settings = getattr(request.module, "SETTINGS", {})
    srv = GunicornServer(settings=settings).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server():
    """Start extra servers inside a test; all stopped at its end."""
    started = []

    def make(**kwargs):
        srv = GunicornServer(**kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def redis_server():
    srv = RedisServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def redis_cluster_nodes():
    """A private Redis Cluster (3 masters, 3 replicas) shared by the tests that run on
    both topologies; a test that kills nodes starts its own."""
    nodes = RedisClusterServers(masters=3, replicas=1).start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="session")
def redis_sentinel_url():
    """A master, its replica and a Sentinel watching them (a test that fails the master
    over starts its own): the ``redis+sentinel://`` URL."""
    import redis as redis_py

    master = RedisServer().start()
    replica = RedisServer(args=["--replicaof", "127.0.0.1", str(master.port)]).start()
    sentinel = SentinelServer(master.port).start()

    def replica_known():
        with redis_py.Redis(port=sentinel.port, socket_timeout=2) as r:
            return len(r.sentinel_slaves(sentinel.service)) == 1
    wait_for(replica_known, timeout=15, message="sentinel sees the replica")
    yield sentinel.url()
    for srv in (sentinel, replica, master):
        srv.stop()


@pytest.fixture(scope="module", params=["single", "sentinel", "cluster"])
def relay_url(request):
    """``JPULSE_WS_REDIS_URL`` of one Redis, of a Redis behind Sentinel, then of a Redis
    Cluster: a module whose server fixture takes it runs every test on each topology."""
    if request.param == "single":
        return request.getfixturevalue("redis_server").url
    if request.param == "sentinel":
        return request.getfixturevalue("redis_sentinel_url")
    return request.getfixturevalue("redis_cluster_nodes").url


#: tests/apps/browser_app.py, shared by the browser tests and the Python client's tests:
#: pings every 0.5 s, a generous pong timeout (idle pages may be throttled).
BROWSER_APP = "browser_app:create_app()"
BROWSER_SETTINGS = {"JPULSE_WS_PING_INTERVAL": 0.5, "JPULSE_WS_PONG_TIMEOUT": 10}


@pytest.fixture(scope="module")
def app_server():
    """tests/apps/browser_app.py under gunicorn -k gevent, shared by the module."""
    srv = GunicornServer(app=BROWSER_APP, settings=BROWSER_SETTINGS).start()
    yield srv
    srv.stop()


@pytest.fixture
def own_server():
    """``own_server(port=None)``: a browser_app server a test may kill, restart on the
    same port, or freeze; all stopped at the test's end."""
    started = []

    def make(port=None):
        srv = GunicornServer(app=BROWSER_APP, settings=BROWSER_SETTINGS, port=port).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
