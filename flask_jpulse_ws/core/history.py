"""Missed-message history: an offset per broadcast, an epoch per stream, replay.

A namespace declared with ``history_size`` keeps its last broadcasts. Every frame
carries ``offset`` (1, 2, 3... per stream) and ``epoch`` (a random name that
changes whenever the stream is lost or reset). A client that reconnects with
``?since=epoch:offset`` gets exactly what it missed, or is told it cannot (never a
partial replay). This module holds the in-memory store (one process) and the
pure helpers; ``redis_history`` stores streams in Redis for a cluster.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Deque, List, Optional, Protocol, Tuple

__all__ = ["Position", "with_position", "parse_since", "new_epoch", "MemoryHistory",
           "HistoryDelivery", "DEFAULT_TTL"]

#: Seconds a broadcast stays replayable when a namespace gives a size but no TTL.
DEFAULT_TTL = 300.0
#: Seconds between two looks for expired streams (one pass over all of them).
_SWEEP_INTERVAL = 1.0

_SINCE = re.compile(r"^([A-Za-z0-9_-]{1,64}):(\d{1,18})$")

#: (epoch, offset): where a stream is, or where a client got to.
Position = Tuple[str, int]


def new_epoch() -> str:
    return secrets.token_hex(6)


def with_position(frame_json: bytes, offset: int, epoch: str) -> bytes:
    """``{"success": true, "data": ...}`` -> the same with ``"offset"`` and ``"epoch"``."""
    return b"%s,\"offset\":%d,\"epoch\":\"%s\"}" % (frame_json[:-1], offset, epoch.encode())


def parse_since(value: Optional[str]) -> Optional[Position]:
    """``"a1b2c3:42"`` -> ``("a1b2c3", 42)``; anything malformed -> ``None``."""
    m = _SINCE.match(value or "")
    return (m.group(1), int(m.group(2))) if m else None


@dataclass
class _Stream:
    ttl: float
    used: float  # creation or last append
    epoch: str = field(default_factory=new_epoch)
    offset: int = 0
    entries: Deque[Tuple[int, float, bytes]] = field(default_factory=deque)


class HistoryDelivery(Protocol):
    """Where a history store delivers a broadcast in this process (the server's fan-out)."""

    #: The namespace is live in this process.
    live: bool

    def with_position(self, frame_json: bytes, epoch: str, offset: int) -> int:
        """Deliver the frame that carries its position; returns clients reached."""

    def plain(self) -> int:
        """Deliver without a position (none could be assigned); returns clients reached."""

    def later(self) -> int:
        """The store delivers to every process, this one too, once it has assigned the
        position; returns the clients here that will receive it."""


class MemoryHistory:
    """Streams for one process (no Redis): offsets are assigned here, in order.

    As in Redis, a stream outlives its namespace: it goes when nothing was appended for
    its TTL (a client away that long could not be given everything anyway), and the
    least recently used goes first when there are more than ``max_streams``.
    """

    def __init__(self, max_streams: int = 10000) -> None:
        self._streams: OrderedDict[str, _Stream] = OrderedDict()  # least recent first
        self.max_streams = max_streams
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._streams)

    def sizes(self) -> Tuple[int, int]:
        """Streams kept, and messages in them (for the metrics)."""
        return len(self._streams), sum(len(s.entries) for s in self._streams.values())

    def has_stream(self, path: str) -> bool:
        self._expire(time.time())
        return path in self._streams

    def append(self, path: str, frame_json: bytes, size: int, ttl: float) -> Tuple[bytes, Position]:
        """Store one broadcast; return its frame (with position) and the position."""
        now = time.time()
        stream = self._stream(path, ttl, now)
        stream.used = now
        self._streams.move_to_end(path)
        stream.offset += 1
        frame = with_position(frame_json, stream.offset, stream.epoch)
        stream.entries.append((stream.offset, now, frame))
        while len(stream.entries) > size:
            stream.entries.popleft()
        return frame, (stream.epoch, stream.offset)

    def broadcast(self, path: str, frame_json: bytes, size: int, ttl: float, msg_type: str,
                  to: HistoryDelivery) -> int:
        """Store one broadcast and deliver it to this process's clients with its
        position; returns how many received it."""
        if not to.live and not self.has_stream(path):
            return 0  # nobody here now or within the TTL: nobody who could catch up
        frame, (epoch, offset) = self.append(path, frame_json, size, ttl)
        return to.with_position(frame, epoch, offset)

    def position(self, path: str, ttl: float = 0) -> Position:
        """The stream's epoch and last offset (a new stream starts at 0)."""
        stream = self._stream(path, ttl, time.time())
        return stream.epoch, stream.offset

    def since(self, path: str, since: Position, ttl: float) -> Optional[List[Tuple[int, bytes]]]:
        """Every frame after ``since``, in order; ``None`` if any of them is gone."""
        self._expire(time.time())
        stream = self._streams.get(path)
        if stream is None or stream.epoch != since[0] or since[1] > stream.offset:
            return None
        wanted = stream.offset - since[1]
        if wanted == 0:
            return []
        horizon = time.time() - ttl
        entries = [(off, frame) for off, ts, frame in stream.entries if off > since[1]]
        if len(entries) != wanted or entries[0][0] != since[1] + 1:
            return None  # older than the history holds: never a partial replay
        first_ts = next(ts for off, ts, _ in stream.entries if off == since[1] + 1)
        if first_ts < horizon:
            return None
        return entries

    def drop(self, path: str) -> None:
        """Forget a stream (its namespace was removed): the next one has a new epoch."""
        self._streams.pop(path, None)

    def _stream(self, path: str, ttl: float, now: float) -> _Stream:
        self._expire(now)
        stream = self._streams.get(path)
        if stream is None:
            stream = self._streams[path] = _Stream(ttl=ttl or DEFAULT_TTL, used=now)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
        return stream

    def _expire(self, now: float) -> None:
        # Streams have TTLs of their own, so the least recently used one is not always
        # the first to expire: look at all of them, at most once a second.
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL
        gone = [path for path, stream in self._streams.items() if now - stream.used > stream.ttl]
        for path in gone:
            del self._streams[path]
