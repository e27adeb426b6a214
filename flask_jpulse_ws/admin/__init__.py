"""The admin dashboard (opt-in): live WebSocket statistics at ``JPULSE_WS_ADMIN_URL``.

::

    from flask_jpulse_ws import JPulseWS
    from flask_jpulse_ws.admin import JPulseWSAdmin

    ws = JPulseWS(app)
    JPulseWSAdmin(ws).init_app(app)      # or: init_admin(ws, app)

The page connects to ``/api/1/ws/jpulse-ws-status``, a namespace open to the roles
in ``JPULSE_WS_ADMIN_ROLES``. One ticker per process (started with the first
viewer, ended with the last) pushes ``stats-update`` to every viewer every
``interval`` seconds. With public access on and ``jpulse-ws-status`` whitelisted,
anyone may watch, and the stats are cut down to the whitelisted namespaces.
The page renders every value as text.

Cards of namespaces declared with ``presence=True`` also carry ``presence``: clients
and unique users on every process, read from the presence tracker (``partial`` when
Redis could not be read and only this process's members were counted).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional

from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request, url_for
from flask_login import current_user

from .. import concurrency
from ..context import roles_of
from ..core import envelope
from ..core.paths import is_whitelisted
from ..core.stats import iso

__all__ = ["JPulseWSAdmin", "init_admin", "STATUS_PATH", "stats_payload", "presence_counts"]

log = logging.getLogger("flask_jpulse_ws")

#: The namespace the dashboard listens on (the seed's name).
STATUS_PATH = "/api/1/ws/jpulse-ws-status"
#: Seconds between two pushes; the seed's 5 s felt slow on a live dashboard.
INTERVAL = 2.0
#: Seconds of per-second message counts in each sparkline.
SPARK_SECONDS = 60
#: Activity entries sent per update at most (newest first), and characters of each.
LOG_ENTRIES = 300
LOG_CHARS = 160
#: Presence namespaces counted per update at most: each costs a Redis round trip or two;
#: the cards beyond show this process's counts only.
PRESENCE_CARDS = 100


def _cut(text: str, limit: int = LOG_CHARS) -> str:
    """First and last characters of a long message, as the seed's dashboard shows them."""
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return text[:keep] + " ... " + text[-keep:]


def presence_counts(state: Any, paths: Any) -> Dict[str, Dict[str, Any]]:
    """``{path: {"clients", "users", "partial"}}`` for the live presence namespaces among
    ``paths``, on every process (at most :data:`PRESENCE_CARDS` of them).

    A failed read is left out (the card falls back to this process's counts); with Redis
    away the tracker answers with this process's members and ``partial`` is true.
    """
    live = state.registry.live
    out: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        ns = live.get(path)
        if ns is None or not ns.template.has_presence:
            continue
        if len(out) >= PRESENCE_CARDS:
            break
        try:
            counts = state.presence.stats(path)
        except Exception:  # the dashboard must outlive a broken read
            log.exception("presence of %s for the dashboard failed", path)
            continue
        counts.setdefault("partial", False)
        out[path] = counts
    return out


def stats_payload(state: Any, public: bool, presence: Dict[str, Dict[str, Any]],
                  cluster: bool = True, now: Optional[float] = None) -> Dict[str, Any]:
    """What one ``stats-update`` carries; whitelisted namespaces only when ``public``.

    :param presence: counts from :func:`presence_counts`, read once per push whatever
        the kinds of viewer.
    """
    now = time.time() if now is None else now
    s = state.settings
    stats = state.get_stats(cluster=cluster)
    allowed = (lambda p: is_whitelisted(p, s.public_whitelist)) if public else (lambda p: True)
    live = state.registry.live
    shown = [ns for ns in stats.get("namespaces", []) if allowed(ns.get("path", ""))]
    namespaces = []
    for ns in shown:
        live_ns = live.get(ns["path"])
        ns = dict(ns)
        ns["sparkline"] = live_ns.messages_per_second(now, SPARK_SECONDS) \
            if live_ns is not None else [0] * SPARK_SECONDS
        if ns["path"] in presence:
            ns["presence"] = dict(presence[ns["path"]])
        namespaces.append(ns)
    log_entries: List[Dict[str, Any]] = []
    for entry in reversed(stats.get("activityLog", [])):
        path = entry.get("namespace", "")
        if path == STATUS_PATH and entry.get("direction") == "sent":
            continue  # the dashboard's own pushes would drown everything else
        if not allowed(path):
            continue
        entry = dict(entry)
        entry["message"] = _cut(str(entry.get("message") or ""))
        log_entries.append(entry)
        if len(log_entries) >= LOG_ENTRIES:
            break
    out: Dict[str, Any] = {
        "uptime": stats.get("uptime"),
        "totalMessages": stats.get("totalMessages"),
        "totalConnections": stats.get("totalConnections"),
        "openConnections": stats.get("openConnections"),
        "totalDropped": stats.get("totalDropped"),
        "namespaces": namespaces,
        "activityLog": log_entries,
        "public": public,
        "statusTimeouts": {"warning": s.status_warning, "inactive": s.status_inactive},
        "serverTime": iso(now),
    }
    relay = stats.get("relay") or {}
    out["relay"] = {"kind": relay.get("kind", ""), "degraded": bool(relay.get("degraded"))}
    out["cluster"] = _cluster_view(stats.get("cluster"), allowed, public)
    if public:
        out["totalNamespaces"] = len(namespaces)
    else:
        out["totalNamespaces"] = stats.get("totalNamespaces")
        if presence:  # every namespace's members: not for a public (whitelisted) view
            out["presence"] = state.presence.status()
    return out


