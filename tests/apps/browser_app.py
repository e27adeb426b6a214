"""The app the client tests (headless Chromium and the Python client) run against.

``/`` is a page that loads the browser client with ``{{ jpulse_ws_script() }}`` and
a small recorder, ``window.T``, that Playwright drives through ``page.evaluate``.
``/_test/upgrades?path=...`` counts the WebSocket upgrade requests a path received,
so a test can prove that a client stopped trying; ``/_test/resync`` and ``/_test/cut``
push a ``_resync`` and cut a socket without a close frame. Settings come from
``JPULSE_WS_*`` environment variables (JSON values), as in core_app.
"""

import threading
import time

from _env import add_cut_route, settings_from_env
from flask import Flask, jsonify, render_template_string, request
from flask_login import LoginManager, UserMixin, login_user, logout_user

from flask_jpulse_ws import JPulseWS

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>jPulse client test page</title></head>
<body>
{{ jpulse_ws_script() }}
<script>
// The recorder: one entry per path with everything the handle reported, in order.
window.T = {
  handles: {},
  log: {},
  open(path, options) {
    const h = jPulse.ws.connect(path, options || {});
    const rec = {statuses: [h.getStatus()], times: [Date.now()], messages: [], resyncs: [],
                 ids: []};
    this.log[path] = rec;
    this.handles[path] = h;
    h.onStatusChange((status) => {
      rec.statuses.push(status);
      rec.times.push(Date.now());
      if (status === 'connected') rec.ids.push(h.getClientId());
    });
    h.onMessage((frame) => {
      rec.messages.push(frame);
      const type = frame.data && frame.data.type;
      if (type === 'question') h.reply(frame, {answer: 42});
    });
    h.onResync((info) => rec.resyncs.push(info.reason));
    return rec.statuses;
  },
  status(path) { return this.handles[path].getStatus(); },
  last(path) { const s = this.log[path].statuses; return s[s.length - 1]; },
  post(url, form) {
    return fetch(url, {method: 'POST', body: new URLSearchParams(form || {}),
                       credentials: 'same-origin'}).then((r) => r.status);
  },
};
</script>
</body></html>
"""

USERS = {"alice", "bob"}
_upgrades = {}
_upgrades_lock = threading.Lock()


class User(UserMixin):
    def __init__(self, username):
        self.id = username
        self.username = username
        self.roles = []


def create_app():
    app = Flask(__name__)
    app.secret_key = "browser-test-secret"
    settings_from_env(app)
    login = LoginManager(app)

    @login.user_loader
    def load(user_id):
        return User(user_id) if user_id in USERS else None

    @app.before_request
    def count_upgrades():
        if request.headers.get("Upgrade", "").lower() == "websocket":
            with _upgrades_lock:
                _upgrades[request.path] = _upgrades.get(request.path, 0) + 1

    ws = JPulseWS(app)
    echo = ws.namespace("/api/1/ws/echo")

    def on_create(req, ctx):
        if ctx.params["name"].startswith("busy"):
            return 4500  # an application "try later" code: the client backs off and retries
        return ctx

    rooms = ws.namespace("/api/1/ws/room/:name", on_create=on_create)
    secure = ws.namespace("/api/1/ws/secure/:name", require_auth=True)
    ws.namespace("/api/1/ws/hist/:name", history_size=200)

    def answer(conn, ns):
        msg = conn.message
        t = msg["type"]
        if t == "whoami":
            conn.reply({"clientId": conn.client_id, "username": conn.ctx.username})
        elif t == "broadcast":
            ns.broadcast({"type": "broadcast", "data": msg.get("data")}, conn.ctx)
        elif t == "slow":
            time.sleep(float(msg.get("seconds", 1)))  # a greenlet sleep under gevent
            conn.reply({"late": True})

    echo.on_message(lambda conn: answer(conn, echo))
    rooms.on_message(lambda conn: answer(conn, rooms))
    secure.on_message(lambda conn: answer(conn, secure))

    @app.get("/")
    def page():
        return render_template_string(PAGE)

    @app.post("/login")
    def do_login():
        name = request.values.get("username") or (request.get_json(silent=True) or {}).get(
            "username")
        if name not in USERS:
            return "unknown user", 403
        login_user(User(name))
        return "ok"

    @app.post("/logout")
    def do_logout():
        logout_user()
        return "ok"

    @app.post("/_test/ask")
    def ask():
        # From an HTTP request: the server asks a client that did not ask first.
        body = request.get_json()
        ns = ws.get_namespace(body["path"])
        if ns is None:
            return jsonify(None), 404
        return jsonify(ns.request(body["clientId"], {"type": "question", "data": {}},
                                  timeout=body.get("timeout", 2)))

    @app.post("/_test/burst")
    def burst():
        body = request.get_json()
        pad = {"pad": "x" * body["pad"]} if body.get("pad") else {}  # large frames
        for seq in range(body["count"]):
            ws.broadcast(body["path"], {"type": "tick", "data": {"seq": body.get("start", 0)
                                                                  + seq, **pad}})
        return jsonify(sent=body["count"])

    @app.post("/_test/resync")
    def resync():
        """``_resync`` to every client of this process, as after a relay gap."""
        body = request.get_json()
        return jsonify(sent=app.extensions["jpulse_ws"].fanout.resync_all(body["reason"]))

    add_cut_route(app, ws)

    @app.post("/_test/send")
    def send():
        body = request.get_json()
        return jsonify(local=ws.send_to_client(body["path"], body["clientId"], body["data"]))

    @app.get("/_test/upgrades")
    def upgrades():
        with _upgrades_lock:
            return jsonify(count=_upgrades.get(request.args["path"], 0))

    return app
