"""What the test apps share: settings from the environment, and test-only routes.

tests/servers.py passes a module's SETTINGS as ``JPULSE_WS_*`` environment variables
(JSON-encoded), so one app serves many tunings.
"""

import json
import os

from flask import jsonify, request


def settings_from_env(app):
    for key, value in os.environ.items():
        if key.startswith("JPULSE_WS_"):
            app.config[key] = json.loads(value)


def add_cut_route(app, ws):
    """``POST /_test/cut {path, clientId}``: cut a client's TCP connection without a close
    frame (a network failure)."""

    @app.post("/_test/cut")
    def cut():
        body = request.get_json()
        ns = ws.get_namespace(body["path"])
        conn = ns.clients.get(body["clientId"]) if ns else None
        if conn is None:
            return jsonify(cut=False)
        conn.terminate(None)
        return jsonify(cut=True)
