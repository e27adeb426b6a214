"""``JPulseWS``: binds namespaces to Flask apps; one :class:`AppState` per app."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from flask import Blueprint, Flask, current_app, has_app_context, url_for
from markupsafe import Markup

from . import config
from .cluster.backend import Backend, Hooks, make_backend
from .context import Context
from .core import envelope, frames
from .core.stats import ActivityLog
from .errors import CloseCode
from .server import auth, shutdown
from .server.health import HealthScheduler, expire
from .server.namespace import Namespace, NamespaceTemplate, OnCreate, Registry

__all__ = ["JPulseWS", "AppState"]

log = logging.getLogger("flask_jpulse_ws")

EXTENSION_KEY = "jpulse_ws"
_PENDING_KEY = "jpulse_ws_pending"  # blueprint namespaces registered before init_app


class AppState:
    """Everything the extension keeps for one app: settings, namespaces, relay, stats."""

    def __init__(self, ext: JPulseWS, app: Flask, settings: config.Settings,
                 backend: Optional[Backend] = None) -> None:
        self.ext = ext
        self.app = app
        self.settings = settings
        self.started_at = time.time()
        self.registry = Registry(self)
        self.activity = ActivityLog(settings.activity_window, settings.activity_max,
                                    settings.activity_message_chars)
        self.total_connections = 0
        self.total_messages = 0
        self.total_dropped = 0
        self.refused_origins = 0
        self.server_errors = 0  # connections ended by an unexpected exception after the 101
        self.rejections: Dict[int, int] = {}
        self.connections_by_ip: Dict[str, int] = {}
        self.open_connections = 0
        self.health = HealthScheduler(self)
        self.backend = make_backend(settings, backend)
        secret = app.secret_key or settings.channel_prefix
        self.backend.bind(Hooks(apply=self.apply_remote, resync_all=self.resync_all,
                                stats_row=self.instance_stats,
                                find_client=self._find_client),
                          secret.encode() if isinstance(secret, str) else bytes(secret))
        self._presence: Any = None
        self._started = False

    @property
    def presence(self) -> Any:
        """The presence tracker (``presence.PresenceTracker``), made on first use."""
        if self._presence is None:
            from .server.presence import PresenceTracker
            self._presence = PresenceTracker(self)
        return self._presence

    def _find_client(self, path: str, client_id: str) -> Any:
        ns = self.registry.live.get(path)
        return ns.clients.get(client_id) if ns is not None else None

    def ensure_started(self) -> None:
        """Start the health scheduler and the relay listener on first use."""
        if not self._started:
            self._started = True
            self.health.start()
            self.backend.start()
            shutdown.install(self)

    # ---------------------------------------------------------------- admission
    def load_context(self, ip: str) -> Context:
        loader = self.ext.context_loader
        if loader is not None:
            ctx = loader(ip)
            if not isinstance(ctx, Context):
                raise TypeError("context_loader must return a flask_jpulse_ws.Context")
            return ctx
        return auth.current_context(ip)

    def admit_ip(self, ip: str) -> None:
        from .server.handshake import Rejected
        s = self.settings
        if self.open_connections >= s.max_connections:
            raise Rejected(CloseCode.TOO_MANY, "Server full")
        if self.connections_by_ip.get(ip, 0) >= s.max_connections_per_ip:
            raise Rejected(CloseCode.TOO_MANY, "Too many connections from this address")
        self.connections_by_ip[ip] = self.connections_by_ip.get(ip, 0) + 1
        self.open_connections += 1

    def release_ip(self, ip: str) -> None:
        left = self.connections_by_ip.get(ip, 0) - 1
        if left > 0:
            self.connections_by_ip[ip] = left
        else:
            self.connections_by_ip.pop(ip, None)
        self.open_connections -= 1

    def call_handler(self, handler: Optional[Callable[..., Any]], conn: Any,
                     name: str) -> None:
        if handler is None:
            return
        try:
            with self.app.app_context():
                handler(conn)
        except Exception:
            log.exception("%s handler of %s failed", name, conn.namespace.path)

    # ---------------------------------------------------------------- sending
    def _template_of(self, path: str) -> NamespaceTemplate:
        ns = self.registry.live.get(path)
        if ns is not None:
            return ns.template
        match = self.registry.match_concrete(path)
        if match is None:
            raise ValueError(f"No namespace matches {path!r}: declare it with ws.namespace()")
        return match[0]

    def broadcast(self, path: str, data: Dict[str, Any], ctx: Any = None) -> int:
        """Local clients first (no relay round trip), then every other process."""
        template = self._template_of(path)
        wire = envelope.wire_ctx(ctx, self.settings.wire_ctx_fields)
        payload = envelope.encode_success(data, wire)
        if template.history_size:
            return self._broadcast_with_history(template, path, payload, data.get("type", ""))
        n = self.deliver_broadcast(path, payload, data.get("type", ""))
        self.backend.publish("broadcast", path=path, payload=payload, type=data.get("type", ""))
        return n

    # ---------------------------------------------------------------- history
    @property
    def history(self) -> Any:
        """Where offsets are assigned: this process, or Redis."""
        return self.backend.history

    def _broadcast_with_history(self, template: NamespaceTemplate, path: str,
                                payload: bytes, msg_type: str) -> int:
        return self.history.broadcast(path, payload, template.history_size,
                                      template.history_ttl, msg_type,
                                      _HistoryDelivery(self, path, payload, msg_type))

    def deliver_history(self, path: str, frame_json: bytes, epoch: str, offset: int,
                        msg_type: str = "") -> int:
        ns = self.registry.live.get(path)
        if ns is None:
            return 0
        n = ns.deliver_history(epoch, offset, frames.text_frame(frame_json))
        ns.record_sent(msg_type, n, "", frame_json)
        return n

    def deliver_broadcast(self, path: str, payload: bytes, msg_type: str = "") -> int:
        ns = self.registry.live.get(path)
        if ns is None:
            return 0
        n = ns.deliver_frame(frames.text_frame(payload))  # encoded once for everyone
        ns.record_sent(msg_type, n, "", payload)
        return n

    def send_to_client(self, path: str, client_id: str, data: Dict[str, Any],
                       ctx: Any = None) -> bool:
        """True when the client is local; otherwise the relay carries it."""
        self._template_of(path)
        wire = envelope.wire_ctx(ctx, self.settings.wire_ctx_fields)
        payload = envelope.encode_success(data, wire)
        if self.deliver_to_client(path, client_id, payload, data.get("type", "")):
            return True
        self.backend.publish("send", path=path, clientId=client_id, payload=payload,
                             type=data.get("type", ""))
        return False

    def request(self, path: str, client_id: str, data: Dict[str, Any], timeout: float = 30.0,
                ctx: Any = None) -> Dict[str, Any]:
        """Ask one client, on whichever process holds it, and wait for its reply."""
        self._template_of(path)
        ns = self.registry.live.get(path)
        conn = ns.clients.get(client_id) if ns is not None else None
        if conn is not None:
            return conn.request(data, timeout, ctx)
        return self.backend.ask(path, client_id, data, timeout, ctx)

    def deliver_to_client(self, path: str, client_id: str, payload: bytes,
                          msg_type: str = "") -> bool:
        ns = self.registry.live.get(path)
        conn = ns.clients.get(client_id) if ns is not None else None
        if conn is None or not conn.send_raw_json(payload):
            return False
        ns.record_sent(msg_type, 1, "", payload)  # type: ignore[union-attr]
        return True

    def resync_all(self, reason: str) -> int:
        """Tell every local client it may have missed messages (``_resync``)."""
        frame = frames.text_frame(envelope.encode_framework("_resync", {"reason": reason}))
        return sum(ns.deliver_frame(frame) for ns in tuple(self.registry.live.values()))

    # ---------------------------------------------------------------- namespaces
    def get_namespace(self, path: str) -> Optional[Namespace]:
        return self.registry.live.get(path)

    def remove_namespace(self, path: str, remove_if_empty: bool = False,
                         _relay: bool = True) -> bool:
        ns = self.registry.live.get(path)
        if ns is not None:
            if remove_if_empty and ns.clients:
                return False
            self.registry.remove(path)
            ns.close_all(CloseCode.NOT_FOUND, "Namespace removed")
        if not remove_if_empty:
            self.history.drop(path)  # also a swept room's stream: a new room starts afresh
            if _relay:
                self.backend.publish("remove", path=path)
        return ns is not None

    def presence_of(self, path: str, stats: bool) -> Any:
        """Presence of a concrete path, even when no local client holds it."""
        match = self.registry.match_concrete(path)
        if match is None:
            raise ValueError(f"No namespace matches {path!r}: declare it with ws.namespace()")
        if not match[0].has_presence:
            raise ValueError(f"{path} has no presence: declare it with presence=True")
        return self.presence.stats(path) if stats else self.presence.members(path)

    def sweep_namespaces(self) -> None:
        # A swept room's history stays for its TTL: its clients may still come back.
        self.registry.sweep_empty(time.monotonic(), self.settings.dynamic_grace)

    # ---------------------------------------------------------------- sessions
    def revoke_session(self, token: Any, _relay: bool = True) -> int:
        """Close every socket opened with this browser login session (4401)."""
        if not isinstance(token, str) or not token:
            return 0  # anonymous sockets have no token: "no token" must match nobody
        n = 0
        for conn in list(self.registry.connections()):
            if conn.session_token == token:
                expire(conn)
                n += 1
        if _relay:
            self.backend.publish("revoke", token=token)
        return n

    def apply_remote(self, message: Dict[str, Any]) -> None:
        """Apply an operation another process published."""
        op = message.get("op")
        if op == "broadcast":
            self.deliver_broadcast(message["path"], _bytes(message["payload"]),
                                   str(message.get("type") or ""))
        elif op == "send":
            self.deliver_to_client(message["path"], message["clientId"],
                                   _bytes(message["payload"]), str(message.get("type") or ""))
        elif op == "remove":
            self.remove_namespace(message["path"], _relay=False)
        elif op == "revoke":
            self.revoke_session(message.get("token"), _relay=False)
        elif op == "hbroadcast":  # a broadcast with a history position, from Redis
            self.deliver_history(message["path"], _bytes(message["payload"]),
                                 str(message["epoch"]), int(message["offset"]),
                                 str(message.get("type") or ""))
        elif op == "presence":  # members joined or left on another process
            self.presence.apply_remote(message)
        elif op == "resync":  # a process dropped messages for these paths (Redis outage)
            self.resync_paths(message.get("paths"), "relay-gap")
        else:
            log.warning("ignoring relayed operation %r", op)

    # ---------------------------------------------------------------- stats
    def get_stats(self, cluster: bool = False) -> Dict[str, Any]:
        now = time.time()
        namespaces = [ns.get_stats() for ns in tuple(self.registry.live.values())]
        out = {
            "uptime": round(now - self.started_at, 3),
            "totalConnections": self.total_connections,
            "openConnections": self.open_connections,
            "totalMessages": self.total_messages,
            "totalDropped": self.total_dropped,
            "totalNamespaces": len(namespaces),
            "refusedOrigins": self.refused_origins,
            "serverErrors": self.server_errors,
            "relay": self.backend.status(),
            "namespaces": namespaces,
            "activityLog": self.activity.entries(now),
        }
        out.update(self.backend.extra_stats())
        if cluster:  # every process sharing the relay: per-instance rows plus totals
            out["cluster"] = self.backend.cluster_stats()
        return out

    # ---------------------------------------------------------------- cluster (relay)
    def instance_stats(self) -> Dict[str, Any]:
        """This process's row of the cluster stats (published to Redis with a TTL)."""
        import os
        import socket

        from .core.stats import iso
        live = [(path, len(ns.clients)) for path, ns in tuple(self.registry.live.items())]
        return {
            "instanceId": self.backend.host_id, "pid": os.getpid(),
            "host": socket.gethostname(), "started": iso(self.started_at),
            "updated": iso(time.time()), "connections": self.open_connections,
            "totalMessages": self.total_messages, "degraded": self.backend.degraded,
            "namespaces": [{"path": p, "clients": n} for p, n in live if n][:1000],
        }

    def resync_paths(self, paths: Optional[Sequence[str]], reason: str) -> int:
        """``_resync`` to the local clients of ``paths`` (``None``: every client)."""
        if paths is None:
            return self.resync_all(reason)
        frame = frames.text_frame(envelope.encode_framework("_resync", {"reason": reason}))
        live = self.registry.live
        return sum(live[p].deliver_frame(frame) for p in paths if p in live)


