"""The Prometheus text of core/metrics.py, the settings that guard it, and the view's
address check (no server: rows in, text out)."""

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from flask_jpulse_ws import JPulseWS, config
from flask_jpulse_ws.core import metrics
from flask_jpulse_ws.server.metrics import _allowed


def _row(worker, **figures):
    base = {"updatedAt": 100.0, "uptime": 5.0, "connections": 3, "openConnections": 2,
            "messagesIn": 7, "messagesOut": 4, "deliveries": 9,
            "dropped": {"oversize": 1, "rateLimit": 0}, "closes": {"1000": 2, "4503": 1},
            "rejections": {"4529": 1}, "refusedOrigins": 0, "serverErrors": 0,
            "namespaces": 1, "relay": {"degraded": False, "degradedFor": 0, "queued": 0,
                                       "published": 11, "received": 12, "dropped": 0,
                                       "outages": 0}}
    base.update(figures)
    return {"instanceId": worker, "pid": 1, "host": "h", "metrics": base}


def _samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_metric_is_named_jpulse_ws_and_parses():
    """The output is valid text format and every family starts with jpulse_ws_."""
    text = metrics.render([_row("a:1:x")], now=101.0).decode()
    families = list(text_string_to_metric_families(text))
    assert families and all(f.name.startswith("jpulse_ws_") for f in families)


def test_each_workers_figures_carry_its_worker_label():
    """Two rows give two samples of each figure, told apart by the worker label."""
    rows = [_row("a:1:x", messagesIn=7), _row("b:2:y", messagesIn=70, updatedAt=99.5)]
    s = _samples(metrics.render(rows, now=101.0).decode())
    assert s[("jpulse_ws_messages_received_total", (("worker", "a:1:x"),))] == 7
    assert s[("jpulse_ws_messages_received_total", (("worker", "b:2:y"),))] == 70
    assert s[("jpulse_ws_workers", ())] == 2
    assert s[("jpulse_ws_stats_age_seconds", (("worker", "b:2:y"),))] == 1.5


def test_drops_and_closes_are_labelled_by_reason_and_code():
    s = _samples(metrics.render([_row("a:1:x")], now=100.0).decode())
    w = ("worker", "a:1:x")
    assert s[("jpulse_ws_dropped_total", (("reason", "oversize"), w))] == 1
    assert s[("jpulse_ws_closes_total", (("code", "4503"), w))] == 1
    assert s[("jpulse_ws_rejections_total", (("code", "4529"), w))] == 1
    assert s[("jpulse_ws_relay_published_total", (w,))] == 11
    assert s[("jpulse_ws_relay_degraded", (w,))] == 0


def test_a_figure_a_worker_lacks_is_left_out_not_zero():
    """No presence tracker, no Redis link: no sample, rather than a misleading 0."""
    row = _row("a:1:x", relay={"degraded": True, "degradedFor": 3.5})
    s = _samples(metrics.render([row], now=100.0).decode())
    assert ("jpulse_ws_presence_members", (("worker", "a:1:x"),)) not in s
    assert ("jpulse_ws_relay_queued", (("worker", "a:1:x"),)) not in s
    assert s[("jpulse_ws_relay_degraded", (("worker", "a:1:x"),))] == 1
    assert s[("jpulse_ws_relay_degraded_seconds", (("worker", "a:1:x"),))] == 3.5


def test_a_row_without_figures_counts_only_as_a_worker_and_partial_is_flagged():
    rows = [_row("a:1:x"), {"instanceId": "old:2:z", "pid": 2}]
    s = _samples(metrics.render(rows, now=100.0, partial=True).decode())
    assert s[("jpulse_ws_workers", ())] == 2
    assert s[("jpulse_ws_scrape_partial", ())] == 1
    assert not [k for k in s if ("worker", "old:2:z") in k[1]]


def test_a_label_value_from_a_client_cannot_break_the_format():
    """Worker ids come from Redis: quotes and newlines are escaped, not injected."""
    text = metrics.render([_row('evil"\nx{')], now=100.0).decode()
    s = _samples(text)
    assert s[("jpulse_ws_open_connections", (("worker", 'evil"\nx{'),))] == 2


def test_metrics_are_off_by_default_and_loopback_only_when_on():
    assert config.DEFAULTS["JPULSE_WS_METRICS_URL"] is None
    assert set(config.DEFAULTS["JPULSE_WS_METRICS_ALLOWED_IPS"]) == {"127.0.0.1", "::1"}
    app = Flask(__name__)
    JPulseWS(app)
    assert "jpulse_ws_metrics" not in app.view_functions


@pytest.mark.parametrize(("key", "value"), [("JPULSE_WS_METRICS_URL", "metrics"),
                                            ("JPULSE_WS_METRICS_ALLOWED_IPS", "10.0.0.300")])
def test_a_bad_metrics_setting_is_refused_by_name(key, value):
    app = Flask(__name__)
    app.config[key] = value
    with pytest.raises(ValueError, match=key):
        JPulseWS(app)


def test_the_address_check_takes_networks_ipv6_and_mapped_ipv4():
    import ipaddress
    nets = [ipaddress.ip_network(n) for n in ("127.0.0.1", "::1", "10.0.0.0/8")]
    assert _allowed("127.0.0.1", nets) and _allowed("::1", nets)
    assert _allowed("10.9.8.7", nets) and _allowed("::ffff:127.0.0.1", nets)
    assert not _allowed("192.168.1.1", nets) and not _allowed("not-an-ip", nets)


def test_the_view_answers_403_outside_the_allowed_addresses():
    """The address is the one the origin check uses: behind a trusted proxy, the
    forwarded one, so the proxy's own loopback address lets nobody in."""
    app = Flask(__name__)
    app.config.update(JPULSE_WS_METRICS_URL="/metrics", JPULSE_WS_TRUSTED_PROXIES=1)
    JPulseWS(app)
    client = app.test_client()
    local = {"REMOTE_ADDR": "127.0.0.1"}
    assert client.get("/metrics", environ_base=local).status_code == 200
    far = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
    assert client.get("/metrics", environ_base=far).status_code == 403
    ok = client.get("/metrics", environ_base={**local, "HTTP_X_FORWARDED_FOR": "127.0.0.1"})
    assert ok.status_code == 200
    assert ok.headers["Content-Type"] == metrics.CONTENT_TYPE
