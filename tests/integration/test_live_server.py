"""The example test of docs/client.md: an app tested through a real server with
``flask_jpulse_ws.testing.live_server``, logged in through the app's own login route.

Copy it into your suite and replace ``create_app`` with your app factory.
"""

import pytest
from flask import Flask, request
from flask_login import LoginManager, UserMixin, login_user

from flask_jpulse_ws import JPulseWS
from flask_jpulse_ws.client import connect
from flask_jpulse_ws.testing import live_server


# --- the application under test (yours comes from your package) ----------------------
class User(UserMixin):
    def __init__(self, name):
        self.id = self.username = name


def create_app():
    app = Flask(__name__)
    app.secret_key = "example-secret"
    login = LoginManager(app)
    login.user_loader(User)
    ws = JPulseWS(app)
    chat = ws.namespace("/api/1/ws/chat", require_auth=True)

    @chat.on_message
    def said(conn):
        if conn.message["type"] == "say":
            chat.broadcast({"type": "said", "data": {"text": conn.message.get("text")}},
                           conn.ctx)
        elif conn.message["type"] == "whoami":
            conn.reply({"username": conn.ctx.username})

    @app.post("/login")
    def do_login():
        login_user(User(request.form["username"]))
        return "ok"

    return app


# --- the tests -----------------------------------------------------------------------
@pytest.fixture
def chat_server():
    """The app on a free port, logged in as ann through POST /login."""
    with live_server(create_app(), login=("/login", {"username": "ann"})) as server:
        yield server


def test_logged_in_user_gets_her_message_back(chat_server):
    """A logged-in client says something and receives the broadcast, signed with her name."""
    with chat_server.client("/api/1/ws/chat") as c:  # a WSTestClient with the session cookie
        welcome = c.receive(type="connected")
        assert welcome["data"]["data"]["clientId"]
        c.send({"type": "say", "text": "hi"})
        said = c.receive(type="said", timeout=2)
        assert said["data"]["data"] == {"text": "hi"}
        assert said["data"]["ctx"]["username"] == "ann"


def test_anonymous_client_is_refused_4401():
    """Without logging in, the namespace closes the socket with 4401."""
    with live_server(create_app()) as server:
        with server.client("/api/1/ws/chat") as c:
            assert c.wait_closed(timeout=5) == 4401


def test_python_client_with_the_session_cookie(chat_server):
    """The reconnecting client works in tests too: pass the session's cookies."""
    chat = connect(chat_server.ws_url("/api/1/ws/chat"), cookies=chat_server.cookies)
    try:
        assert chat.wait_connected(5)
        assert chat.request({"type": "whoami"})["data"] == {"username": "ann"}
    finally:
        chat.disconnect()


def test_http_session_is_logged_in(chat_server):
    """server.http is the cookie-keeping session the login went through."""
    assert "session" in chat_server.cookies
    assert chat_server.headers["Cookie"].startswith("session=")
    assert chat_server.http.get("/no-such-page").status == 404
    assert chat_server.url.startswith("http://127.0.0.1:")


def test_two_users_each_in_a_session_of_their_own(chat_server):
    """``server.session(login=...)``: a second browser session, with cookies of its own,
    so a test can have two users without building cookie headers by hand."""
    bob = chat_server.session(login=("/login", {"username": "bob"}))
    with chat_server.client("/api/1/ws/chat") as ann_ws, bob.client("/api/1/ws/chat") as bob_ws:
        ann_ws.receive(type="connected")
        bob_ws.receive(type="connected")
        assert ann_ws.request({"type": "whoami"})["data"] == {"username": "ann"}
        assert bob_ws.request({"type": "whoami"})["data"] == {"username": "bob"}
        bob_ws.send({"type": "say", "text": "hello ann"})
        said = ann_ws.receive(type="said", timeout=2)
        assert said["data"]["ctx"]["username"] == "bob"
    with pytest.raises(AssertionError, match="login through POST /nowhere failed"):
        chat_server.session(login=("/nowhere", {"username": "eve"}))
