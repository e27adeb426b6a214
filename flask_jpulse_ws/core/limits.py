"""Message limits (size, sliding-window rate, abuse count) and the handshake rate per
IP address (pure).

Times are seconds from a monotonic clock passed in by the caller, so tests can
drive the arithmetic without sleeping.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Mapping, Optional

__all__ = ["Limits", "RateWindow", "AbuseCounter", "RateDecision", "PingBudget", "PING_RATE",
           "PING_BURST", "HandshakeRate", "HANDSHAKE_RATE_ADDRESSES"]


@dataclass(frozen=True)
class Limits:
    """Effective limits of one namespace, with the seed's camelCase wire names."""

    max_size: int
    interval_ms: int
    max_messages: int

    @classmethod
    def resolve(cls, overrides: Optional[Mapping[str, Any]], max_size: int,
                interval_ms: int, max_messages: int) -> Limits:
        """Per key: the namespace's ``message_limits`` value, else the configuration."""
        o = dict(overrides or {})
        unknown = set(o) - {"maxSize", "interval", "maxMessages"}
        if unknown:
            raise ValueError(f"Unknown message_limits keys {sorted(unknown)}: "
                             f"use maxSize, interval, maxMessages")
        limits = cls(int(o.get("maxSize", max_size)), int(o.get("interval", interval_ms)),
                     int(o.get("maxMessages", max_messages)))
        if min(limits.max_size, limits.interval_ms, limits.max_messages) <= 0:
            raise ValueError(f"message_limits must be positive: {o!r}")
        return limits

    def as_wire(self) -> Dict[str, int]:
        return {"maxSize": self.max_size, "interval": self.interval_ms,
                "maxMessages": self.max_messages}


@dataclass(frozen=True)
class RateDecision:
    """Outcome of :meth:`RateWindow.check`."""

    allowed: bool
    notify: bool = False  # send RATE_LIMIT_EXCEEDED for this drop
    retry_after_ms: int = 0


#: Every accepted message shares this answer: no object made per message.
_ALLOWED = RateDecision(True)


class RateWindow:
    """At most ``max_messages`` accepted messages in any rolling ``interval``.

    Dropped messages do not extend the window. The client is told once per
    window (the flag resets when a message finds the window empty), and always
    when the dropped message carries a ``requestId``.
    """

    __slots__ = ("_interval", "_max", "_stamps", "_notified")

    def __init__(self, limits: Limits) -> None:
        self._interval = limits.interval_ms / 1000.0
        self._max = limits.max_messages
        self._stamps: Deque[float] = deque()
        self._notified = False

    def check(self, now: float, has_request_id: bool = False) -> RateDecision:
        stamps = self._stamps
        horizon = now - self._interval
        while stamps and stamps[0] <= horizon:
            stamps.popleft()
        if not stamps:
            self._notified = False
        if len(stamps) < self._max:
            stamps.append(now)
            return _ALLOWED
        retry_after = max(0, int(round((stamps[0] + self._interval - now) * 1000)))
        notify = has_request_id or not self._notified
        if not has_request_id:
            self._notified = True
        return RateDecision(False, notify, retry_after)


class AbuseCounter:
    """Counts limit violations; ``hit`` returns True once the threshold is crossed."""

    __slots__ = ("_threshold", "_window", "_stamps")

    def __init__(self, threshold: int, window: float) -> None:
        self._threshold = threshold
        self._window = window
        self._stamps: Deque[float] = deque()

    def hit(self, now: float) -> bool:
        stamps = self._stamps
        stamps.append(now)
        horizon = now - self._window
        while stamps and stamps[0] <= horizon:
            stamps.popleft()
        return len(stamps) >= self._threshold


#: Pings (protocol pings and ``_ping`` messages together) a client may send per second,
#: sustained, and in a burst. The clients ping every 30 s; beyond this a client only
#: burns the server's CPU, so the excess is not answered and counts as abuse.
PING_RATE = 5.0
PING_BURST = 20


class PingBudget:
    """A token bucket for a client's pings: ``PING_RATE`` a second, ``PING_BURST`` at once."""

    __slots__ = ("_rate", "_burst", "_tokens", "_at")

    def __init__(self, rate: float = PING_RATE, burst: int = PING_BURST) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at: Optional[float] = None

    def allow(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


#: Addresses whose handshake buckets one process keeps. When a new address comes and the
#: table is full, the least recently seen one is forgotten (most likely its bucket has
#: refilled, which is the same as no entry), so the table never grows without limit.
HANDSHAKE_RATE_ADDRESSES = 10000


class HandshakeRate:
    """A token bucket per IP address for WebSocket handshakes: ``rate`` a second
    sustained, ``burst`` at once; at most ``max_addresses`` buckets are kept.

    :param rate: handshakes per second an address may keep up; 0 turns the limit off.
    :param burst: handshakes an address may make at once (a full bucket).
    """

    __slots__ = ("rate", "burst", "max_addresses", "_buckets", "refused")

    def __init__(self, rate: float, burst: int,
                 max_addresses: int = HANDSHAKE_RATE_ADDRESSES) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_addresses = max_addresses
        # address -> [tokens, when]; least recently seen first.
        self._buckets: OrderedDict[str, List[float]] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, address: str, now: float) -> Optional[int]:
        """Take a handshake from ``address``'s bucket: ``None`` when allowed, else the
        whole seconds (at least 1) after which one would be (an HTTP ``Retry-After``)."""
        if self.rate <= 0:
            return None
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._buckets.popitem(last=False)
            bucket = self._buckets[address] = [self.burst, now]
        else:
            self._buckets.move_to_end(address)
            bucket[0] = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return None
        self.refused += 1
        return max(1, math.ceil((1.0 - bucket[0]) / self.rate))
