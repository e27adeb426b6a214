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

from ..core.history import HistoryDelivery, Position, new_epoch
from .keys import history_keys, namespace_channel
from .redis_link import LinkBusy, LinkDown, LinkError

if TYPE_CHECKING:  # pragma: no cover
    from .redis_relay import RedisRelay

__all__ = ["RedisHistory"]

log = logging.getLogger("flask_jpulse_ws")

# Every script starts by reading the master's replication id (``master_replid``), which
# Redis changes whenever a replica is promoted (Sentinel or Cluster) or a master restarts,
# and stores it as ``rid`` beside the epoch. A stream whose ``rid`` is not the current
# one may lack the last entries of the master that wrote it, and its offsets would be
# given out again: the append and position scripts start a new epoch instead, and the
# replay script refuses. An ACL without INFO gives '' (and a warning, once per process).
_RID = """
local function master_rid()
  local info = redis.pcall('INFO', 'replication')
  if type(info) ~= 'string' then return '', 1 end
  local at = string.find(info, 'master_replid:', 1, true)
  return at and string.sub(info, at + 14, at + 53) or '', 0
end
local rid, noinfo = master_rid()
"""

# KEYS: meta hash, stream (one hash tag: keys.py).
# ARGV: frame JSON, max length, ttl ms, fresh epoch, reset flag, now ms, path, type,
# the namespace's channel (same tag: a channel of another slot would fail in Redis
# Cluster after the XADD had run), PUBLISH or SPUBLISH (Redis Cluster).
# Returns {epoch, offset, 1 when INFO was refused}.
_APPEND = _RID + """
if ARGV[5] == '1' then redis.call('DEL', KEYS[1], KEYS[2]) end
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'rid')
local epoch = meta[1]
if not epoch or meta[2] ~= rid then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0, 'rid', rid)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local frame = string.sub(ARGV[1], 1, -2) .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. offset, 'f', frame, 't', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call(ARGV[10], ARGV[9], cjson.encode({op = 'hbroadcast', host = '', path = ARGV[7],
  payload = frame, offset = offset, epoch = epoch, type = ARGV[8]}))
return {epoch, offset, noinfo}
"""

# KEYS: meta hash, stream. ARGV: fresh epoch, ttl ms. Returns the position (creating the
# epoch, and emptying the stream of a former one): {epoch, offset, INFO refused}.
_POSITION = _RID + """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'rid')
if not meta[1] or meta[3] ~= rid then
  meta[1], meta[2] = ARGV[1], 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', 0, 'rid', rid)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {meta[1], tonumber(meta[2]), noinfo}
"""


# KEYS: meta hash, stream. ARGV: the last offset the client has. Reads the position and
# the entries after it at one instant: {epoch, offset, INFO refused, id1, fields1, ...};
# no epoch when the stream was written under another master (its tail may be lost).
_SINCE = _RID + """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'rid')
if meta[3] ~= rid then return {false, false, noinfo} end
local out = {meta[1] or false, meta[2] or false, noinfo}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '(0-' .. ARGV[1], '+')) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2]
end
return out
"""

#: Seconds a broadcast waits to be stored (not sent by then: delivered here, unstored).
APPEND_WAIT = 10.0
#: Seconds a handshake waits for the history position or a replay.
READ_WAIT = 2.0


class RedisHistory:
    """The history store of a Redis relay (through its link, under its circuit)."""

    def __init__(self, relay: RedisRelay) -> None:
        self.relay = relay
        self.link = relay.link
        self._append = self.link.register_script(_APPEND)
        self._position = self.link.register_script(_POSITION)
        self._since = self.link.register_script(_SINCE)
        self._broken: set = set()  # paths whose stream lost a broadcast: reset next time

    def broadcast(self, path: str, frame_json: bytes, size: int, ttl: float, msg_type: str,
                  to: HistoryDelivery) -> int:
        """Redis assigns the offset and publishes; every process, this one too, delivers
        when it comes back, so all deliver in one order. When Redis could not take it,
        it is delivered here without a position (the ``_resync`` after an outage covers
        the other processes); when it is unknown whether Redis took it, Redis delivers
        it or nobody does. Either way the stream starts a new epoch next time, so no
        client is ever told it recovered across the gap."""
        if not self.relay.ensure_available():
            self._broken.add(path)
            return to.plain()
        meta, stream = history_keys(self.relay.prefix, path)
        reset = "1" if path in self._broken else "0"
        try:
            reply = self.link.eval(self._append, [meta, stream],
                                   [frame_json, size, int(ttl * 1000), new_epoch(), reset,
                                    int(time.time() * 1000), path,
                                    msg_type if isinstance(msg_type, str) else "",
                                    namespace_channel(self.relay.prefix, path),
                                    self.relay.publish_verb],
                                   timeout=APPEND_WAIT)
        except LinkError as exc:
            self._broken.add(path)
            if isinstance(exc, LinkBusy) and exc.sent:
                log.info("history append of %s: no answer within %s s", path, APPEND_WAIT)
                return to.later()  # it may be in Redis already: delivered from there
            if not isinstance(exc, LinkDown):
                log.warning("history append of %s failed: %s", path, exc)
            return to.plain()
        self._broken.discard(path)
        _check_rid(reply[2])
        return to.later()

    def position(self, path: str, ttl: float) -> Optional[Position]:
        if not self.relay.ensure_available():
            return None
        meta, stream = history_keys(self.relay.prefix, path)
        try:
            epoch, offset, no_info = self.link.eval(
                self._position, [meta, stream], [new_epoch(), int(ttl * 1000)],
                timeout=READ_WAIT)
        except LinkError as exc:
            log.info("history position of %s not read: %s", path, exc)
            return None
        _check_rid(no_info)
        return _text(epoch), int(offset)

    def since(self, path: str, since: Position, ttl: float
              ) -> Optional[List[Tuple[int, bytes]]]:
        """Every frame after ``since``, in order, or ``None`` (never a partial replay)."""
        if not self.relay.ensure_available():
            return None
        meta, stream = history_keys(self.relay.prefix, path)
        try:
            reply = self.link.eval(self._since, [meta, stream], [since[1]], timeout=READ_WAIT)
        except LinkError as exc:
            log.info("history of %s not read: %s", path, exc)
            return None
        epoch, offset, rest = reply[0], reply[1], reply[3:]
        _check_rid(reply[2])
        if not epoch or _text(epoch) != since[0] or int(offset) < since[1]:
            return None
        wanted = int(offset) - since[1]
        if len(rest) != 2 * wanted:
            return None  # trimmed or expired: older than the history holds
        horizon_ms = (time.time() - ttl) * 1000
        out = []
        for expected, i in enumerate(range(0, len(rest), 2), since[1] + 1):
            entry_id, flat = rest[i], rest[i + 1]
            fields = dict(zip(flat[::2], flat[1::2]))
            off = int(_text(entry_id).split("-", 1)[1])
            if off != expected or int(fields[b"t"]) < horizon_ms:
                return None
            out.append((off, fields[b"f"]))
        return out

    def drop(self, path: str) -> None:
        """Streams in Redis expire by themselves; nothing to do per process."""


_rid_warned = False  # one warning per process, not one per broadcast


def _check_rid(no_info: Any) -> None:
    """Warn once when the scripts could not read the master's replication id."""
    global _rid_warned
    if no_info and not _rid_warned:
        _rid_warned = True
        log.warning("Redis refuses INFO to this user: history cannot tell a failover or a "
                    "restart from an older snapshot, so a client recovering across one may "
                    "miss messages; allow the info command (+info) to turn detection on")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
