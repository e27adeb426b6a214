"""Fan-out: everything that sends, for one app. This process's clients first (no
round trip), then the backend carries the operation to the other processes; and what
the backend brings from them is applied here (:meth:`Fanout.apply`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Set

from ..cluster.backend import Backend
from ..config import Settings
from ..core import envelope, frames
from ..errors import CloseCode

if TYPE_CHECKING:  # pragma: no cover
    from .namespace import NamespaceTemplate, Registry

__all__ = ["Fanout"]

log = logging.getLogger("flask_jpulse_ws")


class Fanout:
    """Broadcasts, directed sends, server requests, namespace removal, logout revocation
    and resyncs of one app.

    :param presence: the app's presence tracker, made on first use.
    """

    def __init__(self, settings: Settings, registry: Registry, backend: Backend,
                 presence: Callable[[], Any], session_lifetime: float = 31 * 86400) -> None:
        self.settings = settings
        self.session_lifetime = session_lifetime  # how long a revoked token is refused
        self.registry = registry
        self.backend = backend
        self._presence = presence
        self._users: Dict[str, Set[Any]] = {}  # user id -> this process's sockets

    def find_client(self, path: str, client_id: str) -> Any:
        """The local connection ``client_id`` of ``path``, or ``None``."""
        ns = self.registry.live.get(path)
        return ns.clients.get(client_id) if ns is not None else None

    def template_of(self, path: str) -> NamespaceTemplate:
        ns = self.registry.live.get(path)
        if ns is not None:
            return ns.template
        match = self.registry.match_concrete(path)
        if match is None:
            raise ValueError(f"No namespace matches {path!r}: declare it with ws.namespace()")
        return match[0]

    def broadcast(self, path: str, data: Dict[str, Any], ctx: Any = None) -> int:
        """Local clients first (no relay round trip), then every other process."""
        template = self.template_of(path)
        wire = envelope.wire_ctx(ctx, self.settings.wire_ctx_fields)
        payload = envelope.encode_success(data, wire)
        if template.history_size:
            return self._broadcast_with_history(template, path, payload, data.get("type", ""))
        n = self.deliver_broadcast(path, payload, data.get("type", ""))
        self.backend.publish("broadcast", path=path, payload=payload, type=data.get("type", ""))
        return n

    def _broadcast_with_history(self, template: NamespaceTemplate, path: str,
                                payload: bytes, msg_type: str) -> int:
        return self.backend.history.broadcast(path, payload, template.history_size,
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
        self.template_of(path)
        wire = envelope.wire_ctx(ctx, self.settings.wire_ctx_fields)
        payload = envelope.encode_success(data, wire)
        if self.deliver_to_client(path, client_id, payload, data.get("type", "")):
            return True
        self.backend.publish("send", path=path, clientId=client_id, payload=payload,
                             type=data.get("type", ""))
        return False

    def send_to_user(self, user_id: Any, data: Dict[str, Any], path: Optional[str] = None,
                     ctx: Any = None) -> int:
        """Every socket of one user, here first, then through the backend."""
        if path is not None:
            self.template_of(path)
        wire = envelope.wire_ctx(ctx, self.settings.wire_ctx_fields)
        payload = envelope.encode_success(data, wire)
        n = self.deliver_to_user(str(user_id), path, payload, data.get("type", ""))
        self.backend.publish("user", userId=str(user_id), path=path, payload=payload,
                             type=data.get("type", ""))
        return n

    def deliver_to_user(self, user_id: str, path: Optional[str], payload: bytes,
                        msg_type: str = "") -> int:
        conns = [c for c in self._users.get(user_id, ()) if path is None
                 or c.namespace.path == path]
        if not conns:
            return 0
        frame = frames.text_frame(payload)
        per_namespace: Dict[Any, int] = {}
        for conn in conns:
            if conn.send_frame(frame):
                per_namespace[conn.namespace] = per_namespace.get(conn.namespace, 0) + 1
        for ns, n in per_namespace.items():  # one stats/activity entry per namespace
            ns.record_sent(msg_type, n, "", payload)
        return sum(per_namespace.values())

    def joined(self, conn: Any) -> None:
        """A welcomed socket: indexed by its user, for :meth:`send_to_user`."""
        if conn.ctx.user_id is not None:
            self._users.setdefault(str(conn.ctx.user_id), set()).add(conn)

    def left(self, conn: Any) -> None:
        user_id = conn.ctx.user_id
        if user_id is not None:
            conns = self._users.get(str(user_id))
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self._users[str(user_id)]

    def request(self, path: str, client_id: str, data: Dict[str, Any], timeout: float = 30.0,
                ctx: Any = None) -> Dict[str, Any]:
        """Ask one client, on whichever process holds it, and wait for its reply."""
        self.template_of(path)
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

    def remove_namespace(self, path: str, remove_if_empty: bool = False,
                         _relay: bool = True) -> bool:
        ns = self.registry.live.get(path)
        if ns is not None:
            if remove_if_empty and (ns.clients or ns.joining):  # a handshake is joining it
                return False
            self.registry.remove(path)
            ns.close_all(CloseCode.NOT_FOUND, "Namespace removed")
        if not remove_if_empty:
            self.backend.history.drop(path)  # also a swept room's stream: a new room starts afresh
            if _relay:
                self.backend.publish("remove", path=path)
        return ns is not None

    # ---------------------------------------------------------------- sessions
    def revoke_session(self, token: Any, _relay: bool = True) -> int:
        """Close every socket opened with this browser login session (4401)."""
        if not isinstance(token, str) or not token:
            return 0  # anonymous sockets have no token: "no token" must match nobody
        self.backend.revocations.revoke(token, self.session_lifetime)
        n = 0
        for conn in list(self.registry.connections()):
            if conn.session_token == token:
                conn.expire()
                n += 1
        if _relay:
            self.backend.publish("revoke", token=token)
        return n

    def apply(self, message: Dict[str, Any]) -> None:
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
        elif op == "user":  # to every socket of one user
            path = message.get("path")
            self.deliver_to_user(str(message["userId"]), str(path) if path else None,
                                 _bytes(message["payload"]), str(message.get("type") or ""))
        elif op == "revoke":
            self.revoke_session(message.get("token"), _relay=False)
        elif op == "hbroadcast":  # a broadcast with a history position, from Redis
            self.deliver_history(message["path"], _bytes(message["payload"]),
                                 str(message["epoch"]), int(message["offset"]),
                                 str(message.get("type") or ""))
        elif op == "presence":  # members joined or left on another process
            self._presence().apply_remote(message)
        elif op == "resync":  # a process dropped messages for these paths (Redis outage)
            self.resync_paths(message.get("paths"), "relay-gap")
        else:
            log.warning("ignoring relayed operation %r", op)

    def resync_paths(self, paths: Optional[Sequence[str]], reason: str) -> int:
        """``_resync`` to the local clients of ``paths`` (``None``: every client)."""
        if paths is None:
            return self.resync_all(reason)
        frame = frames.text_frame(envelope.encode_framework("_resync", {"reason": reason}))
        live = self.registry.live
        return sum(live[p].deliver_frame(frame) for p in paths if p in live)


class _HistoryDelivery:
    """Delivers a history namespace's broadcast here, for the history store."""

    __slots__ = ("fanout", "path", "payload", "msg_type", "live")

    def __init__(self, fanout: Fanout, path: str, payload: bytes, msg_type: str) -> None:
        self.fanout, self.path, self.payload, self.msg_type = fanout, path, payload, msg_type
        self.live = path in fanout.registry.live

    def with_position(self, frame_json: bytes, epoch: str, offset: int) -> int:
        return self.fanout.deliver_history(self.path, frame_json, epoch, offset, self.msg_type)

    def plain(self) -> int:
        return self.fanout.deliver_broadcast(self.path, self.payload, self.msg_type)

    def later(self) -> int:
        ns = self.fanout.registry.live.get(self.path)
        return len(ns.clients) if ns is not None else 0


def _bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)
