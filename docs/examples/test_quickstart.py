from flask_jpulse_ws.testing import live_server
from quickstart_app import app


def test_chat_echo():
    with live_server(app) as server:  # the app on a free port, for this block
        with server.client("/api/1/ws/chat") as client:
            client.receive(type="connected")  # the welcome frame comes first
            client.send({"type": "chat", "data": {"text": "hi"}})
            frame = client.receive(type="chat", timeout=2)
            assert frame["data"]["data"] == {"text": "hi"}
