"""Cross-site WebSocket hijacking, in real Chromium: a page on another origin, in the
browser of a logged-in user, cannot open a socket to the app.

The attacker's page is served from another port of the same host, so it is same-site
with the app: Chromium sends the session cookie with its upgrade request, and only the
server's Origin check stands in the way.
"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.browser

ATTACKER_PAGE = b"""<!doctype html>
<title>elsewhere</title>
<script>
  window.events = [];
  const target = new URLSearchParams(location.search).get('target');
  const ws = new WebSocket(target);
  ws.onopen = () => events.push('open');
  ws.onmessage = (e) => events.push('message:' + e.data);
  ws.onerror = () => events.push('error');
  ws.onclose = (e) => events.push('close:' + e.code);
</script>
"""


class _AttackerPage(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server hook
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(ATTACKER_PAGE)))
        self.end_headers()
        self.wfile.write(ATTACKER_PAGE)

    def log_message(self, *args):
        pass


@pytest.fixture
def attacker_site():
    """Base URL of a plain HTTP server on another port: another origin, same site."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_page_on_another_origin_cannot_open_an_authenticated_socket(
        app_server, context, open_page, attacker_site):
    ws_base = app_server.base.replace("http://", "ws://")
    secure = "/api/1/ws/secure/csrf"
    # Alice logs in on the app; her own page opens the secure socket (the control).
    own = open_page(app_server)
    assert own.evaluate("() => T.post('/login', {username: 'alice'})") == 200
    own.evaluate("p => T.open(p)", secure)
    own.wait_for_function("p => T.last(p) === 'connected'", arg=secure)
    assert own.evaluate("p => T.handles[p].request({type: 'whoami'})", secure)[
        "data"]["username"] == "alice"

    # In the same browser (same cookies), a page on another origin tries the same.
    log_before = app_server.log().count("refused WebSocket upgrade from origin")
    evil = context.new_page()
    for path in (secure, "/api/1/ws/echo"):
        evil.goto(f"{attacker_site}/?target={ws_base}{path}")
        evil.wait_for_function("() => events.some(e => e.startsWith('close:'))")
        events = evil.evaluate("() => events")
        assert "open" not in events and not any(e.startswith("message:") for e in events)
        assert events[-1] == "close:1006"  # the upgrade was answered 403, not 101
    log = app_server.log()
    assert log.count("refused WebSocket upgrade from origin") == log_before + 2
    assert repr(attacker_site) in log  # the log names the refused origin
    # Alice's own socket is untouched.
    assert own.evaluate("p => T.last(p)", secure) == "connected"
