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

Claims, refreshes and releases go through the process's auto-pipelined link, so a storm
of handshakes costs a few pipelines. A handshake waits at most :data:`CLAIM_WAIT` for
its claim; while Redis is away or slower than that, the socket is admitted under the
per-process rule and claimed by the next health cycle once Redis answers; if another
identity holds the id by then, the socket is closed 4409 so that its client comes back
with a fresh id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from .. import concurrency
from ..errors import CloseCode
from .keys import client_id_key
from .redis_link import LinkError, RedisLink, record_eval

__all__ = ["IdClaims", "CLAIM_TTL", "CLAIM_REFRESH", "CLAIM_WAIT"]

log = logging.getLogger("flask_jpulse_ws")

#: Seconds a claim outlives the last refresh (a dead process's claims go by then).
CLAIM_TTL = 900
#: Seconds after which a live connection's claim is refreshed on its next ping; a claim
#: lost with a Redis restart is made again then.
CLAIM_REFRESH = 300
#: Seconds a handshake waits for its claim before it is admitted unclaimed (and claimed
#: by the next health cycle): a claim takes a millisecond when Redis is well.
CLAIM_WAIT = 1.0
#: Late claims and refreshes sent by one health cycle at the most (the rest wait a tick).
MAX_PER_CYCLE = 5000

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


class Claimant(Protocol):
    """What a claim needs of a connection (``server.connection.Connection``)."""

    client_id: str
    identity: tuple
    namespace: Any  # its ``.path``
    id_claim: Optional[str]
    id_claimed_at: float
    needs_claim: bool
    open: bool

    def close(self, code: int, reason: str = "") -> None: ...


