"""The relay: what must reach every process (broadcasts, directed sends, removals,
logout revocations) travels through it. The in-memory relay serves one process;
``redis_relay.RedisRelay`` overrides the transport only.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:  # pragma: no cover
    from .extension import AppState

__all__ = ["Relay", "MemoryRelay"]

log = logging.getLogger("flask_jpulse_ws")


class Relay:
    """Base: a host id, publish after local delivery, drop our own echo."""

    #: True when other processes may hold clients (a publish is worth making).
    distributed = False

    def __init__(self, state: "AppState") -> None:
        self.state = state
        # Unique per process and per app: two apps in one process never mistake
        # each other's messages for their own.
        self.host_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.degraded = False

    def start(self) -> None:
        """Begin listening (the in-memory relay has nothing to listen to)."""

    def stop(self) -> None:
        """Stop listening and release connections."""

    def publish(self, op: str, **fields: Any) -> None:
        """Send an operation to the other processes; local delivery already happened."""

    def receive(self, message: Dict[str, Any]) -> None:
        """A message from the transport: apply it unless this host sent it."""
        if message.get("host") == self.host_id:
            return  # this host delivered it locally before publishing
        try:
            self.state.apply_remote(message)
        except Exception:  # a bad message must not stop the listener
            log.exception("could not apply relayed message %r", message.get("op"))

    def status(self) -> Dict[str, Any]:
        return {"kind": type(self).__name__, "hostId": self.host_id,
                "degraded": self.degraded}


class MemoryRelay(Relay):
    """One process: every client is local, so there is nothing to carry."""
