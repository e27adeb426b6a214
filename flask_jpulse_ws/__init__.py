"""flask-jpulse-ws: real-time WebSocket namespaces for Flask.

::

    from flask import Flask
    from flask_jpulse_ws import JPulseWS

    app = Flask(__name__)
    ws = JPulseWS(app)
    chat = ws.namespace("/api/1/ws/chat")

    @chat.on_message
    def message(conn):
        chat.broadcast({"type": "chat", "data": conn.message.get("data")}, conn.ctx)
"""

from .cluster.emitter import Emitter
from .cluster.redis_connect import redis_client
from .context import Context
from .errors import CloseCode, ErrorCode, WSError
from .extension import JPulseWS
from .server.connection import Connection
from .server.namespace import Namespace, NamespaceTemplate

__all__ = ["JPulseWS", "Namespace", "NamespaceTemplate", "Connection", "Context",
           "WSError", "CloseCode", "ErrorCode", "Emitter", "redis_client", "__version__"]

__version__ = "0.1.0"
