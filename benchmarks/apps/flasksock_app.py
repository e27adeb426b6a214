"""Plain flask-sock peer: a set of ws objects and a broadcast loop over ``ws.send``.

This is what a hand-written Flask WebSocket app usually looks like. Messages are JSON:
- ``{"type": "bcast", "data": P}``  -> ``{"type": "tick", "data": P}`` to every client
- ``{"type": "burst", "data": {k, seq, t, pad}}`` -> k ticks back to back
- ``{"type": "echo", ...}`` -> the same text back
``GET /count`` returns the number of registered sockets.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flask import Flask, jsonify  # noqa: E402
from flask_sock import Sock  # noqa: E402

app = Flask(__name__)
app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": None}
sock = Sock(app)
clients = set()


def broadcast(text):
    for ws in list(clients):
        try:
            ws.send(text)
        except Exception:
            clients.discard(ws)


@sock.route("/ws")
def ws_route(ws):
    clients.add(ws)
    try:
        while True:
            text = ws.receive()
            if text is None:
                break
            msg = json.loads(text)
            kind = msg.get("type")
            if kind == "bcast":
                broadcast(json.dumps({"type": "tick", "data": msg.get("data")}))
            elif kind == "burst":
                req = msg["data"]
                seq, t, pad = int(req["seq"]), req["t"], req.get("pad", "")
                for i in range(int(req.get("k", 1))):
                    tick = {"seq": seq + i, "t": t, "pad": pad}
                    broadcast(json.dumps({"type": "tick", "data": tick}))
            elif kind == "echo":
                ws.send(text)
    finally:
        clients.discard(ws)


@app.get("/count")
def count():
    return jsonify(count=len(clients), pid=os.getpid())
