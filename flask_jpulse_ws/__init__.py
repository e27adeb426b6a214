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

from .connection import Connection
from .context import Context
from .emitter import Emitter
from .errors import CloseCode, ErrorCode, WSError
from .extension import JPulseWS
from .namespace import Namespace, NamespaceTemplate
from .redis_connect import redis_client

__all__ = ["JPulseWS", "Namespace", "NamespaceTemplate", "Connection", "Context",
           "WSError", "CloseCode", "ErrorCode", "Emitter", "redis_client", "__version__"]

__version__ = "0.1.0"
