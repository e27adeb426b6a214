"""The backend: what one process shares with the others, chosen once from
``JPULSE_WS_REDIS_URL``.

:class:`Backend` is one process: every client is local, history offsets are assigned
here, ids are unique within the process, and a publish goes nowhere.
``redis_backend.RedisBackend`` answers the same calls through Redis. The server calls
them the same way either way, so no part of it asks "is there Redis?".

The server gives the backend :class:`Hooks` (callbacks) when the app is set up; the
backend never reaches back into the server's objects. ``JPulseWS(backend=...)`` takes a
backend made by hand (tests), as python-socketio's ``client_manager=`` does.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..config import Settings
from ..core.history import MemoryHistory
from ..errors import ErrorCode
from .relay import merge_instances, new_host_id
from .revocations import Revocations

__all__ = ["Backend", "Hooks", "LocalClaims", "make_backend"]

log = logging.getLogger("flask_jpulse_ws")


@dataclass
class Hooks:
    """What the server lends the backend: callbacks, not objects to reach into."""

    #: Apply an operation another process published (a broadcast, a send, a removal...).
    apply: Callable[[Dict[str, Any]], None]
    #: Tell every local client it may have missed messages; returns how many were told.
    resync_all: Callable[[str], int]
    #: The same for the local clients of some namespaces: ``(paths, reason)``.
    resync_paths: Callable[[Sequence[str], str], int]
    #: This process's row of the cluster stats.
    stats_row: Callable[[], Dict[str, Any]]
    #: The local connection ``(path, client_id)``, or ``None``.
    find_client: Callable[[str, str], Any]


class LocalClaims:
    """Client ids within one process: the handshake's per-process rule is enough."""

    refresh_all_wanted = False

    def claim(self, path: str, client_id: str, identity: tuple
              ) -> Tuple[str, Optional[str], bool]:
        """(the id to use, the claim to release later, whether to claim it later)."""
        return client_id, None, False

    def release(self, conn: Any) -> None:
        """Nothing was claimed outside this process."""

    def due(self, conn: Any, now: float) -> bool:
        """Whether ``conn``'s claim needs refreshing (never: there is none)."""
        return False

    def maintain(self, unclaimed: List[Any], due: List[Any], now: float,
                 everything: bool = False) -> None:
        """Nothing to claim late or refresh."""

    def status(self) -> Dict[str, int]:
        return {}


class Backend:
    """One process: nothing crosses processes."""

    #: The kind shown in ``get_stats()["relay"]`` and on the admin page.
    kind = "MemoryRelay"
    #: The link to Redis, for the server parts that keep their own keys there
    #: (presence); ``None`` here: they keep their state in this process only.
    link: Any = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host_id = new_host_id()
        _backends.add(self)
        self.history: Any = MemoryHistory(settings.max_namespaces)
        self.claims: Any = LocalClaims()
        self.revocations: Any = Revocations()
        self._hooks: Optional[Hooks] = None

    def renew_host_id(self) -> None:
        """A new host id, for a forked child: with ``gunicorn --preload`` every worker
        would otherwise keep the master's, and drop the others' messages as its echo."""
        self.host_id = new_host_id()

    def bind(self, hooks: Hooks, secret: bytes) -> None:
        """Called once by ``init_app``: the callbacks into this app's server, and a
        secret of the app's (it keys what the backend stores about identities)."""
        self._hooks = hooks

    @property
    def hooks(self) -> Hooks:
        if self._hooks is None:
            raise RuntimeError("This backend is not bound to an app: JPulseWS.init_app "
                               "binds it")
        return self._hooks

    @property
    def degraded(self) -> bool:
        """True while what is shared with other processes cannot be reached."""
        return False

    def available(self) -> bool:
        """True when a shared store answers now (starting the backend if needed)."""
        return False

    def serve_nobody(self) -> None:
        """This process holds no sockets (``flask jpulse-ws ...``): it does not appear in
        the cluster stats as a server."""

    def start(self) -> None:
        """Begin listening to other processes (nothing to listen to here)."""

    def stop(self) -> None:
        """Stop listening and release connections."""

    def follow(self, path: str) -> bool:
        """A client of ``path`` is about to be welcomed here: from now on, operations
        other processes publish for ``path`` must reach this one. True when that holds
        (always, here); False when it will only hold later (the client gets a
        ``_resync`` then). Every call is paired with one :meth:`unfollow`."""
        return True

    def unfollow(self, path: str) -> None:
        """A client of ``path`` left this process."""

    def publish(self, op: str, **fields: Any) -> None:
        """Carry an operation to the other processes (none here); local delivery has
        already happened."""

    def ask(self, path: str, client_id: str, data: Dict[str, Any], timeout: float,
            ctx: Any) -> Dict[str, Any]:
        """A server request to a client this process does not hold: nobody else can."""
        return {"success": False, "error": "Client not connected",
                "code": ErrorCode.NOT_CONNECTED}

    def status(self) -> Dict[str, Any]:
        """``get_stats()["relay"]``."""
        return {"kind": self.kind, "hostId": self.host_id, "degraded": self.degraded}

    def extra_stats(self) -> Dict[str, Any]:
        """Top-level ``get_stats()`` entries of this backend (none here)."""
        return {}

    def cluster_stats(self) -> Dict[str, Any]:
        """Every process's stats row; one process here."""
        return merge_instances([self.hooks.stats_row()])


_backends: weakref.WeakSet = weakref.WeakSet()


def _renew_after_fork() -> None:
    for backend in list(_backends):
        backend.renew_host_id()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_renew_after_fork)


def make_backend(settings: Settings, given: Optional[Backend] = None) -> Backend:
    """The backend ``settings`` ask for (``JPULSE_WS_REDIS_URL``), or ``given``."""
    if given is not None:
        return given
    if settings.redis_url:
        from .redis_backend import RedisBackend  # imports redis only when asked for
        return RedisBackend(settings)
    return Backend(settings)
