"""The app the integration tests run under real gunicorn gevent workers.

Settings come from ``JPULSE_WS_*`` environment variables (JSON values), so each
test module can start a server tuned for what it checks. Test-only HTTP routes
under /_test/ expose server-side calls (broadcast, stats, logout...).
"""

import gc
import os
import time

from _env import add_cut_route, settings_from_env
from flask import Flask, g, has_app_context, has_request_context, jsonify, request, session
from flask.globals import app_ctx as flask_app_ctx
from flask_login import LoginManager, UserMixin, login_user, logout_user

from flask_jpulse_ws import Context, JPulseWS, WSError

USERS = {
    "alice": {"roles": ["admin"], "first_name": "Alice", "last_name": "Admin"},
    "bob": {"roles": ["user"], "first_name": "Bob", "last_name": "User"},
}
DELETED = set()
INACTIVE = set()


class User(UserMixin):
    def __init__(self, username):
        self.id = username
        self.username = username
        info = USERS[username]
        self.roles = info["roles"]
        self.first_name = info["first_name"]
        self.last_name = info["last_name"]

    @property
    def is_active(self):
        return self.id not in INACTIVE


def ctx_fields(ctx):
    """Every server-side field of a context, for tests to compare."""
    return {"username": ctx.username, "user_id": ctx.user_id, "roles": list(ctx.roles),
            "first_name": ctx.first_name, "last_name": ctx.last_name,
            "initials": ctx.initials, "is_public": ctx.is_public, "ip": ctx.ip,
            "namespace": ctx.namespace}


