"""The state of one app: settings, namespaces, the backend, fan-out, counters.

``JPulseWS.init_app`` makes one :class:`AppState` per app and keeps it in
``app.extensions["jpulse_ws"]``; the server's parts receive it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Callable, Dict, Optional, Sequence

from flask import Flask

from ..cluster.backend import Backend, Hooks, make_backend
from ..config import Settings
from ..context import Context
from ..core import envelope, frames
from ..core.stats import ActivityLog, iso
from ..errors import CloseCode
from . import auth, shutdown
from .admission import Admission
from .health import HealthScheduler, expire
from .namespace import Namespace, NamespaceTemplate, Registry
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
        self.total_connections = 0
        self.total_messages = 0
        self.total_dropped = 0
        self.server_errors = 0  # connections ended by an unexpected exception after the 101
        self.admission = Admission(settings)
        self.backend = make_backend(settings, backend)
        self.health = HealthScheduler(settings, self.registry, self.backend, app,
                                      self.sweep_namespaces)
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
            self._presence = PresenceTracker(self.settings, self.registry, self.backend)
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
        if ns is None or conn is None or not conn.send_raw_json(payload):
            return False
        ns.record_sent(msg_type, 1, "", payload)
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
            "openConnections": self.admission.open_connections,
            "totalMessages": self.total_messages,
            "totalDropped": self.total_dropped,
            "totalNamespaces": len(namespaces),
            "refusedOrigins": self.admission.refused_origins,
            "serverErrors": self.server_errors,
            "rejections": {str(code): n for code, n in sorted(self.admission.rejections.items())},
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
        live = [(path, len(ns.clients)) for path, ns in tuple(self.registry.live.items())]
        return {
            "instanceId": self.backend.host_id, "pid": os.getpid(),
            "host": socket.gethostname(), "started": iso(self.started_at),
            "updated": iso(time.time()), "connections": self.admission.open_connections,
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
