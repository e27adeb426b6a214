"""flask-jpulse-ws peer (ours), written against docs protocol.md section 5.

Namespace ``/api/1/ws/bench``; client messages:
- ``{"type": "bcast", "data": P}`` -> ``bench.broadcast({"type": "tick", "data": P})``
- ``{"type": "burst", "data": {k, seq, t, pad}}`` -> k broadcasts back to back
- ``{"type": "echo", "requestId": id, "data": D}`` -> ``conn.reply(D)``
``GET /count`` returns ``bench.get_stats()["clientCount"]``.

All load comes from 127.0.0.1, so the per-IP cap and the rate limit are raised.
``BENCH_HISTORY_SIZE`` turns on missed-message history (``history_size=``) when set.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import GC_THRESHOLD, HISTORY_SIZE, PING_INTERVAL, REDIS_URL  # noqa: E402
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
)
if GC_THRESHOLD is not None:  # an A/B run by hand: 0 leaves the collector alone
    app.config["JPULSE_WS_GC_THRESHOLD"] = int(GC_THRESHOLD)
ws = JPulseWS(app)

_ns_kwargs = {}
if HISTORY_SIZE:
    _ns_kwargs["history_size"] = HISTORY_SIZE
bench = ws.namespace("/api/1/ws/bench", **_ns_kwargs)


@bench.on_message
def on_message(conn):
    msg = conn.message
    kind = msg.get("type")
    if kind == "bcast":
        bench.broadcast({"type": "tick", "data": msg.get("data")})
    elif kind == "burst":
        req = msg["data"]
        seq, t, pad = int(req["seq"]), req["t"], req.get("pad", "")
        for i in range(int(req.get("k", 1))):
            bench.broadcast({"type": "tick", "data": {"seq": seq + i, "t": t, "pad": pad}})
    elif kind == "echo":
        conn.reply(msg.get("data"))


@app.get("/count")
def count():
    return jsonify(count=bench.get_stats()["clientCount"], pid=os.getpid())
