"""JPULSE_WS_METRICS_URL under real gunicorn gevent workers: one worker scraped before and
after traffic, a refused source address, and two workers over a private redis-server
seen in one scrape."""

import http.client
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import GunicornServer, wait_for

from flask_jpulse_ws.testing import WSTestClient

SETTINGS = {"JPULSE_WS_METRICS_URL": "/metrics"}


def scrape(server, source="127.0.0.1"):
    """``(status, body)`` of GET /metrics from ``source`` (any 127.x address is local)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), resp.getheader("Content-Type")
    finally:
        conn.close()


def samples(server):
    status, body, _ = scrape(server)
    assert status == 200, body
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(values, name, **labels):
    """The sum over workers of one metric (filtered by the other labels)."""
    return sum(v for (n, lbl), v in values.items() if n == name and
               all((k, str(x)) in lbl for k, x in labels.items()))


def test_a_scrape_is_text_format_with_every_name_prefixed(server):
    status, body, content_type = scrape(server)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body)}
    assert names and all(n.startswith("jpulse_ws_") for n in names)
    assert {"jpulse_ws_open_connections", "jpulse_ws_messages_received",
            "jpulse_ws_deliveries", "jpulse_ws_dropped", "jpulse_ws_closes",
            "jpulse_ws_relay_degraded"} <= names


def test_figures_move_after_traffic(server):
    """Connections, messages in and out, deliveries, drops and closes all count."""
    before = samples(server)
    with WSTestClient(server.ws_url("/api/1/ws/echo")) as ws:
        ws.receive(type="connected")
        for i in range(3):
            assert ws.request({"type": "echo", "data": i})["data"]["data"] == i
        during = samples(server)
        assert total(during, "jpulse_ws_open_connections") >= 1
    with WSTestClient(server.ws_url("/api/1/ws/small")) as small:
        small.receive(type="connected")
        small.send({"type": "x", "data": "y" * 200})  # over its maxSize of 100
        assert small.receive()["code"] == "MESSAGE_TOO_LARGE"

    def moved():
        after = samples(server)
        grew = {name: total(after, name, **lbl) - total(before, name, **lbl)
                for name, lbl in (("jpulse_ws_connections_total", {}),
                                  ("jpulse_ws_messages_received_total", {}),
                                  ("jpulse_ws_messages_sent_total", {}),
                                  ("jpulse_ws_deliveries_total", {}),
                                  ("jpulse_ws_dropped_total", {"reason": "oversize"}),
                                  ("jpulse_ws_closes_total", {"code": 1000}))}
        return grew if grew["jpulse_ws_closes_total"] >= 2 else None

    grew = wait_for(moved, timeout=10, message="the closes counted")
    assert grew["jpulse_ws_connections_total"] == 2
    assert grew["jpulse_ws_messages_received_total"] >= 3
    assert grew["jpulse_ws_messages_sent_total"] >= 3
    assert grew["jpulse_ws_deliveries_total"] >= 3
    assert grew["jpulse_ws_dropped_total"] == 1


def test_a_source_outside_the_allowed_ips_gets_403(server):
    """127.0.0.2 is this machine but not in the default list (127.0.0.1, ::1)."""
    status, body, _ = scrape(server, source="127.0.0.2")
    assert status == 403 and "JPULSE_WS_METRICS_ALLOWED_IPS" in body
    assert scrape(server)[0] == 200


def _whoami(server):
    ws = WSTestClient(server.ws_url("/api/1/ws/cluster"))
    ws.receive(type="connected")
    return ws, ws.request({"type": "whoami"})["data"]["pid"]


@pytest.mark.cluster
def test_one_scrape_shows_both_workers(redis_server):
    """Two workers over a private Redis: a scrape of either lists both, with their
    worker labels, and each one's own connection."""
    srv = GunicornServer(app="cluster_app:create_app()", workers=2,
                         settings={**SETTINGS, "JPULSE_WS_REDIS_URL": redis_server.url,
                                   "JPULSE_WS_CHANNEL_PREFIX": "metrics-test"}).start()
    clients = []
    try:
        wait_for(lambda: len(srv.worker_pids()) == 2, message="two workers")
        deadline = time.monotonic() + 20
        while len({pid for _, pid in clients}) < 2 and time.monotonic() < deadline:
            with ThreadPoolExecutor(6) as pool:  # parallel: the handshakes spread
                clients += list(pool.map(lambda _: _whoami(srv), range(6)))
        assert len({pid for _, pid in clients}) == 2

        def both():
            values = samples(srv)
            workers = {dict(lbl)["worker"] for (n, lbl), _ in values.items()
                       if n == "jpulse_ws_open_connections"}
            ok = (len(workers) == 2 and values[("jpulse_ws_workers", ())] == 2
                  and total(values, "jpulse_ws_open_connections") == len(clients))
            return (workers, values) if ok else None

        workers, values = wait_for(both, timeout=15, message="both workers in one scrape")
        assert {w.split(":")[1] for w in workers} == {str(p) for p in srv.worker_pids()}
        assert values[("jpulse_ws_scrape_partial", ())] == 0
        for w in workers:
            assert values[("jpulse_ws_relay_degraded", (("worker", w),))] == 0
            assert values[("jpulse_ws_relay_queued", (("worker", w),))] >= 0
    finally:
        for ws, _ in clients:
            ws.close()
        srv.stop()
