"""Flask-SocketIO peer (async_mode="gevent"), run as ``gunicorn -k gevent``.

Events (all in the default namespace "/"):
- ``bcast`` payload      -> ``emit("tick", payload)`` to every client
- ``burst`` {k, seq, t, pad} -> k ticks back to back, seq .. seq+k-1
- ``echo`` payload with an ack callback -> the ack returns the payload
``GET /count`` returns the number of connected Socket.IO clients (after the manager has
finished its disconnect bookkeeping).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PING_INTERVAL, REDIS_URL  # noqa: E402
from flask import Flask, jsonify  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

app = Flask(__name__)
socketio = SocketIO(
    app,
    async_mode="gevent",
    cors_allowed_origins="*",
    message_queue=REDIS_URL,
    ping_interval=PING_INTERVAL,
    ping_timeout=max(20.0, PING_INTERVAL / 2),
    logger=False,
    engineio_logger=False,
)


@socketio.on("bcast")
def on_bcast(payload):
    socketio.emit("tick", payload)


@socketio.on("burst")
def on_burst(req):
    k = int(req.get("k", 1))
    seq = int(req["seq"])
    t = req["t"]
    pad = req.get("pad", "")
    for i in range(k):
        socketio.emit("tick", {"seq": seq + i, "t": t, "pad": pad})


@socketio.on("echo")
def on_echo(payload):
    return payload


@app.get("/count")
def count():
    try:
        n = len(socketio.server.manager.rooms.get("/", {}).get(None, {}))
    except Exception:  # pragma: no cover - manager internals changed
        n = -1
    return jsonify(count=n, pid=os.getpid())
