"""Presence: who is in a namespace (``presence=True``), on every process.

Each process knows its own members (its local connections) exactly. Without Redis
that is the whole answer. With Redis, each process also keeps its members in two keys
per namespace (``keys.presence_keys``): a hash ``host|clientId -> member JSON`` and a
sorted set of the same ids scored by expiry time, refreshed every third of
``JPULSE_WS_PRESENCE_TTL``. A killed process stops refreshing, its members expire,
and whichever process finds them first removes them with one Lua script (atomic, so
exactly one process announces each ``left``). Reads take the unexpired ids and their
JSON; this process's own members always come from memory.

Joins and leaves are batched: one ticker per app, every ``JPULSE_WS_PRESENCE_BATCH``
seconds, stores and publishes this process's own changes (one relayed ``presence``
operation per namespace) and sends every namespace's pending changes, local and
remote, to its local clients as one ``_presence`` frame. See ``docs/presence.md``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

from .. import concurrency
from ..cluster.keys import presence_keys
from ..cluster.link_errors import CommandFailed, LinkError
from ..core import envelope, frames
from ..core.stats import iso

if TYPE_CHECKING:  # pragma: no cover
    from ..cluster.backend import Backend
    from ..config import Settings
    from .connection import Connection
    from .namespace import Registry

__all__ = ["PresenceTracker", "Batch", "member_of", "member_key", "newest_per_client",
           "summarize"]

log = logging.getLogger("flask_jpulse_ws")

Member = Dict[str, Any]

#: Members per ``_presence`` frame: a huge burst goes out in several bounded frames
#: (well under each connection's outbound bound) instead of one enormous one.
MAX_FRAME_MEMBERS = 1000
#: Ids per HMGET, and expired members removed per reap call.
REDIS_CHUNK = 1000
#: Leaves whose Redis removal failed, retried once Redis answers (beyond: left to expire).
MAX_UNSYNCED = 10000

# Remove the expired members of one namespace and return [id, json, id, json...]:
# atomic, so when several processes find the same expired members, exactly one gets them.
REAP_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[1], id) or ''
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return out
"""


# ---------------------------------------------------------------- members (pure)

def member_of(conn: Connection) -> Member:
    """A connection as a presence member on the wire."""
    return {"clientId": conn.client_id, "username": conn.ctx.username,
            "connectedAt": iso(conn.connected_at), "info": dict(conn.presence_info)}


def member_key(member: Member) -> str:
    """One connection's identity in a batch: a client id may reconnect (new time)."""
    return f"{member.get('clientId')}|{member.get('connectedAt')}"


def newest_per_client(members: Iterable[Member]) -> List[Member]:
    """One member per client id (the latest connection: a client that moved to another
    process may linger on the old one until its ping times out), in joining order."""
    best: Dict[str, Member] = {}
    for m in members:
        cid = str(m.get("clientId"))
        held = best.get(cid)
        if held is None or str(m.get("connectedAt")) > str(held.get("connectedAt")):
            best[cid] = m
    return sorted(best.values(), key=lambda m: (str(m.get("connectedAt")),
                                                str(m.get("clientId"))))


def summarize(members: List[Member]) -> Dict[str, int]:
    """``{"clients": n, "users": m}``: several tabs of one user are one user; an
    anonymous client (no username) counts as a user of its own."""
    users = {m.get("username") or "\0" + str(m.get("clientId")) for m in members}
    return {"clients": len(members), "users": len(users)}


class Batch:
    """Changes of one namespace since the last tick. A connection that joins and leaves
    within one batch cancels out; receivers apply ``left``, then ``joined``, then
    ``updated`` (a member whose info changed)."""

    __slots__ = ("joined", "left", "updated")

    def __init__(self) -> None:
        self.joined: Dict[str, Member] = {}
        self.left: Dict[str, Member] = {}
        self.updated: Dict[str, Member] = {}

    def __bool__(self) -> bool:
        return bool(self.joined or self.left or self.updated)

    def join(self, member: Member) -> None:
        key = member_key(member)
        self.updated.pop(key, None)
        self.joined[key] = member

    def leave(self, member: Member) -> None:
        key = member_key(member)
        self.updated.pop(key, None)
        if self.joined.pop(key, None) is None:  # joined within this batch: nothing to say
            self.left[key] = member

    def update(self, member: Member) -> None:
        key = member_key(member)
        if key in self.joined:
            self.joined[key] = member
        elif key not in self.left:
            self.updated[key] = member

    def merge(self, data: Dict[str, Any]) -> None:
        """Add a batch received from another process (its wire form)."""
        for name, apply in (("left", self.leave), ("joined", self.join),
                            ("updated", self.update)):
            for member in data.get(name) or ():
                if isinstance(member, dict) and isinstance(member.get("clientId"), str):
                    apply(member)

    def to_wire(self) -> Dict[str, List[Member]]:
        out = {"joined": list(self.joined.values()), "left": list(self.left.values())}
        if self.updated:
            out["updated"] = list(self.updated.values())
        return out

    def chunks(self, size: int = MAX_FRAME_MEMBERS) -> List[Dict[str, List[Member]]]:
        """The wire form split into frames of at most ``size`` members (usually one)."""
        entries = [("left", m) for m in self.left.values()] + \
            [("joined", m) for m in self.joined.values()] + \
            [("updated", m) for m in self.updated.values()]
        out = []
        for start in range(0, len(entries), size):
            part: Dict[str, List[Member]] = {"joined": [], "left": []}
            for name, m in entries[start:start + size]:
                part.setdefault(name, []).append(m)
            out.append(part)
        return out


