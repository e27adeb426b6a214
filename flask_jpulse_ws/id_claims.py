"""Client ids are unique across processes, not only within one.

Within a process the handshake keeps an id for its own identity (another identity gets
a fresh id; the same one replaces the older socket, 4409). With several processes a
client could present an id that another worker holds (presence lists show members'
ids) and receive what ``send_to_client`` and server requests meant for its owner. So
with the Redis relay every connection also claims its id in Redis:
``<prefix>:cid:<path>:<id>`` -> ``<identity digest>:<nonce>``. A claim by another
identity makes the handshake pick a fresh id, as within a process. The same identity
may claim again (a reconnect that lands on another worker). The claim is released on
disconnect, expires after :data:`CLAIM_TTL` if its process died, and is refreshed (or
made again, after a Redis restart) on the ping cycle while the connection lives.

While Redis is unreachable the claim is skipped: the per-process rule still holds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from typing import TYPE_CHECKING, List, Optional, Tuple

import redis

from . import concurrency
from .relay import client_id_key

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection
    from .extension import AppState

__all__ = ["IdClaims", "CLAIM_TTL", "CLAIM_REFRESH"]

log = logging.getLogger("flask_jpulse_ws")

#: Seconds a claim outlives the last refresh (a dead process's claims go by then).
CLAIM_TTL = 900
#: Seconds after which a live connection's claim is refreshed on its next ping; a claim
#: lost with a Redis restart is made again then.
CLAIM_REFRESH = 300
#: Releases sent to Redis in one pipeline.
_RELEASE_BATCH = 1000

# Take the id unless another identity holds it (the digest is the value's prefix).
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
"""
# Release or refresh only our own claim (a newer socket of the same identity may own it).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_REFRESH = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class IdClaims:
    """The claims of one app's connections (used only with the Redis relay)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        relay = state.relay
        self.prefix = relay.prefix  # type: ignore[attr-defined]
        client = relay._pub  # type: ignore[attr-defined]  # short timeouts, no retries
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._refresh = client.register_script(_REFRESH)
        secret = state.app.secret_key or self.prefix
        self._key = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._releases: List[Tuple[str, str]] = []
        self._releasing = False
        self._release_lock = concurrency.Lock()

    def digest(self, identity: tuple) -> str:
        """The identity as stored in Redis: keyed, so tokens and IPs are not readable."""
        return hmac.new(self._key, repr(identity).encode(), hashlib.sha256).hexdigest()

    def claim(self, path: str, client_id: str, identity: tuple) -> Tuple[str, Optional[str]]:
        """(the id to use, the claim to release later or ``None`` if none was made)."""
        relay = self.state.relay
        if not relay.ensure_available():  # type: ignore[attr-defined]
            return client_id, None
        digest = self.digest(identity)
        for _ in range(3):  # a fresh uuid4 is free; more tries only guard the impossible
            nonce = secrets.token_hex(4)
            try:
                taken = self._claim(keys=[client_id_key(self.prefix, path, client_id)],
                                    args=[digest, nonce, int(CLAIM_TTL * 1000)])
            except (redis.RedisError, OSError) as exc:
                relay.report_failure(f"client id claim failed: {exc}")  # type: ignore[attr-defined]
                return client_id, None
            if taken:
                return client_id, f"{digest}:{nonce}"
            client_id = str(uuid.uuid4())  # held by another identity elsewhere
        return client_id, None

    def release(self, conn: Connection) -> None:
        """Give the id up, soon: releases are sent in batches by one task, so that
        thousands of clients leaving at once do not open thousands of Redis connections.
        ``conn`` holds a claim (``conn.id_claim``)."""
        key = client_id_key(self.prefix, conn.namespace.path, conn.client_id)
        with self._release_lock:
            self._releases.append((key, str(conn.id_claim)))
            if self._releasing:
                return
            self._releasing = True
        concurrency.spawn(self.flush_releases)

    def flush_releases(self) -> None:
        """Send the pending releases now (a claim not released expires by itself)."""
        try:
            while True:
                with self._release_lock:
                    batch = self._releases[:_RELEASE_BATCH]
                    del self._releases[:_RELEASE_BATCH]
                    if not batch:
                        return
                try:
                    pipe = self.state.relay._pub.pipeline(transaction=False)  # type: ignore[attr-defined]
                    for key, value in batch:
                        self._release(keys=[key], args=[value], client=pipe)
                    pipe.execute()
                except (redis.RedisError, OSError) as exc:
                    log.info("could not release %d client id claims: %s", len(batch), exc)
        finally:
            with self._release_lock:
                self._releasing = False

    def refresh(self, due: List[Connection], now: float) -> None:
        """Refresh (or make again) the claims of ``due``: connections holding a claim
        older than :data:`CLAIM_REFRESH` (the health scheduler picks them)."""
        if not due or not self.state.relay.ensure_available():  # type: ignore[attr-defined]
            return
        try:
            pipe = self.state.relay._pub.pipeline(transaction=False)  # type: ignore[attr-defined]
            for conn in due:
                self._refresh(keys=[client_id_key(self.prefix, conn.namespace.path,
                                                  conn.client_id)],
                              args=[conn.id_claim, int(CLAIM_TTL * 1000)], client=pipe)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.info("could not refresh client id claims: %s", exc)
            return
        for conn in due:
            conn.id_claimed_at = now
