"""Relayed operations: how what must reach other processes (broadcasts, directed sends,
removals, logout revocations...) is encoded, which channel carries it, who sent it,
and the cluster stats view. Pure functions shared by the Redis relay and
:class:`~flask_jpulse_ws.Emitter`; ``keys.py`` names every key and channel.

Routing (``docs/scaling.md``): an operation about one namespace travels on that
namespace's channel, which only the processes holding a client of it listen to; a reply
to a server request on the asking process's inbox; what concerns every process
(logout revocations, resyncs, a user's sockets in every namespace) on the control
channel.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Dict, Iterable, List

from ..core import envelope
from .keys import control_channel, inbox_channel, namespace_channel

__all__ = ["encode_op", "channel_for", "new_host_id", "merge_instances", "NAMESPACE_OPS"]

#: Operations about one namespace (``path``): they go to its holders only.
NAMESPACE_OPS = frozenset({"broadcast", "hbroadcast", "send", "request", "presence",
                           "remove", "user"})


def channel_for(prefix: str, op: str, fields: Dict[str, Any]) -> str:
    """The channel that carries ``op``: the namespace's, the asker's inbox, or control."""
    if op == "reply":
        return inbox_channel(prefix, str(fields["to"]))
    path = fields.get("path")
    if op in NAMESPACE_OPS and isinstance(path, str) and path:
        return namespace_channel(prefix, path)
    return control_channel(prefix)


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
