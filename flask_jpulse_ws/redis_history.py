"""Missed-message history in Redis Streams, shared by every worker of a cluster.

One Lua script per broadcast assigns the offset, appends the frame to the
stream (trimmed to the namespace's size, expiring after its TTL) and publishes
it, atomically: Redis' order is the one order every worker delivers in, so the
origin does not deliver locally first for these namespaces.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

import redis

from .history import Position, new_epoch
from .relay import history_keys

if TYPE_CHECKING:  # pragma: no cover
    from .redis_relay import RedisRelay

__all__ = ["RedisHistory"]

log = logging.getLogger("flask_jpulse_ws")

# KEYS: meta hash, stream, relay channel.
# ARGV: frame JSON, max length, ttl ms, fresh epoch, reset flag, now ms, path, type.
_APPEND = """
if ARGV[5] == '1' then redis.call('DEL', KEYS[1], KEYS[2]) end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local frame = string.sub(ARGV[1], 1, -2) .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. offset, 'f', frame, 't', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], cjson.encode({op = 'hbroadcast', host = '', path = ARGV[7],
  payload = frame, offset = offset, epoch = epoch, type = ARGV[8]}))
return {epoch, offset}
"""

# KEYS: meta hash. ARGV: fresh epoch, ttl ms. Returns the position, creating the stream.
_POSITION = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {epoch, tonumber(redis.call('HGET', KEYS[1], 'offset'))}
"""


class RedisHistory:
    """The history store of a Redis relay (its short-timeout client, its circuit)."""

    def __init__(self, relay: RedisRelay) -> None:
        self.relay = relay
        self._client = relay._pub
        self._append = self._client.register_script(_APPEND)
        self._position = self._client.register_script(_POSITION)
        self._broken: set = set()  # paths whose stream lost a broadcast: reset next time

    def append(self, path: str, frame_json: bytes, size: int, ttl: float,
               msg_type: str = "") -> bool:
        """Assign the next offset and publish; False when Redis is not reachable."""
        if not self.relay.ensure_available():
            self._broken.add(path)
            return False
        meta, stream = history_keys(self.relay.prefix, path)
        reset = "1" if path in self._broken else "0"
        try:
            self._append(keys=[meta, stream, self.relay.channel],
                         args=[frame_json, size, int(ttl * 1000), new_epoch(), reset,
                               int(time.time() * 1000), path, msg_type])
        except (redis.RedisError, OSError) as exc:
            self._broken.add(path)  # it may have been stored: a new epoch settles it
            self.relay.report_failure(f"history append failed: {exc}")
            return False
        self._broken.discard(path)
        return True

    def position(self, path: str, ttl: float) -> Optional[Position]:
        if not self.relay.ensure_available():
            return None
        meta, _ = history_keys(self.relay.prefix, path)
        try:
            epoch, offset = self._position(keys=[meta], args=[new_epoch(), int(ttl * 1000)])
        except (redis.RedisError, OSError) as exc:
            self.relay.report_failure(f"history position failed: {exc}")
            return None
        return _text(epoch), int(offset)

    def since(self, path: str, since: Position, ttl: float
              ) -> Optional[List[Tuple[int, bytes]]]:
        """Every frame after ``since``, in order, or ``None`` (never a partial replay)."""
        if not self.relay.ensure_available():
            return None
        meta, stream = history_keys(self.relay.prefix, path)
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.hmget(meta, "epoch", "offset")
            pipe.xrange(stream, f"(0-{since[1]}", "+")
            (epoch, offset), entries = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self.relay.report_failure(f"history read failed: {exc}")
            return None
        if epoch is None or _text(epoch) != since[0] or int(offset) < since[1]:
            return None
        wanted = int(offset) - since[1]
        if len(entries) != wanted:
            return None  # trimmed or expired: older than the history holds
        horizon_ms = (time.time() - ttl) * 1000
        out = []
        for expected, (entry_id, fields) in enumerate(entries, since[1] + 1):
            off = int(_text(entry_id).split("-", 1)[1])
            if off != expected or int(fields[b"t"]) < horizon_ms:
                return None
            out.append((off, fields[b"f"]))
        return out

    def drop(self, path: str) -> None:
        """Streams in Redis expire by themselves; nothing to do per process."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