def create_app():
    app = Flask(__name__)
    app.secret_key = "test-secret"
    settings_from_env(app)
    login = LoginManager(app)

    @login.user_loader
    def load(user_id):
        if user_id in DELETED or user_id not in USERS:
            return None
        return User(user_id)

    teardowns = []
    # The handlers' app context of each echo client that sent "g", and the teardowns each
    # such context saw (one per message, one more when it is popped), as on_disconnect
    # found them. Only contexts held here are counted: ids of freed ones are reused.
    handler_ctx_of, teardowns_by_ctx, teardowns_at_disconnect = {}, {}, {}

    @app.teardown_appcontext
    def count_teardown(exc):
        teardowns.append(exc)
        current = flask_app_ctx._get_current_object()
        if any(held is current for held in handler_ctx_of.values()):
            teardowns_by_ctx[id(current)] = teardowns_by_ctx.get(id(current), 0) + 1

    ws = JPulseWS(app)
    echo = ws.namespace("/api/1/ws/echo")
    secure = ws.namespace("/api/1/ws/secure", require_auth=True)
    admin = ws.namespace("/api/1/ws/admin-only", require_roles=["admin"])
    small = ws.namespace("/api/1/ws/small", message_limits={"maxSize": 100,
                                                            "maxMessages": 3,
                                                            "interval": 1000})

    def on_create(req, ctx):
        room = ctx.params["room"]
        if room == "forbidden":
            return 4403
        if room == "teapot":
            return 4418
        if room == "bad-code":
            return 99
        if room == "explode":
            raise RuntimeError("boom")
        if room == "returns-true":
            return True  # a bool is not a close code
        if room == "returns-text":
            return "yes"
        if room == "returns-float":
            return 4403.0
        if room.startswith("nope"):
            return None
        ctx.extra["room"] = room
        return ctx

    rooms = ws.namespace("/api/1/ws/rooms/:room", on_create=on_create)
    history = ws.namespace("/api/1/ws/history", history_size=100)
    ws.namespace("/api/1/ws/hrooms/:room", history_size=20, history_ttl=60)

    @history.on_message
    def history_message(conn):
        if conn.message["type"] == "whoami":
            conn.reply({"clientId": conn.client_id, "pid": os.getpid()})
    ws.namespace("/api/1/ws/open-rooms/:room")

    @echo.on_message
    def on_echo(conn):
        msg = conn.message
        t = msg["type"]
        if t == "broadcast":
            echo.broadcast({"type": "broadcast", "data": msg.get("data")}, conn.ctx)
        elif t == "whoami":
            conn.reply({"clientId": conn.client_id, "username": conn.ctx.username,
                        "ip": conn.ctx.ip, "sent_username": msg.get("username")})
        elif t == "ctx":
            conn.reply(ctx_fields(conn.ctx))
        elif t == "fail":
            raise WSError("You asked for it", "ASKED", {"why": "test"})
        elif t == "crash":
            raise ZeroDivisionError("secret internals")
        elif t == "silent":
            pass
        elif t == "ask-me":
            result = echo.request(conn.client_id, {"type": "question", "data": {}},
                                  timeout=msg.get("timeout", 2), ctx=conn.ctx)
            conn.reply(result)
        elif t == "echo":
            conn.reply(msg)
        elif t == "contexts":
            conn.reply({"request": has_request_context(),
                        "app": has_app_context()})
        elif t == "g":  # what an earlier message left in g, and the teardowns so far
            handler_ctx_of[conn.client_id] = flask_app_ctx._get_current_object()
            left, g.mark = g.get("mark"), msg.get("mark")
            conn.reply({"left": left, "teardowns": len(teardowns)})
        elif t == "sleep":
            import time
            time.sleep(msg.get("seconds", 1))  # cooperative under gevent's monkey-patching
            conn.reply({"slept": True})

    @echo.on_disconnect
    def echo_left(conn):
        handler_ctx = handler_ctx_of.pop(conn.client_id, None)
        if handler_ctx is not None:
            teardowns_at_disconnect[conn.client_id] = teardowns_by_ctx.pop(id(handler_ctx), 0)

    @app.get("/_test/teardowns-at-disconnect/<client_id>")
    def http_teardowns_at_disconnect(client_id):
        return jsonify({"teardowns": teardowns_at_disconnect.get(client_id)})

    @secure.on_message
    def on_secure(conn):
        conn.reply({"username": conn.ctx.username})

    @admin.on_message
    def on_admin(conn):
        conn.reply({"ok": True})

    @small.on_message
    def on_small(conn):
        conn.reply({"ok": True})

    @rooms.on_connect
    def room_join(conn):
        rooms.broadcast({"type": "joined", "data": {"room": conn.ctx.extra["room"]}},
                        conn.ctx)

    @rooms.on_message
    def room_message(conn):
        rooms.broadcast({"type": "say", "data": conn.message.get("data")}, conn.ctx)

    @app.post("/_test/login/<name>")
    def do_login(name):
        login_user(User(name))
        return "ok"

    @app.post("/_test/login-without-signal/<name>")
    def login_without_signal(name):
        # What a session logged in before the extension was installed looks like.
        session["_user_id"] = name
        session["_fresh"] = True
        return "ok"

    @app.post("/_test/logout")
    def do_logout():
        logout_user()
        return "ok"

    @app.post("/_test/delete/<name>")
    def delete_user(name):
        DELETED.add(name)
        return "ok"

    @app.post("/_test/deactivate/<name>")
    def deactivate(name):
        INACTIVE.add(name)
        return "ok"

    @app.post("/_test/demote/<name>")
    def demote(name):
        USERS[name]["roles"] = []
        return "ok"

    @app.post("/_test/broadcast")
    def http_broadcast():
        body = request.get_json()
        n = ws.broadcast(body["path"], body["data"], ws.broadcast_context())
        return jsonify(local=n)

    @app.get("/_test/context")
    def http_context():
        """The server-side context ``ws.broadcast_context()`` gives this HTTP caller."""
        return jsonify(ctx_fields(ws.broadcast_context()))

    @app.post("/_test/burst")
    def http_burst():
        """Broadcast ``count`` numbered frames of ``size`` bytes, back to back."""
        body = request.get_json()
        pad = "x" * body.get("size", 10)
        for seq in range(body["count"]):
            ws.broadcast(body["path"], {"type": "burst", "data": {"seq": seq, "pad": pad}})
        return jsonify(sent=body["count"])

    add_cut_route(app, ws)
    add_faults_after_upgrade(app, ws)
    add_typed_handlers(ws)

    @app.post("/_test/send-user")
    def http_send_user():
        body = request.get_json()
        return jsonify(local=ws.send_to_user(body["userId"], body["data"], body.get("path")))

    @app.post("/_test/send")
    def http_send():
        body = request.get_json()
        ok = ws.send_to_client(body["path"], body["clientId"], body["data"])
        return jsonify(local=ok)

    @app.post("/_test/remove")
    def http_remove():
        body = request.get_json()
        return jsonify(removed=ws.remove_namespace(body["path"],
                                                   body.get("remove_if_empty", False)))

    @app.get("/_test/stats")
    def http_stats():
        return jsonify(ws.get_stats())

    @app.get("/_test/gc-threshold")
    def http_gc_threshold():
        return jsonify(threshold=gc.get_threshold())

    accept_probe = {"active": 0}

    @app.get("/_test/accept-probe")
    def http_accept_probe():
        """10 ms of CPU (a loop turn as long as a busy worker's), then 50 ms asleep, then
        how many of these requests this worker holds. A worker that accepts one connection
        per loop turn holds a handful; one that accepts a batch holds the whole batch."""
        accept_probe["active"] += 1
        try:
            busy_until = time.perf_counter() + 0.010
            while time.perf_counter() < busy_until:
                pass
            time.sleep(0.050)  # gevent's sleep in a gevent worker
            return jsonify(pid=os.getpid(), active=accept_probe["active"])
        finally:
            accept_probe["active"] -= 1

    @app.get("/_test/stand-ins")
    def http_stand_ins():
        """Stand-in readers alive (tasks that read for a connection whose handler waits)."""
        import gc

        import gevent
        alive = [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet)
                 and not g.dead and getattr(getattr(g, "_run", None), "__name__", "") ==
                 "_read_for_blocked_handler"]
        return jsonify({"alive": len(alive)})

    @app.get("/_test/namespace")
    def http_namespace():
        ns = ws.get_namespace(request.args["path"])
        return jsonify(ns.get_stats() if ns else None)

    return app


