"""The state of one app: settings, namespaces, the backend, fan-out, counters.

``JPulseWS.init_app`` makes one :class:`AppState` per app and keeps it in
``app.extensions["jpulse_ws"]``; the server's parts receive it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from typing import Any, Callable, Dict, Optional

from flask import Flask

from ..cluster.backend import Backend, Hooks, make_backend
from ..config import Settings
from ..context import Context
from ..core import resume
from ..core.stats import ActivityLog, AppCounters, iso
from . import auth, gc_tuning, shutdown
from .admission import Admission
from .fanout import Fanout
from .health import HealthScheduler
from .namespace import Namespace, Registry
from .presence import PresenceTracker

__all__ = ["AppState"]

log = logging.getLogger("flask_jpulse_ws")


class AppState:
    """Everything the extension keeps for one app: settings, namespaces, relay, stats."""

    def __init__(self, ext: Any, app: Flask, settings: Settings,
                 backend: Optional[Backend] = None) -> None:
        self.ext = ext
        self.app = app
        self.settings = settings
        self.started_at = time.time()
        self.registry = Registry(self)
        self.activity = ActivityLog(settings.activity_window, settings.activity_max,
                                    settings.activity_message_chars)
        self.counters = AppCounters()
        self.admission = Admission(settings)
        self.backend = make_backend(settings, backend)
        self.health = HealthScheduler(settings, self.registry, self.backend, app,
                                      self.sweep_namespaces)
        self.fanout = Fanout(settings, self.registry, self.backend, lambda: self.presence,
                             app.permanent_session_lifetime.total_seconds())
        secret = app.secret_key or settings.channel_prefix
        self.backend.bind(Hooks(apply=self.fanout.apply, resync_all=self.fanout.resync_all,
                                resync_paths=self.fanout.resync_paths,
                                stats_row=self.instance_stats,
                                find_client=self.fanout.find_client),
                          secret.encode() if isinstance(secret, str) else bytes(secret))
        self.resume_key = self._resume_key(app, settings)
        self._presence: Any = None
        self._started = False

    @staticmethod
    def _resume_key(app: Flask, settings: Settings) -> bytes:
        """The key of the resume tokens (``core/resume.py``), from the app's secret key;
        without one, a random key of this process (tokens then fail on other workers, and
        a client reconnecting to another worker gets a fresh id)."""
        secret = app.secret_key
        if secret:
            return resume.derive_key(secret.encode() if isinstance(secret, str)
                                     else bytes(secret))
        if settings.redis_url:
            log.warning("app.secret_key is not set: resume tokens are checked only by the "
                        "worker that issued them, so clients that reconnect to another "
                        "worker get a fresh client id (set SECRET_KEY, the same on every "
                        "worker)")
        return secrets.token_bytes(32)

    @property
    def presence(self) -> Any:
        """The presence tracker (``presence.PresenceTracker``), made on first use."""
        if self._presence is None:
            self._presence = PresenceTracker(self.settings, self.registry, self.backend)
        return self._presence

    def ensure_started(self) -> None:
        """Start the health scheduler and the relay listener on first use."""
        if not self._started:
            self._started = True
            gc_tuning.tune_collector(self.settings.gc_threshold)
            self.health.start()
            self.backend.start()
            shutdown.install(self.registry)

    # ---------------------------------------------------------------- admission
    def load_context(self, ip: str) -> Context:
        loader = self.ext.context_loader
        if loader is not None:
            ctx = loader(ip)
            if not isinstance(ctx, Context):
                raise TypeError("context_loader must return a flask_jpulse_ws.Context")
            return ctx
        return auth.current_context(ip)

    def call_handler(self, handler: Optional[Callable[..., Any]], conn: Any,
                     name: str) -> None:
        if handler is None:
            return
        try:
            with self.app.app_context():
                handler(conn)
        except Exception:
            log.exception("%s handler of %s failed", name, conn.namespace.path)

    # ---------------------------------------------------------------- namespaces
    def get_namespace(self, path: str) -> Optional[Namespace]:
        return self.registry.live.get(path)

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

    # ---------------------------------------------------------------- stats
    def get_stats(self, cluster: bool = False) -> Dict[str, Any]:
        now = time.time()
        namespaces = [ns.get_stats() for ns in tuple(self.registry.live.values())]
        out = {
            "uptime": round(now - self.started_at, 3),
            "totalConnections": self.counters.connections,
            "openConnections": self.admission.open_connections,
            "totalMessages": self.counters.messages,
            "totalDropped": self.counters.dropped,
            "totalNamespaces": len(namespaces),
            "refusedOrigins": self.admission.refused_origins,
            "refusedHandshakeRate": self.admission.handshake_rate.refused,
            "serverErrors": self.counters.server_errors,
            "rejections": {str(code): n for code, n in sorted(self.admission.rejections.items())},
            "relay": self.backend.status(),
            "presence": self.presence.status(),
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
        live = [(path, len(ns.clients)) for path, ns in tuple(self.registry.live.items())]
        return {
            "instanceId": self.backend.host_id, "pid": os.getpid(),
            "host": socket.gethostname(), "started": iso(self.started_at),
            "updated": iso(time.time()), "connections": self.admission.open_connections,
            "totalMessages": self.counters.messages, "degraded": self.backend.degraded,
            "namespaces": [{"path": p, "clients": n} for p, n in live if n][:1000],
            "metrics": self.metrics_figures(),
        }

    def metrics_figures(self) -> Dict[str, Any]:
        """This process's figures for ``core/metrics.py`` (they travel in its stats row,
        so one scrape of any worker shows every worker)."""
        c, now = self.counters, time.time()
        relay = self.backend.status()
        figures: Dict[str, Any] = {
            "updatedAt": round(now, 3), "uptime": round(now - self.started_at, 3),
            "connections": c.connections, "openConnections": self.admission.open_connections,
            "messagesIn": c.messages_in, "messagesOut": c.messages_out,
            "deliveries": c.deliveries, "dropped": dict(c.dropped_by),
            "closes": {str(code): n for code, n in c.closes.items()},
            "rejections": {str(code): n for code, n in self.admission.rejections.items()},
            "refusedOrigins": self.admission.refused_origins,
            "serverErrors": c.server_errors, "namespaces": len(self.registry.live),
            "relay": {"degraded": bool(relay.get("degraded")),
                      "degradedFor": relay.get("degradedFor", 0),
                      **{k: relay[k] for k in ("published", "received", "dropped", "outages")
                         if k in relay}},
        }
        if isinstance(relay.get("link"), dict):
            figures["relay"]["queued"] = relay["link"].get("queued", 0)
        if self._presence is not None:  # never made just to be counted
            figures["presenceMembers"] = self._presence.status()["localMembers"]
        sizes = getattr(self.backend.history, "sizes", None)
        if sizes is not None:  # in this process's memory; Redis keeps its own
            figures["historyStreams"], figures["historyEntries"] = sizes()
        return figures
