"""Logged-out browser sessions stay logged out.

Flask's default sessions live in the browser's cookie: logging out clears the cookie the
browser keeps, but a copy taken before (a stolen cookie, a second device, a replay) still
carries the login. The extension names every logged-in browser session with a random
token (``server/auth.py``); on logout that token is revoked here, and a handshake that
presents it is refused 4401 for as long as the session could have lived
(``app.permanent_session_lifetime``).

One process keeps the revoked tokens in memory (at most :data:`MAX_REMEMBERED`, the
oldest forgotten first). With Redis they are also kept there, as a digest with a TTL, so
that every worker, including ones started later, refuses them; a worker that cannot reach
Redis still knows the revocations it was told of (logout is relayed to every worker).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any, Optional

from .keys import revoked_key
from .link_errors import LinkError

__all__ = ["Revocations", "RedisRevocations", "MAX_REMEMBERED", "LOOKUP_WAIT"]

#: Revoked tokens one process remembers at most (each about 150 bytes).
MAX_REMEMBERED = 100_000
#: Seconds a handshake waits for Redis to say whether its session was revoked.
LOOKUP_WAIT = 1.0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Revocations:
    """Revoked session tokens of one process, each until its session would have ended."""

    def __init__(self, max_remembered: int = MAX_REMEMBERED) -> None:
        self._until: OrderedDict[str, float] = OrderedDict()  # digest -> expiry, oldest first
        self._max = max_remembered

    def revoke(self, token: str, lifetime: float, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        digest = _digest(token)
        self._until.pop(digest, None)
        self._until[digest] = now + lifetime
        while len(self._until) > self._max:
            self._until.popitem(last=False)

    def is_revoked(self, token: str, now: Optional[float] = None) -> bool:
        now = time.time() if now is None else now
        until = self._until.get(_digest(token))
        if until is None:
            return False
        if until <= now:
            del self._until[_digest(token)]
            return False
        return True


class RedisRevocations(Revocations):
    """The same, shared by every process through Redis (``<prefix>:revoked:<digest>``)."""

    def __init__(self, link: Any, prefix: str, available: Any,
                 max_remembered: int = MAX_REMEMBERED) -> None:
        super().__init__(max_remembered)
        self.link = link
        self.prefix = prefix
        self._available = available

    def revoke(self, token: str, lifetime: float, now: Optional[float] = None) -> None:
        super().revoke(token, lifetime, now)
        if self._available():
            pipe = self.link.pipeline()
            pipe.set(revoked_key(self.prefix, _digest(token)), "1", ex=max(1, int(lifetime)))
            self.link.post(pipe)  # not waited for: every worker was told through the relay

    def is_revoked(self, token: str, now: Optional[float] = None) -> bool:
        if super().is_revoked(token, now):
            return True
        if not self._available():
            return False  # what this process was told still holds (the check above)
        try:
            return bool(self.link.call("EXISTS", revoked_key(self.prefix, _digest(token)),
                                       timeout=LOOKUP_WAIT))
        except LinkError:
            return False