class IdClaims:
    """The claims of one app's connections (used only with Redis).

    :param available: True while Redis answers (the relay's circuit is closed).
    :param secret: keys the identity digests stored in Redis.
    """

    def __init__(self, link: RedisLink, prefix: str, secret: bytes,
                 available: Callable[[], bool]) -> None:
        self.link = link
        self.prefix = prefix
        self._available = available
        self._claim = link.register_script(_CLAIM)
        self._release = link.register_script(_RELEASE)
        self._refresh = link.register_script(_REFRESH)
        self._key = secret
        self._recoveries = 0  # Redis came back this many times...
        self._refreshed = 0  # ...and every claim was made again after this many
        self._maintaining = False
        self.made = 0
        self.deferred = 0  # admitted without a claim (Redis away or slow)
        self.late = 0  # claimed afterwards by the health cycle
        self.conflicts = 0  # closed 4409: another identity held the id meanwhile

    def digest(self, identity: tuple) -> str:
        """The identity as stored in Redis: keyed, so tokens and IPs are not readable."""
        return hmac.new(self._key, repr(identity).encode(), hashlib.sha256).hexdigest()

    def _key_of(self, path: str, client_id: str) -> str:
        return client_id_key(self.prefix, path, client_id)

    def claim(self, path: str, client_id: str, identity: tuple
              ) -> Tuple[str, Optional[str], bool]:
        """(the id to use, the claim to release later, whether none could be made now:
        the health cycle then makes it, see :meth:`claim_late`)."""
        if not self._available():
            self.deferred += 1
            return client_id, None, True
        digest = self.digest(identity)
        for _ in range(3):  # a fresh uuid4 is free; more tries only guard the impossible
            nonce = secrets.token_hex(4)
            try:
                taken = self.link.eval(self._claim, [self._key_of(path, client_id)],
                                       [digest, nonce, int(CLAIM_TTL * 1000)],
                                       timeout=CLAIM_WAIT)
            except LinkError as exc:
                log.info("client id claim deferred: %s", exc)
                self.deferred += 1
                return client_id, None, True
            if taken:
                self.made += 1
                return client_id, f"{digest}:{nonce}", False
            client_id = str(uuid.uuid4())  # held by another identity elsewhere
        self.deferred += 1
        return client_id, None, True

    def maintain(self, unclaimed: List[Claimant], due: List[Claimant], now: float,
                 everything: bool = False) -> None:
        """From the health cycle: claim ``unclaimed`` ids late and refresh the claims
        ``due`` (``everything``: every claim, as :attr:`refresh_all_wanted` asked), in a
        task of their own so that a slow Redis never delays pings. While the previous
        round still runs, this one is skipped: unclaimed sockets are picked up again next
        tick, due claims at their next ping (long before they expire)."""
        if self._maintaining:
            return
        if not (unclaimed or due):
            if everything:
                self._refreshed = self._recoveries  # nothing held: nothing to make again
            return
        self._maintaining = True
        concurrency.spawn(self._maintain, unclaimed, due, now,
                          self._recoveries if everything else None)

    def _maintain(self, unclaimed: List[Claimant], due: List[Claimant], now: float,
                  recovery: Optional[int]) -> None:
        try:
            self.claim_late(unclaimed, now)
            if self.refresh(due, now) and recovery is not None:
                self._refreshed = max(self._refreshed, recovery)
        except Exception:  # noqa: BLE001 - the next cycle tries again
            log.exception("client id claim maintenance failed")
        finally:
            self._maintaining = False

    @staticmethod
    def _holds(conn: Claimant) -> bool:
        """``conn`` is open and still the socket its namespace knows by its id."""
        return conn.open and conn.namespace.clients.get(conn.client_id) is conn

    def claim_late(self, conns: List[Claimant], now: float) -> None:
        """Claim the ids of sockets admitted without a claim; close 4409 any whose id
        another identity took meanwhile."""
        conns = [c for c in conns if self._holds(c)][:MAX_PER_CYCLE]
        if not conns or not self._available():
            return
        pipe = self.link.pipeline()
        values = []
        for conn in conns:
            digest, nonce = self.digest(conn.identity), secrets.token_hex(4)
            values.append(f"{digest}:{nonce}")
            record_eval(pipe, self._claim, [self._key_of(conn.namespace.path, conn.client_id)],
                        [digest, nonce, int(CLAIM_TTL * 1000)])
        try:
            results = self.link.run(pipe)
        except LinkError as exc:
            log.info("could not claim %d client ids yet: %s", len(conns), exc)
            return
        for conn, value, taken in zip(conns, values, results):
            conn.needs_claim = False
            if not self._holds(conn):  # left or replaced while we waited
                if taken:
                    self._post_release(conn.namespace.path, conn.client_id, value)
                continue
            if taken:
                conn.id_claim, conn.id_claimed_at = value, now
                self.late += 1
            else:
                self._conflict(conn)

    def _conflict(self, conn: Claimant) -> None:
        self.conflicts += 1
        conn.id_claim = None
        conn.close(CloseCode.REPLACED, "Client id in use elsewhere: reconnect")

    @staticmethod
    def due(conn: Claimant, now: float) -> bool:
        """Whether ``conn``'s claim is older than :data:`CLAIM_REFRESH`."""
        return conn.id_claim is not None and now - conn.id_claimed_at > CLAIM_REFRESH

    def release(self, conn: Claimant) -> None:
        """Give the id up (queued, not waited for: a claim not released expires by
        itself). ``conn`` holds a claim (``conn.id_claim``)."""
        self._post_release(conn.namespace.path, conn.client_id, str(conn.id_claim))

    def _post_release(self, path: str, client_id: str, value: str) -> None:
        pipe = self.link.pipeline()
        record_eval(pipe, self._release, [self._key_of(path, client_id)], [value])
        self.link.post(pipe)

    def recovered(self) -> None:
        """Redis answers again after an outage: it may have restarted empty, so every
        claim is made again by the next health cycles (until one succeeds)."""
        self._recoveries += 1

    @property
    def refresh_all_wanted(self) -> bool:
        """True after :meth:`recovered` until every claim has been made again."""
        return self._refreshed < self._recoveries

    def refresh(self, due: List[Claimant], now: float) -> bool:
        """Refresh (or make again) the claims of ``due``; close 4409 a socket whose id
        another identity took while Redis had lost the claim. True when all went."""
        due = [c for c in due if self._holds(c)]
        if not due:
            return True
        if not self._available():
            return False
        for start in range(0, len(due), MAX_PER_CYCLE):
            part = due[start:start + MAX_PER_CYCLE]
            pipe = self.link.pipeline()
            for conn in part:
                record_eval(pipe, self._refresh,
                            [self._key_of(conn.namespace.path, conn.client_id)],
                            [str(conn.id_claim), int(CLAIM_TTL * 1000)])
            try:
                results = self.link.run(pipe)
            except LinkError as exc:  # due again at their next ping
                log.info("could not refresh client id claims: %s", exc)
                return False
            for conn, kept in zip(part, results):
                if not self._holds(conn):  # left meanwhile: its release follows ours
                    continue
                if kept:
                    conn.id_claimed_at = now
                else:
                    self._conflict(conn)
        return True

    def status(self) -> Dict[str, int]:
        return {"made": self.made, "deferred": self.deferred, "late": self.late,
                "conflicts": self.conflicts}
