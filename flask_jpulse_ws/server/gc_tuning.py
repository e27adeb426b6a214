"""Python's cycle collector, set once for a process that holds WebSockets.

Why: every open connection keeps about 85 objects the collector tracks (the WSGI request
it arrived on, its reader, writer and context), and CPython runs a full collection over
all of them each time the tracked heap grows by a quarter. With CPython's default young
threshold (700) a reconnect storm of 10,000 sockets over 4 gunicorn workers ran 7 full
collections per worker, 1.0-1.3 s of CPU in all and pauses up to 375 ms; with 10,000,
0-1, and the handshake p99 fell from 4.4 to 3.4 s in a development run
(docs/performance.md). Young collections stay cheap: they still see each new object
once.

Only CPython's own thresholds are changed: an app that set its own keeps them, and
``JPULSE_WS_GC_THRESHOLD = 0`` leaves the collector alone.
"""

from __future__ import annotations

import gc
import logging
from typing import Optional, Tuple

__all__ = ["tune_collector", "tuned_threshold", "CPYTHON_DEFAULTS"]

log = logging.getLogger("flask_jpulse_ws")

#: The collector's thresholds as CPython starts (3.8-3.12, then 3.13).
CPYTHON_DEFAULTS = frozenset({(700, 10, 10), (2000, 10, 0)})

_tuned = False


def tuned_threshold(current: Tuple[int, ...], young: int) -> Optional[Tuple[int, ...]]:
    """The thresholds to set, or ``None`` to leave ``current`` as it is: only CPython's
    defaults are changed, and only upwards."""
    if young <= 0 or tuple(current) not in CPYTHON_DEFAULTS or current[0] >= young:
        return None
    return (young,) + tuple(current[1:])


def tune_collector(young: int) -> None:
    """Raise the young threshold to ``young`` once per process (the first app to serve
    a WebSocket decides)."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    current = gc.get_threshold()
    wanted = tuned_threshold(current, young)
    if wanted is None:
        log.debug("cycle collector thresholds left at %s", current)
        return
    gc.set_threshold(*wanted)
    log.info("cycle collector young threshold raised from %d to %d for the sockets this "
             "process holds (JPULSE_WS_GC_THRESHOLD; 0 leaves it alone)", current[0],
             wanted[0])
