"""The relay: what must reach every process (broadcasts, directed sends, removals,
logout revocations) travels through it. The in-memory relay serves one process;
``redis_relay.RedisRelay`` overrides the transport only.

This module also names the Redis channels and keys and encodes relayed operations
(pure functions shared by the Redis relay and :class:`~flask_jpulse_ws.Emitter`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple
from urllib.parse import quote, unquote

from . import envelope

if TYPE_CHECKING:  # pragma: no cover
    from .extension import AppState

__all__ = ["Relay", "MemoryRelay", "check_prefix", "relay_channel", "namespace_channel",
           "path_of_channel", "stats_key", "history_keys", "presence_keys",
           "path_of_presence_key", "instances_key", "client_id_key", "encode_op",
           "new_host_id", "merge_instances"]

log = logging.getLogger("flask_jpulse_ws")

# ---------------------------------------------------------------- names (pure)

_PREFIX_OK = re.compile(r"[A-Za-z0-9_.\-:]+")


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start Redis channel names, else raise ``ValueError``.

    Glob characters and spaces are refused so that ``PSUBSCRIBE prefix:*`` and
    ``SCAN MATCH`` never match another app's names.
    """
    if not isinstance(prefix, str) or not _PREFIX_OK.fullmatch(prefix):
        raise ValueError(f"JPULSE_WS_CHANNEL_PREFIX must be letters, digits, '_', '.', '-' "
                         f"or ':' (got {prefix!r})")
    return prefix


def relay_channel(prefix: str) -> str:
    """The one channel every process of an app subscribes to."""
    return f"{check_prefix(prefix)}:relay"


def namespace_channel(prefix: str, path: str) -> str:
    """A per-namespace channel name; reversible with :func:`path_of_channel`.

    The path is percent-encoded (UTF-8) except letters, digits, ``-._~/``: the result
    holds no ``:``, glob character, space or control character, so no path can reach
    outside its prefix or into another app's names.
    """
    return f"{check_prefix(prefix)}:ns:{quote(path, safe='/')}"


def path_of_channel(prefix: str, channel: str) -> Optional[str]:
    """The namespace path a :func:`namespace_channel` name encodes; ``None`` if it is
    not one of this prefix's (or not in canonical form)."""
    head = f"{check_prefix(prefix)}:ns:"
    if not channel.startswith(head):
        return None
    encoded = channel[len(head):]
    try:
        path = unquote(encoded, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None
    return path if quote(path, safe="/") == encoded else None


def stats_key(prefix: str, host_id: str) -> str:
    """Key of one process's stats snapshot (expires unless refreshed)."""
    return f"{check_prefix(prefix)}:stats:{host_id}"


def instances_key(prefix: str) -> str:
    """Set of the host ids that have published a stats snapshot."""
    return f"{check_prefix(prefix)}:instances"


def history_keys(prefix: str, path: str) -> Tuple[str, str]:
    """Redis keys of a namespace's history: (meta hash, stream)."""
    base = f"{check_prefix(prefix)}:hist:{quote(path, safe='')}"
    return base + ":meta", base


def presence_keys(prefix: str, path: str) -> Tuple[str, str]:
    """Redis keys of a namespace's presence: (members hash, expiry sorted set).

    The hash maps a member id (``host|clientId``) to the member's JSON; the sorted set
    scores the same ids by expiry time. The path is encoded as in
    :func:`namespace_channel`; :func:`path_of_presence_key` reverses it.
    """
    base = f"{check_prefix(prefix)}:presence:{quote(path, safe='/')}"
    return base + ":members", base + ":expiry"


def path_of_presence_key(prefix: str, key: str) -> Optional[str]:
    """The namespace path a :func:`presence_keys` key encodes; ``None`` if not one."""
    head = f"{check_prefix(prefix)}:presence:"
    for tail in (":members", ":expiry"):
        if key.startswith(head) and key.endswith(tail):
            encoded = key[len(head):-len(tail)]
            try:
                path = unquote(encoded, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                return None
            return path if quote(path, safe="/") == encoded else None
    return None


def client_id_key(prefix: str, path: str, client_id: str) -> str:
    """Key of the cluster-wide claim on a client id in a namespace (``id_claims``)."""
    return f"{check_prefix(prefix)}:cid:{quote(path, safe='/')}:{client_id}"


def new_host_id(kind: str = "") -> str:
    """Unique per process and per app: two apps in one process never mistake each
    other's messages for their own."""
    base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return f"{kind}:{base}" if kind else base


def encode_op(host_id: str, op: str, fields: Dict[str, Any]) -> bytes:
    """One relayed operation as JSON: ``{"op", "host", ...}``; payload bytes become str."""
    message: Dict[str, Any] = {"op": op, "host": host_id}
    for key, value in fields.items():
        message[key] = value.decode("utf-8") if isinstance(value, (bytes, bytearray)) \
            else value
    return envelope.encode_json(message)


def merge_instances(rows: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Cluster view from per-process snapshots: the rows, sorted, plus totals."""
    rows = sorted(rows, key=lambda r: (str(r.get("host", "")), int(r.get("pid", 0))))
    per_path: Dict[str, Dict[str, int]] = {}
    for row in rows:
        for ns in row.get("namespaces", ()):
            entry = per_path.setdefault(ns["path"], {"clients": 0, "instances": 0})
            entry["clients"] += int(ns.get("clients", 0))
            entry["instances"] += 1
    namespaces: List[Dict[str, Any]] = [{"path": p, **v} for p, v in sorted(per_path.items())]
    return {
        "instances": rows,
        "namespaces": namespaces,
        "totals": {
            "instances": len(rows),
            "connections": sum(int(r.get("connections", 0)) for r in rows),
            "namespaces": len(namespaces),
            "totalMessages": sum(int(r.get("totalMessages", 0)) for r in rows),
            "degradedInstances": sum(1 for r in rows if r.get("degraded")),
        },
    }


# ---------------------------------------------------------------- relays


class Relay:
    """Base: a host id, publish after local delivery, drop our own echo."""

    #: True when other processes may hold clients (a publish is worth making).
    distributed = False

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.host_id = new_host_id()
        self.degraded = False

    def start(self) -> None:
        """Begin listening (the in-memory relay has nothing to listen to)."""

    def stop(self) -> None:
        """Stop listening and release connections."""

    def publish(self, op: str, **fields: Any) -> None:
        """Send an operation to the other processes; local delivery already happened."""

    def receive(self, message: Dict[str, Any]) -> bool:
        """A message from the transport: apply it unless this host sent it.

        :returns: False for our own echo (already delivered locally).
        """
        if message.get("host") == self.host_id:
            return False  # this host delivered it locally before publishing
        try:
            self.state.apply_remote(message)
        except Exception:  # a bad message must not stop the listener
            log.exception("could not apply relayed message %r", message.get("op"))
        return True

    def status(self) -> Dict[str, Any]:
        return {"kind": type(self).__name__, "hostId": self.host_id,
                "degraded": self.degraded}

    def cluster_stats(self) -> Dict[str, Any]:
        """Every process's stats row; one process here."""
        return merge_instances([self.state.instance_stats()])


class MemoryRelay(Relay):
    """One process: every client is local, so there is nothing to carry."""
