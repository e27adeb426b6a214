"""core_app plus what the cluster tests need: which worker holds a client (pid),
cluster stats and a numbered stream, under ``gunicorn -k gevent -w 3``.
"""

import os
import time

from core_app import create_app as create_core_app
from flask import jsonify, request


def create_app():
    app = create_core_app()
    state = app.extensions["jpulse_ws"]
    ws = state.ext
    cluster = ws.namespace("/api/1/ws/cluster")
    cluster_secure = ws.namespace("/api/1/ws/cluster-secure", require_auth=True)

    def on_message(conn):
        msg = conn.message
        if msg["type"] == "whoami":
            conn.reply({"clientId": conn.client_id, "pid": os.getpid(),
                        "username": conn.ctx.username})
        elif msg["type"] == "seq":  # one numbered broadcast to the namespace
            conn.namespace.broadcast({"type": "seq", "data": msg.get("data")})
            if msg.get("requestId") is not None:
                conn.reply({"pid": os.getpid()})
        elif msg["type"] == "dm":  # to a client that may be held by another worker
            local = conn.namespace.send_to_client(msg["to"], {"type": "dm",
                                                              "data": msg.get("data")})
            conn.reply({"local": local, "pid": os.getpid()})
        elif msg["type"] == "ask":  # ask a client that may be held by another worker
            result = conn.namespace.request(msg["to"], {"type": "question",
                                                        "data": msg.get("data")},
                                            timeout=msg.get("timeout", 5), ctx=conn.ctx)
            conn.reply({"result": result, "pid": os.getpid()})
        elif msg["type"] == "relay":  # this worker's relay status (degraded, counters)
            conn.reply(state.backend.status())
        elif msg["type"] == "stats":  # the same, through the public ws.get_stats()
            conn.reply(ws.get_stats()["relay"])

    def on_connect(conn):
        # Hold this worker's loop (no yield) for a moment, so that clients opened in
        # parallel are accepted by the other workers: the spread the tests need.
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass

    rooms = ws.namespace("/api/1/ws/cluster-rooms/:room")
    for ns in (cluster, cluster_secure, rooms):
        ns.on_connect(on_connect)
        ns.on_message(on_message)

    add_claim_gate(app, state)

    @app.get("/_test/pid")
    def pid():
        return jsonify(pid=os.getpid())

    @app.get("/_test/cluster-stats")
    def cluster_stats():
        return jsonify(ws.get_stats(cluster=True))

    @app.post("/_test/ask")
    def ask():
        body = request.get_json()
        result = ws.request(body["path"], body["clientId"], body["data"],
                            timeout=body.get("timeout", 5))
        return jsonify(result=result, pid=os.getpid())

    @app.post("/_test/broadcast-pid")
    def broadcast_pid():
        body = request.get_json()
        end = time.perf_counter() + body.get("spin", 0)  # busy: the next request goes
        while time.perf_counter() < end:                 # to another worker
            pass
        n = ws.broadcast(body["path"], body["data"])
        return jsonify(local=n, pid=os.getpid())

    return app


def add_claim_gate(app, state):
    """Hold handshakes at their client id claim, the step that waits on Redis, so that a
    test can act while a handshake is half done (no timing luck):
    ``POST /_test/claim-gate {path}`` closes the gate for that namespace path,
    ``GET /_test/claim-gate`` counts the handshakes waiting at it,
    ``POST /_test/claim-gate/open`` lets them through."""
    from gevent.event import Event

    claims = getattr(state.backend, "claims", None)
    if claims is None:  # no Redis: nothing is claimed
        return
    gate = {"path": None, "open": Event(), "waiting": 0}
    claim = claims.claim

    def gated_claim(path, client_id, identity):
        if path == gate["path"]:
            gate["waiting"] += 1
            gate["open"].wait()
            gate["waiting"] -= 1
        return claim(path, client_id, identity)

    claims.claim = gated_claim

    @app.post("/_test/claim-gate")
    def close_gate():
        gate["path"], gate["open"] = request.get_json()["path"], Event()
        return jsonify(closed=True)

    @app.get("/_test/claim-gate")
    def gate_waiting():
        return jsonify(waiting=gate["waiting"])

    @app.post("/_test/claim-gate/open")
    def open_gate():
        gate["path"] = None
        gate["open"].set()
        return jsonify(opened=True)
