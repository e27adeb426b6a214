"""Close every socket with 1001 ("going away") when a gunicorn worker is told to stop.

gunicorn's worker turns SIGTERM into ``alive = False`` and then waits up to
``--graceful-timeout`` for open requests, which for WebSockets never end by
themselves: clients would see the connection cut (1006) when the timeout kills
it. Wrapping that handler lets clients see 1001 at once and reconnect to another
worker, and lets the worker exit as soon as they have gone.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Any, List

from .. import concurrency
from ..errors import CloseCode

if TYPE_CHECKING:  # pragma: no cover
    from .namespace import Registry

__all__ = ["install"]

log = logging.getLogger("flask_jpulse_ws")

_registries: List[Registry] = []
_installed = False


def install(registry: Registry) -> None:
    """Register an app's ``registry``; wrap the worker's SIGTERM handler once per process."""
    global _installed
    if registry not in _registries:
        _registries.append(registry)
    if _installed:
        return
    previous: Any = signal.getsignal(signal.SIGTERM)
    owner = getattr(previous, "__self__", None)
    if owner is None or not type(owner).__module__.startswith("gunicorn.workers"):
        return  # not a gunicorn worker: leave the process's signals alone
    _installed = True

    def on_sigterm(signum: int, frame: Any) -> None:
        previous(signum, frame)  # gunicorn stops accepting and starts its graceful wait
        concurrency.spawn(_going_away)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
        signal.siginterrupt(signal.SIGTERM, False)
    except ValueError:  # not the main thread: a threaded server owns no signals here
        _installed = False


def _going_away() -> None:
    count = 0
    for registry in list(_registries):
        for conn in list(registry.connections()):
            conn.close(CloseCode.GOING_AWAY, "Server going away")
            count += 1
    log.info("worker stopping: closed %d WebSocket connections with 1001", count)