# ---------------------------------------------------------------- the tracker


class PresenceTracker:
    """Members of every presence namespace of one app; see the module docstring."""

    def __init__(self, settings: Settings, registry: Registry, backend: Backend) -> None:
        self.registry = registry
        self.backend = backend
        self.prefix = settings.channel_prefix
        self.ttl = float(settings.presence_ttl)
        self.batch_interval = float(settings.presence_batch)
        self._local: Dict[str, Dict[str, Member]] = {}  # path -> clientId -> member
        self._pending: Dict[str, Batch] = {}  # for local clients at the next tick
        self._outgoing: Dict[str, Batch] = {}  # own changes, for Redis and the relay
        self._unsynced: Dict[str, Dict[str, None]] = {}  # path -> ids still to remove
        self._lock = concurrency.Lock()  # under threads; greenlets never switch inside
        self._ticker: Any = None
        self._next_refresh = 0.0
        self.frames_sent = 0
        self.reaped = 0

    # ------------------------------------------------------------ local changes
    def joined(self, conn: Connection) -> None:
        """``conn`` was welcomed into a presence namespace."""
        member = member_of(conn)
        path = conn.namespace.path
        with self._lock:
            local = self._local.setdefault(path, {})
            old = local.get(conn.client_id)  # replaced by a newer socket (4409)
            local[conn.client_id] = member
            for batch in (self._batch(self._pending, path), self._batch(self._outgoing, path)):
                if old is not None:
                    batch.leave(old)
                batch.join(member)
        self._ensure_ticker()

    def left(self, conn: Connection) -> None:
        """``conn`` left (it was still the holder of its client id)."""
        path = conn.namespace.path
        with self._lock:
            local = self._local.get(path, {})
            member = local.get(conn.client_id)
            if member is None or member["connectedAt"] != iso(conn.connected_at):
                return
            del local[conn.client_id]
            if not local:
                self._local.pop(path, None)
            self._batch(self._pending, path).leave(member)
            self._batch(self._outgoing, path).leave(member)
        self._ensure_ticker()

    def updated(self, conn: Connection) -> None:
        """``conn.set_presence_info()`` changed the member's ``info``."""
        path = conn.namespace.path
        with self._lock:
            local = self._local.get(path, {})
            held = local.get(conn.client_id)
            if held is None or held["connectedAt"] != iso(conn.connected_at):
                return
            member = member_of(conn)
            local[conn.client_id] = member
            self._batch(self._pending, path).update(member)
            self._batch(self._outgoing, path).update(member)
        self._ensure_ticker()

    def apply_remote(self, message: Dict[str, Any]) -> None:
        """A batch another process published: sent to local clients at our next tick."""
        path = message.get("path")
        if not isinstance(path, str):
            return
        with self._lock:
            self._batch(self._pending, path).merge(message)
        self._ensure_ticker()

    @staticmethod
    def _batch(batches: Dict[str, Batch], path: str) -> Batch:
        batch = batches.get(path)
        if batch is None:
            batch = batches[path] = Batch()
        return batch

    # ------------------------------------------------------------ reading
    def members(self, path: str) -> List[Member]:
        """Members of ``path`` on every process (local only while Redis is away)."""
        return self.snapshot(path)[0]

    def stats(self, path: str) -> Dict[str, Any]:
        """``{"clients": n, "users": m}`` of ``path`` on every process, plus
        ``"partial": True`` while Redis cannot be read (this process's members only)."""
        members, partial = self.snapshot(path)
        out: Dict[str, Any] = dict(summarize(members))
        if partial:
            out["partial"] = True
        return out

    def snapshot(self, path: str) -> Tuple[List[Member], bool]:
        """(members, partial): partial when Redis could not be read."""
        with self._lock:
            own = list(self._local.get(path, {}).values())
        if not self._redis_ready():
            return newest_per_client(own), self._link is not None
        hkey, zkey = self._keys(path)
        now = time.time()
        own_prefix = self.backend.host_id + "|"
        try:
            pipe = self._link.pipeline()
            pipe.zrangebyscore(zkey, now, "+inf")
            pipe.zcount(zkey, "-inf", f"({now}")
            ids, expired = self._link.run(pipe)
            ids = [_text(i) for i in ids]
            others = [i for i in ids if not i.startswith(own_prefix)]
            remote: List[Member] = []
            for start in range(0, len(others), REDIS_CHUNK):
                for raw in self._link.call("HMGET", hkey,
                                           *others[start:start + REDIS_CHUNK]):
                    member = _decode_member(raw)
                    if member is not None:
                        remote.append(member)
        except LinkError as exc:
            self._failed("presence read", exc)
            return newest_per_client(own), True
        if expired:
            self._reap(path, now)
        return newest_per_client(own + remote), False

    def handle_request(self, conn: Connection, rid: Optional[str]) -> None:
        """Answer a client's ``{"type": "_presence"}``: members, stats, maybe partial."""
        members, partial = self.snapshot(conn.namespace.path)
        data: Dict[str, Any] = {"members": members, "stats": summarize(members)}
        if partial:
            data["partial"] = True  # Redis unreachable: this process's members only
        conn.send_raw_json(envelope.encode_reply(data, rid))

    # ------------------------------------------------------------ the ticker
    def _ensure_ticker(self) -> None:
        if self._ticker is None:
            self._ticker = concurrency.every(self.batch_interval, self.tick, "presence tick")

    def tick(self) -> int:
        """Store and publish own changes, refresh when due, then send every pending
        batch to local clients (one frame per namespace); returns frames sent."""
        with self._lock:
            outgoing, self._outgoing = self._outgoing, {}
        outgoing = {p: b for p, b in outgoing.items() if b}
        if self._link is not None:  # members are shared with other processes
            self._store(outgoing)
            for path, batch in outgoing.items():
                self.backend.publish("presence", path=path, **batch.to_wire())
            # Refresh on the last tick before it is due, not the first after: the
            # period stays at most TTL/3 even when TTL/3 is not a multiple of a tick.
            if concurrency.monotonic() + self.batch_interval > self._next_refresh:
                self._refresh()
        with self._lock:
            pending, self._pending = self._pending, {}
        sent = 0
        live = self.registry.live
        for path, batch in pending.items():
            ns = live.get(path)
            if not batch or ns is None or not ns.clients:
                continue
            for part in batch.chunks():
                ns.deliver_frame(frames.text_frame(envelope.encode_framework("_presence",
                                                                             part)))
                sent += 1
        self.frames_sent += sent
        return sent

    # ------------------------------------------------------------ Redis
    @property
    def _link(self) -> Any:
        """The backend's link to Redis (``redis_link.RedisLink``); ``None`` in one process."""
        return self.backend.link

    def _redis_ready(self) -> bool:
        return self._link is not None and self.backend.available()

    def _failed(self, what: str, exc: BaseException) -> None:
        if isinstance(exc, CommandFailed):  # our command, not the connection
            log.error("%s failed: %s", what, exc)
        else:  # Redis away (the link opened the circuit) or busy: retried later
            log.info("%s failed: %s", what, exc)

    def _keys(self, path: str) -> Tuple[str, str]:
        return presence_keys(self.prefix, path)

    def _field(self, member: Member) -> str:
        return f"{self.backend.host_id}|{member['clientId']}"

    def _key_ttl(self) -> int:
        return max(1, math.ceil(self.ttl * 3))  # a namespace nobody refreshes goes away

    def _store(self, outgoing: Dict[str, Batch]) -> None:
        """Own joins, updates and leaves of this tick, in one pipeline."""
        with self._lock:
            unsynced, self._unsynced = self._unsynced, {}
            for path, ids in unsynced.items():  # a client that came back keeps its entry
                held = self._local.get(path, {})
                for field in [f for f in ids if f.split("|", 1)[1] in held]:
                    del ids[field]
        if not outgoing and not unsynced:
            return
        gone: Dict[str, List[str]] = {p: list(ids) for p, ids in unsynced.items() if ids}
        for path, batch in outgoing.items():
            gone.setdefault(path, []).extend(self._field(m) for m in batch.left.values())
        if not self._redis_ready():
            self._keep_unsynced(gone)
            self._next_refresh = 0.0  # write our members as soon as Redis answers
            return
        expiry = time.time() + self.ttl
        try:
            pipe = self._link.pipeline()
            for path, fields in gone.items():  # removals first: a replaced id is re-set
                if fields:
                    hkey, zkey = self._keys(path)
                    pipe.hdel(hkey, *fields)
                    pipe.zrem(zkey, *fields)
            for path, batch in outgoing.items():
                present = list(batch.joined.values()) + list(batch.updated.values())
                if present:
                    self._write_members(pipe, path, present, expiry)
            self._link.run(pipe)
        except LinkError as exc:
            self._keep_unsynced(gone)
            self._next_refresh = 0.0  # rewrite our members once Redis answers
            self._failed("presence store", exc)

    def _keep_unsynced(self, gone: Dict[str, List[str]]) -> None:
        with self._lock:
            count = sum(len(v) for v in self._unsynced.values())
            for path, fields in gone.items():
                for field in fields:
                    if count >= MAX_UNSYNCED:
                        return  # the rest expire on their own within the TTL
                    self._unsynced.setdefault(path, {})[field] = None
                    count += 1

    def _write_members(self, pipe: Any, path: str, members: List[Member],
                       expiry: float) -> None:
        hkey, zkey = self._keys(path)
        pipe.hset(hkey, mapping={self._field(m): envelope.encode_json(m) for m in members})
        pipe.zadd(zkey, {self._field(m): expiry for m in members})
        pipe.expire(hkey, self._key_ttl())
        pipe.expire(zkey, self._key_ttl())

    def _refresh(self) -> None:
        """Every TTL/3: push our members' expiry forward (re-adding any that another
        process reaped while we lagged) and reap whoever expired."""
        if not self._redis_ready():
            return  # retried at every tick until Redis answers
        self._next_refresh = concurrency.monotonic() + self.ttl / 3
        with self._lock:
            local = {p: list(m.values()) for p, m in self._local.items() if m}
        if not local:
            return
        now = time.time()
        expiry = now + self.ttl
        try:
            pipe = self._link.pipeline()
            for path, members in local.items():
                hkey, zkey = self._keys(path)
                pipe.hset(hkey, mapping={self._field(m): envelope.encode_json(m)
                                         for m in members})
                for m in members:  # one ZADD each: 1 means "was gone", i.e. reaped
                    pipe.zadd(zkey, {self._field(m): expiry})
                pipe.expire(hkey, self._key_ttl())
                pipe.expire(zkey, self._key_ttl())
                pipe.zcount(zkey, "-inf", f"({now}")
            results = iter(self._link.run(pipe))
        except LinkError as exc:
            self._failed("presence refresh", exc)
            return
        back: Dict[str, List[Member]] = {}
        expired_paths = []
        for path, members in local.items():
            next(results)  # HSET
            for m in members:
                if next(results):
                    back.setdefault(path, []).append(m)
            next(results), next(results)  # EXPIRE x2
            if next(results):
                expired_paths.append(path)
        for path, members in back.items():  # reaped while we lagged: announce again
            batch = Batch()
            with self._lock:
                fresh = self._outgoing.get(path)  # joined meanwhile: the next tick says so
                pending = self._batch(self._pending, path)
                for m in members:
                    if fresh is None or member_key(m) not in fresh.joined:
                        batch.join(m)
                        pending.join(m)
            if not batch:
                continue
            self.backend.publish("presence", path=path, **batch.to_wire())
        for path in expired_paths:
            self._reap(path, now)

    def _reap(self, path: str, now: float) -> int:
        """Remove expired members of ``path`` (one atomic script); announce their leave."""
        hkey, zkey = self._keys(path)
        own_prefix = self.backend.host_id + "|"
        try:
            raw = self._link.call("EVAL", REAP_SCRIPT, 2, hkey, zkey, now, REDIS_CHUNK)
        except LinkError as exc:
            self._failed("presence reap", exc)
            return 0
        batch = Batch()
        for field, value in zip(raw[::2], raw[1::2]):
            member = _decode_member(value)
            if member is not None and not _text(field).startswith(own_prefix):
                batch.leave(member)
        if not batch:
            return 0
        self.reaped += len(batch.left)
        log.info("presence: %d expired members of %s removed (their process is gone)",
                 len(batch.left), path)
        with self._lock:
            pending = self._batch(self._pending, path)
            for m in batch.left.values():
                pending.leave(m)
        self.backend.publish("presence", path=path, **batch.to_wire())
        self._ensure_ticker()
        return len(batch.left)

    def status(self) -> Dict[str, Any]:
        """Counters for stats pages (``ws.get_stats()["presence"]``, the dashboard):
        members held here, ``_presence`` frames sent (one per namespace per batch
        interval at most), members of dead processes reaped, and the batch interval."""
        with self._lock:
            local = sum(len(m) for m in self._local.values())
        return {"localMembers": local, "framesSent": self.frames_sent, "reaped": self.reaped,
                "batchInterval": self.batch_interval}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _decode_member(raw: Any) -> Optional[Member]:
    if not raw:
        return None
    try:
        member = envelope.decode_json(raw)
    except ValueError:
        return None
    return member if isinstance(member, dict) and "clientId" in member else None