def _cluster_view(cluster: Any, allowed: Any, public: bool) -> Optional[Dict[str, Any]]:
    if not isinstance(cluster, dict):
        return None
    rows = []
    for row in cluster.get("instances") or []:
        if not isinstance(row, dict):
            continue
        item = {k: row.get(k) for k in ("instanceId", "pid", "host", "started", "updated",
                                        "connections", "totalMessages", "degraded")}
        if public:
            item.pop("host", None)
        item["namespaces"] = [n for n in row.get("namespaces") or []
                              if isinstance(n, dict) and allowed(str(n.get("path", "")))]
        rows.append(item)
    totals = cluster.get("totals")
    return {"instances": rows, "totals": dict(totals) if isinstance(totals, dict) else {},
            "namespaces": [n for n in cluster.get("namespaces") or []
                           if isinstance(n, dict) and allowed(str(n.get("path", "")))],
            "error": cluster.get("error")}


class _Ticker:
    """One pusher per app state: alive while the status namespace has local viewers."""

    def __init__(self, state: Any, interval: float) -> None:
        self.state = state
        self.interval = interval
        self.running = False
        self._lock = concurrency.Lock()

    def ensure(self) -> None:
        with self._lock:
            if self.running:
                return
            self.running = True
        concurrency.every(self.interval, self._push, "admin stats push")

    def _push(self) -> bool:
        """One push to the dashboard's viewers; False (the loop ends) once none is left."""
        with self._lock:
            ns = self.state.registry.live.get(STATUS_PATH)
            if ns is None or not ns.clients:
                self.running = False
                return False
        with self.state.app.app_context():
            push(self.state, ns, tuple(ns.clients.values()), self.interval)
        return True


def push(state: Any, ns: Any, viewers: Any, interval: float) -> int:
    """Send one ``stats-update`` to each viewer; payloads built once per kind."""
    now = time.time()
    frames: Dict[bool, bytes] = {}
    presence: Optional[Dict[str, Dict[str, Any]]] = None
    sent = 0
    for conn in viewers:
        public = bool(conn.ctx.is_public)
        if public not in frames:
            if presence is None:  # read once: the public view is a subset of the paths
                presence = presence_counts(state, tuple(state.registry.live))
            data = stats_payload(state, public, presence, now=now)
            data["interval"] = interval
            frames[public] = envelope.encode_success({"type": "stats-update", "data": data},
                                                     envelope.wire_ctx(None, ()))
        if conn.send_raw_json(frames[public]):
            sent += 1
    if sent:
        ns.count_sent(sent, now)  # keeps the namespace green without logging itself
    return sent


class JPulseWSAdmin:
    """The dashboard: a blueprint (page, JS, CSS) and the status namespace.

    :param ws: the app's :class:`~flask_jpulse_ws.JPulseWS`.
    :param app: bind at once, or call :meth:`init_app` later.
    :param interval: seconds between pushes to each viewer.
    """

    def __init__(self, ws: Any, app: Optional[Flask] = None, interval: float = INTERVAL
                 ) -> None:
        self.ws = ws
        self.interval = float(interval)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Declare the status namespace and serve the page at ``JPULSE_WS_ADMIN_URL``."""
        state = app.extensions.get("jpulse_ws")
        if state is None:
            raise RuntimeError("JPulseWSAdmin needs the extension first: call "
                               "ws.init_app(app) (or JPulseWS(app)) before it")
        settings = state.settings
        roles = tuple(app.config.get("JPULSE_WS_ADMIN_ROLES") or settings.admin_roles)
        ticker = _Ticker(state, self.interval)
        app.extensions["jpulse_ws_admin"] = self
        status = self.ws.namespace(STATUS_PATH, require_auth=True, require_roles=roles)
        interval = self.interval

        @status.on_connect
        def viewer_joined(conn: Any) -> None:
            push(state, conn.namespace, (conn,), interval)  # the first view at once
            ticker.ensure()

        @status.on_message
        def viewer_message(conn: Any) -> None:
            if conn.message.get("type") == "refresh":
                push(state, conn.namespace, (conn,), interval)
            # Anything else ("admin-connected" in the seed) is only logged by the pipeline.

        bp = Blueprint("jpulse_ws_admin", __name__, template_folder="templates",
                       static_folder="static", static_url_path="/_jpulse_ws/admin/static")

        def dashboard() -> Any:
            public = settings.public_access and is_whitelisted(STATUS_PATH,
                                                               settings.public_whitelist)
            user = _current_user()
            is_admin = user is not None and bool(set(roles_of(user)) & set(roles))
            if not is_admin and not public:
                login_view = _login_view()
                if user is None and login_view and request.method == "GET":
                    return redirect(url_for(login_view, next=request.path))
                abort(403 if user is not None else 401)
            return render_template("jpulse_ws_admin.html", status_path=STATUS_PATH,
                                   public_view=not is_admin, roles=roles,
                                   interval=interval)

        bp.add_url_rule(settings.admin_url, "dashboard", dashboard)
        app.register_blueprint(bp)


def init_admin(ws: Any, app: Flask, interval: float = INTERVAL) -> JPulseWSAdmin:
    """Same as ``JPulseWSAdmin(ws).init_app(app)``; returns the admin object."""
    admin = JPulseWSAdmin(ws, interval=interval)
    admin.init_app(app)
    return admin


def _current_user() -> Any:
    """The logged-in flask-login user, or ``None`` (anonymous or no flask-login)."""
    if getattr(current_app, "login_manager", None) is None:
        return None
    return current_user if current_user.is_authenticated else None




def _login_view() -> Optional[str]:
    manager = getattr(current_app, "login_manager", None)
    view = getattr(manager, "login_view", None)
    return str(view) if view else None
