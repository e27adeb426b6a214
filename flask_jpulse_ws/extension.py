"""``JPulseWS``: binds namespaces to Flask apps; one :class:`AppState` per app."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

from flask import Blueprint, Flask, current_app, has_app_context, session, url_for
from flask import request as current_request
from flask_login import user_loaded_from_cookie, user_logged_in, user_logged_out
from markupsafe import Markup

from . import config
from .cluster.backend import Backend
from .context import Context
from .server import auth, cli, metrics
from .server.handshake import serve
from .server.namespace import Namespace, NamespaceTemplate, OnCreate
from .server.state import AppState

__all__ = ["JPulseWS", "AppState"]

log = logging.getLogger("flask_jpulse_ws")

EXTENSION_KEY = "jpulse_ws"
_PENDING_KEY = "jpulse_ws_pending"  # blueprint namespaces registered before init_app


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
        if state.settings.metrics_url is not None:
            metrics.register(app, state)  # JPULSE_WS_METRICS_URL (the metrics extra)
        app.add_template_global(jpulse_ws_script, "jpulse_ws_script")
        if "jpulse-ws" not in app.cli.commands:
            app.cli.add_command(cli.commands)  # flask jpulse-ws ...
        self._connect_login_signals(app)

    def _blueprint(self, state: AppState) -> Blueprint:
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
        user_logged_in.connect(auth.ensure_session_token, app, weak=False)
        app.before_request(auth.adopt_session)
        user_loaded_from_cookie.connect(auth.ensure_session_token, app, weak=False)

        def revoke(sender: Any, **_kw: Any) -> None:
            token = session.pop(auth.SESSION_TOKEN_KEY, None)
            if token:
                sender.extensions[EXTENSION_KEY].fanout.revoke_session(token)

        user_logged_out.connect(revoke, app, weak=False)

    def _state(self) -> AppState:
        if has_app_context():
            state = current_app.extensions.get(EXTENSION_KEY)
            if state is not None and state.ext is self:
                return state
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
        return self._state().fanout.remove_namespace(path, remove_if_empty)

    # ---------------------------------------------------------------- sending
    def broadcast(self, path: str, data: Dict[str, Any], ctx: Any = None) -> int:
        """Send ``{type, data}`` to every client of a concrete path, on every process."""
        return self._state().fanout.broadcast(path, data, ctx)

    def send_to_client(self, path: str, client_id: str, data: Dict[str, Any],
                       ctx: Any = None) -> bool:
        """Send to one client of a concrete path; True when it is local."""
        return self._state().fanout.send_to_client(path, client_id, data, ctx)

    def send_to_user(self, user_id: Any, data: Dict[str, Any], path: Optional[str] = None,
                     ctx: Any = None) -> int:
        """Send to every socket of one logged-in user (flask-login's ``get_id()``), in
        every namespace or only under the concrete ``path``, on every process; returns
        the number of this process's sockets reached::

            ws.send_to_user(current_user.get_id(), {"type": "notice", "data": "Saved"})
        """
        return self._state().fanout.send_to_user(user_id, data, path, ctx)

    def request(self, path: str, client_id: str, data: Dict[str, Any], timeout: float = 30.0,
                ctx: Any = None) -> Dict[str, Any]:
        """Ask one client of a concrete path, on whichever process holds it; blocks the
        calling greenlet. Returns the reply frame or an error dict (never raises):
        ``NOT_CONNECTED``, ``REQUEST_TIMEOUT`` or ``CONNECTION_LOST``."""
        return self._state().fanout.request(path, client_id, data, timeout, ctx)

    def broadcast_context(self, request: Any = None) -> Context:
        """The context of the HTTP caller, for broadcasts made from REST handlers."""
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
