from flask import Flask

from flask_jpulse_ws import JPulseWS

app = Flask(__name__)
app.config.update(
    JPULSE_WS_METRICS_URL="/metrics",  # needs: pip install "flask-jpulse-ws[metrics]"
    # Who may read it; loopback only unless you say otherwise (here: a Prometheus on
    # the private network as well).
    JPULSE_WS_METRICS_ALLOWED_IPS=["127.0.0.1", "::1", "10.0.0.0/8"],
    # With Redis, one scrape of any worker returns every worker's figures:
    # JPULSE_WS_REDIS_URL="redis://10.0.0.5:6379/0",
)
ws = JPulseWS(app)
chat = ws.namespace("/api/1/ws/chat")


@chat.on_message
def message(conn):
    chat.broadcast({"type": "chat", "data": conn.message.get("data")}, conn.ctx)