class _HistoryDelivery:
    """Delivers a history namespace's broadcast here, for the history store."""

    __slots__ = ("state", "path", "payload", "msg_type", "live")

    def __init__(self, state: AppState, path: str, payload: bytes, msg_type: str) -> None:
        self.state, self.path, self.payload, self.msg_type = state, path, payload, msg_type
        self.live = path in state.registry.live

    def with_position(self, frame_json: bytes, epoch: str, offset: int) -> int:
        return self.state.deliver_history(self.path, frame_json, epoch, offset, self.msg_type)

    def plain(self) -> int:
        return self.state.deliver_broadcast(self.path, self.payload, self.msg_type)

    def later(self) -> int:
        ns = self.state.registry.live.get(self.path)
        return len(ns.clients) if ns is not None else 0


def _bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class JPulseWS:
    """The Flask extension.

    ::

        ws = JPulseWS(app)            # or ws = JPulseWS(); ws.init_app(app)
        chat = ws.namespace("/api/1/ws/chat")

        @chat.on_message
        def message(conn):
            chat.broadcast({"type": "chat", "data": conn.message.get("data")}, conn.ctx)

    :param app: bind at once; or call :meth:`init_app` later (app factories).
    :param context_loader: ``fn(ip) -> Context`` for apps whose users do not fit
        flask-login's ``current_user`` shape; runs inside the upgrade request.
    :param backend: what ``app`` shares with other processes, made by hand (tests);
        by default one is chosen from ``JPULSE_WS_REDIS_URL``.
    """

    def __init__(self, app: Optional[Flask] = None,
                 context_loader: Optional[Callable[[str], Context]] = None,
                 backend: Optional[Backend] = None) -> None:
        self.context_loader = context_loader
        self._templates: List[NamespaceTemplate] = []
        self._states: List[AppState] = []
        if app is not None:
            self.init_app(app, backend)

    # ---------------------------------------------------------------- binding
    def init_app(self, app: Flask, backend: Optional[Backend] = None) -> None:
        """Bind to ``app``: settings, the WebSocket route, the script, login signals.

        :param backend: a backend made by hand for this app (see :class:`JPulseWS`).
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("JPulseWS is already initialised for this app: call "
                               "init_app(app) once per app, and use one JPulseWS per app")
        for key, value in config.DEFAULTS.items():
            app.config.setdefault(key, value)
        state = AppState(self, app, config.load(app.config), backend)
        app.extensions[EXTENSION_KEY] = state
        for template in self._templates:
            state.registry.add_template(template)
        for template in app.extensions.pop(_PENDING_KEY, []):
            state.registry.add_template(template)
        self._states.append(state)
        app.register_blueprint(self._blueprint(state))
        app.add_template_global(jpulse_ws_script, "jpulse_ws_script")
        self._connect_login_signals(app)

    def _blueprint(self, state: AppState) -> Blueprint:
        from .server.handshake import serve
        bp = Blueprint("jpulse_ws", __name__, static_folder="static",
                       static_url_path="/_jpulse_ws/static")

        def websocket_endpoint(subpath: str) -> Any:
            return serve(state)

        # websocket=True: only upgrade requests match, so the app's own HTTP
        # routes under /api/1/ws/ (if any) are untouched.
        bp.add_url_rule("/api/1/ws/<path:subpath>", "endpoint", websocket_endpoint,
                        websocket=True, strict_slashes=False, merge_slashes=False)
        return bp

    def _connect_login_signals(self, app: Flask) -> None:
        try:
            from flask_login import user_loaded_from_cookie, user_logged_in, user_logged_out
        except ImportError:  # pragma: no cover - flask-login is a dependency
            return
        user_logged_in.connect(auth.ensure_session_token, app, weak=False)
        app.before_request(auth.adopt_session)
        user_loaded_from_cookie.connect(auth.ensure_session_token, app, weak=False)

        def revoke(sender: Any, **_kw: Any) -> None:
            from flask import session
            token = session.pop(auth.SESSION_TOKEN_KEY, None)
            if token:
                sender.extensions[EXTENSION_KEY].revoke_session(token)

        user_logged_out.connect(revoke, app, weak=False)

    def _state(self) -> AppState:
        if has_app_context():
            state = current_app.extensions.get(EXTENSION_KEY)
            if state is not None and state.ext is self:
                return state  # type: ignore[no-any-return]
        if len(self._states) == 1:
            return self._states[0]
        if not self._states:
            raise RuntimeError("JPulseWS is not initialised for any app: call "
                               "ws.init_app(app)")
        raise RuntimeError("JPulseWS serves several apps: call this inside an app context "
                           "(with app.app_context(): ...)")

    # ---------------------------------------------------------------- namespaces
    def namespace(self, path: str, require_auth: bool = False,
                  require_roles: Sequence[str] = (), on_create: Optional[OnCreate] = None,
                  message_limits: Optional[Dict[str, int]] = None,
                  blueprint: Optional[Blueprint] = None, history_size: int = 0,
                  history_ttl: float = 0, presence: bool = False) -> NamespaceTemplate:
        """Declare a namespace (a literal path or a ``:param`` pattern).

        :param require_auth: refuse anonymous clients (4401).
        :param require_roles: accept only users holding any of these roles (4403).
        :param on_create: ``fn(request, ctx)`` for patterns, on every connection:
            return ctx to accept, ``None`` to refuse (4404), or a 4000-4999 close code.
        :param message_limits: ``{"maxSize", "interval", "maxMessages"}`` overrides.
        :param blueprint: bind when the app registers this blueprint.
        :raises ValueError: for a path outside ``/api/1/ws/`` or declared twice.
        """
        template = NamespaceTemplate(self, path, require_auth, require_roles, on_create,
                                     message_limits, history_size, history_ttl, presence)
        if blueprint is not None:
            def bind(setup_state: Any) -> None:
                app = setup_state.app
                state = app.extensions.get(EXTENSION_KEY)
                if state is not None:
                    state.registry.add_template(template)
                else:
                    app.extensions.setdefault(_PENDING_KEY, []).append(template)

            blueprint.record_once(bind)
            return template
        if any(t.path == template.path for t in self._templates):
            raise ValueError(f"Namespace {template.path} is already registered")
        for state in self._states:
            state.registry.add_template(template)
        self._templates.append(template)
        return template

    def get_namespace(self, path: str) -> Optional[Namespace]:
        """The live namespace of the current app at a concrete path, or ``None``."""
        return self._state().get_namespace(path)

    def remove_namespace(self, path: str, remove_if_empty: bool = False) -> bool:
        """Remove a live namespace; forced removal closes its clients 4404."""
        return self._state().remove_namespace(path, remove_if_empty)

    # ---------------------------------------------------------------- sending
    def broadcast(self, path: str, data: Dict[str, Any], ctx: Any = None) -> int:
        """Send ``{type, data}`` to every client of a concrete path, on every process."""
        return self._state().broadcast(path, data, ctx)

    def send_to_client(self, path: str, client_id: str, data: Dict[str, Any],
                       ctx: Any = None) -> bool:
        """Send to one client of a concrete path; True when it is local."""
        return self._state().send_to_client(path, client_id, data, ctx)

    def request(self, path: str, client_id: str, data: Dict[str, Any], timeout: float = 30.0,
                ctx: Any = None) -> Dict[str, Any]:
        """Ask one client of a concrete path, on whichever process holds it; blocks the
        calling greenlet. Returns the reply frame or an error dict (never raises):
        ``NOT_CONNECTED``, ``REQUEST_TIMEOUT`` or ``CONNECTION_LOST``."""
        return self._state().request(path, client_id, data, timeout, ctx)

    def broadcast_context(self, request: Any = None) -> Context:
        """The context of the HTTP caller, for broadcasts made from REST handlers."""
        from flask import request as current_request
        req = request if request is not None else current_request
        state = self._state()
        ip = auth.client_ip(req.environ, state.settings.trusted_proxies)
        return state.load_context(ip)

    def get_stats(self, cluster: bool = False) -> Dict[str, Any]:
        """``uptime``, totals, ``namespaces`` and ``activityLog`` (the seed's shape).

        :param cluster: also ``cluster``: one row per process sharing the Redis relay
            (``instances``) plus ``totals``; with no Redis, this process alone.
        """
        return self._state().get_stats(cluster)


def jpulse_ws_script() -> Markup:
    """``{{ jpulse_ws_script() }}``: the ``<script>`` tag of the browser client."""
    src = url_for("jpulse_ws.static", filename="jpulse-ws.js")
    return Markup('<script src="%s"></script>') % src
