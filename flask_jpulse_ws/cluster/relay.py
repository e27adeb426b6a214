"""The relay: what must reach every process (broadcasts, directed sends, removals,
logout revocations) travels through it. The in-memory relay serves one process;
``redis_relay.RedisRelay`` overrides the transport only.

This module also encodes relayed operations (pure functions shared by the Redis relay
and :class:`~flask_jpulse_ws.Emitter`); ``keys.py`` names every key and channel.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any, Dict, Iterable, List

from ..core import envelope

if TYPE_CHECKING:  # pragma: no cover
    from ..extension import AppState

__all__ = ["Relay", "MemoryRelay", "encode_op", "new_host_id", "merge_instances"]

log = logging.getLogger("flask_jpulse_ws")

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
