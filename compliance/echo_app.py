"""The server under test: one echo endpoint on the server's own connection.

Autobahn|Testsuite sends arbitrary text and binary messages and expects each one back,
so this endpoint skips the protocol's envelope (welcome, JSON messages, admission) and
echoes raw messages; everything the suite measures is the real code: the upgrade
response, the frame codec, the reader, the outbound writer and the close handshake
(``Connection`` and ``Outbound``), under gunicorn's gevent worker or werkzeug.

    gunicorn -k gevent -b 127.0.0.1:9002 --chdir compliance 'echo_app:create_app()'
    python compliance/echo_app.py 9003          # werkzeug, threaded
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

from flask import Flask, Response, request

from flask_jpulse_ws.config import Settings
from flask_jpulse_ws.context import Context
from flask_jpulse_ws.core import frames
from flask_jpulse_ws.server.connection import Connection
from flask_jpulse_ws.server.handshake import _ended, _take_socket
from flask_jpulse_ws.server.namespace import Namespace, NamespaceTemplate

PATH = "/api/1/ws/echo"  # the namespace prefix every path needs
MIB = 1024 * 1024
#: The 9.x cases send messages of up to 16 MiB, some in 64-byte fragments (65,536 of
#: them), and read each echo at their own pace: the frame and fragment caps and the
#: slow-consumer bound must let them through (they hold by default, and 1.x-7.x run
#: under the same settings).
SETTINGS = Settings(max_frame_size=20 * MIB, max_fragments=1 << 17,
                    max_queue_bytes=64 * MIB)


class _AppState:
    """What a Namespace reads from its app: the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


def _uncounted(reason: str) -> None:
    pass


def _echo_text(conn: Connection, payload: bytes) -> None:
    conn.send_frame(frames.encode_frame(frames.OP_TEXT, payload))


def _echo_binary(conn: Connection, payload: bytes) -> None:
    conn.send_frame(frames.encode_frame(frames.OP_BINARY, payload))


def create_app() -> Flask:
    app = Flask(__name__)
    namespace = Namespace(_AppState(SETTINGS), NamespaceTemplate(None, PATH), PATH, {})

    @app.route(PATH, websocket=True)  # Werkzeug routes upgrade requests apart
    def echo() -> Any:
        environ = request.environ
        key = str(environ.get("HTTP_SEC_WEBSOCKET_KEY") or "")
        if not frames.valid_client_key(key):
            return Response("Expected a WebSocket upgrade request\n", 400)
        sock, mode = _take_socket(environ)
        sock.sendall(frames.handshake_response(key))
        conn = Connection(sock, namespace, str(uuid.uuid4()), Context(namespace=PATH),
                          settings=SETTINGS, on_drop=_uncounted)
        conn.run(_echo_text, _echo_binary)
        return _ended(mode)

    return app


if __name__ == "__main__":
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", int(sys.argv[1]), create_app(), threaded=True)
