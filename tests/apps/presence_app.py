"""cluster_app plus presence rooms, for tests/integration/test_presence.py.

``/api/1/ws/presence-rooms/:room`` is declared with ``presence=True``. A client can ask
the worker that holds it for ``presence()``/``presence_stats()`` (``who``), set its
member info (``info``) and learn that worker's pid (``whoami``). The first four clients of
a room on each worker hold that worker's loop for 20 ms in ``on_connect``, so that clients
opened in parallel land on every worker (as in cluster_app); later ones join at full
speed (the 500-client burst).
"""

import os
import time

from cluster_app import create_app as create_cluster_app
from flask import jsonify, render_template_string, request

from flask_jpulse_ws import WSError

ROOMS = "/api/1/ws/presence-rooms/:room"

#: A page for tests/browser/test_presence_browser.py: ``P.join(path)`` connects and
#: records every onPresence event; ``P.ids()`` is the client's member map.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>presence test page</title></head>
<body>
{{ jpulse_ws_script() }}
<script>
window.P = {
  handle: null,
  events: [],
  join(path) {
    this.handle = jPulse.ws.connect(path, {reconnectBaseInterval: 200});
    this.handle.onPresence((e) => this.events.push(e));
  },
  ids() {
    return this.handle ? this.handle.getPresence().map((m) => m.clientId).sort() : [];
  },
};
</script>
</body></html>
"""


def create_app():
    app = create_cluster_app()
    ws = app.extensions["jpulse_ws"].ext
    rooms = ws.namespace(ROOMS, presence=True)

    @rooms.on_connect
    def on_connect(conn):
        if len(conn.namespace.clients) <= 4:
            end = time.perf_counter() + 0.02
            while time.perf_counter() < end:
                pass

    @rooms.on_message
    def on_message(conn):
        msg = conn.message
        if msg["type"] == "whoami":
            conn.reply({"clientId": conn.client_id, "pid": os.getpid(),
                        "username": conn.ctx.username})
        elif msg["type"] == "who":
            conn.reply({"pid": os.getpid(), "members": rooms.presence(conn.ctx),
                        "stats": rooms.presence_stats(conn.ctx)})
        elif msg["type"] == "info":
            try:
                conn.set_presence_info(msg.get("data"))
            except ValueError as exc:
                raise WSError(str(exc), "BAD_INFO") from None
            conn.reply({"ok": True})

    @app.get("/_test/presence-page")
    def presence_page():
        return render_template_string(PAGE)

    @app.get("/_test/presence")
    def http_presence():
        """Server-side presence of a concrete path, from whichever worker answers."""
        where = {"namespace": request.args["path"]}  # a ctx naming the concrete room
        return jsonify(pid=os.getpid(), members=rooms.presence(where),
                       stats=rooms.presence_stats(where))

    return app