def create_loader_app():
    """No flask-login: identities come from ``JPulseWS(context_loader=...)``, here from
    an ``X-User`` request header (what an app behind an auth proxy might do)."""
    app = Flask(__name__)
    settings_from_env(app)

    def load_context(ip):
        name = request.headers.get("X-User", "")
        if not name:
            return Context(ip=ip)
        return Context(username=name, ip=ip, roles=("staff",), first_name="Grace",
                       last_name="Hopper", initials="GH", user_id=name)

    ws = JPulseWS(app, context_loader=load_context)
    staff = ws.namespace("/api/1/ws/staff", require_roles=["staff"])

    @staff.on_message
    def on_staff(conn):
        if conn.message["type"] == "ctx":
            conn.reply(ctx_fields(conn.ctx))
        else:
            staff.broadcast({"type": "said", "data": conn.message.get("data")}, conn.ctx)

    @app.get("/_test/context")
    def http_context():
        return jsonify(ctx_fields(ws.broadcast_context()))

    @app.post("/_test/broadcast")
    def http_broadcast():
        body = request.get_json()
        return jsonify(local=ws.broadcast(body["path"], body["data"],
                                          ws.broadcast_context()))

    return app


def add_faults_after_upgrade(app, ws):
    """A library failing under the handshake after the 101, as redis-py did in 0.1.0
    (ValueError from a socket closed under the id claim): ``/api/1/ws/faulty/admit``
    fails during admission, ``/api/1/ws/faulty/join`` while joining. The server must
    answer with a close frame (1011), never with an HTTP 500 in the WebSocket stream."""
    ws.namespace("/api/1/ws/faulty/:phase")
    state = app.extensions["jpulse_ws"]
    get_or_create, add_activity = state.registry.get_or_create, state.activity.add

    def failing_get_or_create(template, path, params):
        if path == "/api/1/ws/faulty/admit":
            raise ValueError("I/O operation on closed file")
        return get_or_create(template, path, params)

    def failing_add_activity(now, path, *args):
        if path == "/api/1/ws/faulty/join":
            raise OSError(9, "Bad file descriptor")
        return add_activity(now, path, *args)

    state.registry.get_or_create = failing_get_or_create
    state.activity.add = failing_add_activity


def add_typed_handlers(ws):
    """``/api/1/ws/typed``: a handler per message type, ``on_message`` for the rest."""
    typed = ws.namespace("/api/1/ws/typed")

    @typed.on("add")
    def add(conn):
        conn.reply({"sum": sum(conn.message["data"])})

    @typed.on("shout")
    def shout(conn):
        conn.reply({"text": str(conn.message["data"]).upper()})

    @typed.on_message
    def anything_else(conn):
        conn.reply({"fallback": conn.message["type"]})

