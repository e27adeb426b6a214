"""The nginx block of docs/scaling.md, served by a real nginx on a non-default port in
front of a real gunicorn gevent worker (tests/servers.py NginxServer reads the block
from the page, so the docs stay true)."""

import socket

import pytest
from servers import GunicornServer, NginxServer, wait_for

from flask_jpulse_ws.testing import HandshakeRefused, WSTestClient

#: One proxy in front, as docs/scaling.md says to set; the metrics on (docs/metrics.md).
SETTINGS = {"JPULSE_WS_TRUSTED_PROXIES": 1, "JPULSE_WS_METRICS_URL": "/metrics"}


def connect_from(monkeypatch, address):
    """Every TCP connection of this test leaves from ``address`` (any 127.x is this
    machine, but not 127.0.0.1): a client on another host, as nginx sees it."""
    original = socket.create_connection

    def create_connection(target, *args, **kwargs):
        kwargs["source_address"] = (address, 0)
        return original(target, *args[:1], **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture(scope="module")
def proxied():
    """gunicorn (tests/apps/core_app.py) behind nginx; yields ``(nginx, gunicorn)``."""
    app = GunicornServer(settings=SETTINGS).start()
    nginx = NginxServer(f"127.0.0.1:{app.port}").start()
    yield nginx, app
    nginx.stop()
    app.stop()


def test_the_fixture_serves_the_documented_block_unchanged_but_for_address_and_port():
    from servers import docs_nginx_block
    block = docs_nginx_block()
    assert "proxy_set_header Host $http_host;" in block
    assert "proxy_set_header Host $host;" not in block  # drops the port: 403 (issue 18)
    served = NginxServer("127.0.0.1:1").block
    for line in block.splitlines():
        if "listen" not in line and "10.0.0." not in line:
            assert line in served


def test_the_upgrade_goes_through_and_a_broadcast_reaches_the_client(proxied):
    nginx, _ = proxied
    with WSTestClient(nginx.ws_url("/api/1/ws/echo"), headers={"Origin": nginx.origin}) as ws:
        ws.receive(type="connected")
        assert ws.request({"type": "echo", "data": "through nginx"})["data"]["data"] == \
            "through nginx"
        nginx.http().post("/_test/broadcast", {"path": "/api/1/ws/echo",
                                               "data": {"type": "news", "data": 42}})
        assert ws.receive(type="news", timeout=5)["data"]["data"] == 42


def test_the_origin_check_passes_with_the_browsers_origin_and_refuses_another(proxied):
    """The page's origin (http://127.0.0.1:<nginx port>) matches the Host nginx passes on;
    another site's does not."""
    nginx, _ = proxied
    with WSTestClient(nginx.ws_url("/api/1/ws/echo"), headers={"Origin": nginx.origin}) as ws:
        ws.receive(type="connected")
    with pytest.raises(HandshakeRefused) as refused:
        WSTestClient(nginx.ws_url("/api/1/ws/echo"), headers={"Origin": "http://evil.test"})
    assert refused.value.status == 403


def test_the_client_address_reaches_the_app_through_x_forwarded_for(proxied, monkeypatch):
    """Connected from 127.0.0.3, the app sees 127.0.0.3 (not nginx's 127.0.0.1), and an
    X-Forwarded-For the client forged is not believed."""
    nginx, _ = proxied
    connect_from(monkeypatch, "127.0.0.3")
    headers = {"Origin": nginx.origin, "X-Forwarded-For": "203.0.113.66"}
    with WSTestClient(nginx.ws_url("/api/1/ws/echo"), headers=headers) as ws:
        ws.receive(type="connected")
        assert ws.request({"type": "whoami"})["data"]["ip"] == "127.0.0.3"


def test_metrics_through_nginx_are_refused_to_a_remote_client(proxied, monkeypatch):
    """nginx itself connects from loopback, but the check is on the address it forwards:
    a client at 127.0.0.3 gets 403 through the documented block, as the page says."""
    nginx, app = proxied
    assert app.http().request("GET", "/metrics").status == 200  # the machine itself
    connect_from(monkeypatch, "127.0.0.3")
    assert nginx.http().request("GET", "/metrics").status == 403


def test_with_host_instead_of_http_host_every_upgrade_is_refused_and_the_log_says_why():
    """The known bug: ``proxy_set_header Host $host`` drops the port, so on a port other
    than 80/443 the same-origin check fails (403); the server's log line names the Host
    and X-Forwarded-Host it compared and the fix."""
    app = GunicornServer(settings=SETTINGS).start()
    try:
        def with_host(block):
            return block.replace("proxy_set_header Host $http_host;",
                                 "proxy_set_header Host $host;")

        with NginxServer(f"127.0.0.1:{app.port}", edit=with_host) as nginx:
            with pytest.raises(HandshakeRefused) as refused:
                WSTestClient(nginx.ws_url("/api/1/ws/echo"), headers={"Origin": nginx.origin})
            assert refused.value.status == 403
        line = wait_for(lambda: [ln for ln in app.log().splitlines()
                                 if "refused WebSocket upgrade from origin" in ln],
                        message="the refusal in the log")[0]
        assert "Host '127.0.0.1'" in line and "X-Forwarded-Host None" in line
        assert "$http_host" in line and "JPULSE_WS_TRUSTED_PROXIES" in line
    finally:
        app.stop()


