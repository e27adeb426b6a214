"""``flask jpulse-ws``: run as a user would (``flask --app ...`` in its own process)
against real gunicorn workers sharing a private redis-server."""

import json
import os
import subprocess
import time

import pytest
from servers import APPS, BIN, ROOT, GunicornServer, wait_for
from test_cluster import open_spread

from flask_jpulse_ws.testing import WSTestClient

pytestmark = pytest.mark.cluster
APP = "cluster_app:create_app()"
NS = "/api/1/ws/cluster"


#: Keys of their own: rows of servers of other test modules (same redis-server) linger
#: for their TTL after those servers stop.
PREFIX = "cli-test"


def flask_cli(*args, redis_url=None, timeout=30):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(APPS)]),
               JPULSE_WS_CHANNEL_PREFIX=json.dumps(PREFIX))
    env.pop("JPULSE_WS_REDIS_URL", None)
    if redis_url:
        env["JPULSE_WS_REDIS_URL"] = json.dumps(redis_url)  # the test apps read JSON
    return subprocess.run([str(BIN / "flask"), "--app", APP, "jpulse-ws", *args], env=env,
                          cwd=str(APPS), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workers(redis_server):
    srv = GunicornServer(app=APP, workers=2,
                         settings={"JPULSE_WS_REDIS_URL": redis_server.url,
                                   "JPULSE_WS_CHANNEL_PREFIX": PREFIX}).start()
    wait_for(lambda: len(srv.worker_pids()) == 2, message="two workers")
    yield srv
    srv.stop()


def test_namespaces_lists_what_is_declared_without_redis():
    out = flask_cli("namespaces")
    assert out.returncode == 0, out.stderr
    declared = {n["path"]: n for n in json.loads(out.stdout)["declared"]}
    assert declared["/api/1/ws/cluster-rooms/:room"]["pattern"] is True
    assert declared["/api/1/ws/cluster-secure"]["requireAuth"] is True
    assert "live" not in json.loads(out.stdout)


def test_commands_that_need_the_servers_say_so_without_redis():
    out = flask_cli("stats")
    assert out.returncode == 1 and "needs JPULSE_WS_REDIS_URL" in out.stderr


def test_broadcast_and_send_reach_clients_on_every_worker(workers, redis_server):
    clients = []
    try:
        for _ in range(4):
            ws = WSTestClient(workers.ws_url(NS))
            ws.receive(type="connected")
            clients.append(ws)
        out = flask_cli("broadcast", NS, '{"type": "news", "data": "from the shell"}',
                        redis_url=redis_server.url)
        assert out.returncode == 0, out.stderr
        for ws in clients:
            assert ws.receive(type="news")["data"]["data"] == "from the shell"
        target = clients[0].request({"type": "whoami"})["data"]["clientId"]
        out = flask_cli("send", NS, target, '{"type": "dm", "data": "just you"}',
                        redis_url=redis_server.url)
        assert out.returncode == 0, out.stderr
        assert clients[0].receive(type="dm")["data"]["data"] == "just you"
    finally:
        for ws in clients:
            ws.close()


def test_stats_cluster_has_one_row_per_worker_and_the_totals(workers, redis_server):
    # Clients on both workers: a worker that has served nobody yet publishes no row.
    clients = [c.ws for c in open_spread(workers, 3, path=NS, workers=2)]
    try:
        def rows():
            out = flask_cli("stats", "--cluster", redis_url=redis_server.url)
            assert out.returncode == 0, out.stderr
            merged = json.loads(out.stdout)
            return merged if merged["totals"]["connections"] == len(clients) else None

        merged = wait_for(rows, timeout=20, interval=0.5, message="the connections counted")
        # the two workers: neither this command's process nor the earlier ones (broadcast,
        # send), which listened to Redis for a moment but serve nobody
        assert sorted(r["pid"] for r in merged["instances"]) == sorted(workers.worker_pids())
        out = flask_cli("stats", redis_url=redis_server.url)
        assert "instances" not in json.loads(out.stdout)
    finally:
        for ws in clients:
            ws.close()


def test_a_bad_message_or_path_is_a_usage_error():
    out = flask_cli("broadcast", NS, "not json", redis_url="redis://127.0.0.1:1/0")
    assert out.returncode == 2 and "not JSON" in out.stderr
    out = flask_cli("broadcast", "/api/1/ws/undeclared", '{"type": "x"}',
                    redis_url="redis://127.0.0.1:1/0")
    assert out.returncode == 2 and "No namespace matches" in out.stderr
    started = time.monotonic()
    out = flask_cli("broadcast", NS, '{"type": "x"}', redis_url="redis://127.0.0.1:1/0")
    assert out.returncode == 1 and "Redis unavailable" in out.stderr  # nobody listens there
    assert time.monotonic() - started < 15
