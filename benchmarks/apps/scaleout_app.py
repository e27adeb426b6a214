"""The server of benchmarks/scaleout.py: rooms (``/api/1/ws/rooms/:room``) over Redis.

A client's ``{"type": "echo", "requestId": id}`` is answered with the pid of the worker
that holds it, so the benchmark knows where each room lives. ``GET /count`` answers
with this worker's pid (readiness). Broadcasts come from the benchmark's publisher
through Redis, as an Emitter's would.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PING_INTERVAL, REDIS_URL  # noqa: E402
from flask import Flask, jsonify  # noqa: E402

from flask_jpulse_ws import JPulseWS  # noqa: E402

app = Flask(__name__)
app.config.update(
    SECRET_KEY="bench",
    JPULSE_WS_ALLOWED_ORIGINS="*",
    JPULSE_WS_PING_INTERVAL=PING_INTERVAL,
    JPULSE_WS_PONG_TIMEOUT=max(20.0, PING_INTERVAL / 2),
    JPULSE_WS_RATE_MAX_MESSAGES=10**9,
    JPULSE_WS_MAX_CONNECTIONS_PER_IP=10**6,
    JPULSE_WS_HANDSHAKE_RATE=0,  # every load-generator client comes from one address
    JPULSE_WS_REDIS_URL=REDIS_URL,
    JPULSE_WS_CHANNEL_PREFIX="bench",
)
ws = JPulseWS(app)
rooms = ws.namespace("/api/1/ws/rooms/:room")


@rooms.on_message
def on_message(conn):
    msg = conn.message
    if msg.get("type") == "echo":
        conn.reply({"pid": os.getpid()})


@app.get("/count")
def count():
    return jsonify(count=0, pid=os.getpid())
