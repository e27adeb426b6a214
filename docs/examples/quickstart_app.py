from flask import Flask
from flask_jpulse_ws import JPulseWS

app = Flask(__name__)
ws = JPulseWS(app)
chat = ws.namespace("/api/1/ws/chat")


@chat.on_message
def message(conn):
    chat.broadcast({"type": "chat", "data": conn.message.get("data")}, conn.ctx)
