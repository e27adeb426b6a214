"""Counters, message rates, status colours and the activity log (pure).

Wall-clock times (``time.time()``) are passed in by the caller so that tests can
move time without sleeping.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone
from typing import Any, Deque, Dict, List, Optional, Tuple, Union

__all__ = ["AppCounters", "RateCounter", "NamespaceStats", "ActivityLog", "status_colour", "iso"]

DROP_REASONS = ("oversize", "rateLimit", "invalid", "reserved", "slowConsumer")


def iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds, as the seed's stats show it."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class RateCounter:
    """Events in the last minute (per-second slots) and last hour (per-minute slots).

    120 integers per namespace, whatever the traffic. Events of the current second are
    a plain count, put in their slots when the second changes or the rates are read:
    most events cost an ``int()``, a comparison and an addition.
    """

    __slots__ = ("_sec", "_sec_at", "_min", "_min_at", "_second", "_pending")

    def __init__(self) -> None:
        self._sec = [0] * 60
        self._sec_at = [-1] * 60
        self._min = [0] * 60
        self._min_at = [-1] * 60
        self._second = -1  # the second the pending events belong to
        self._pending = 0

    def add(self, now: float, n: int = 1) -> None:
        s = int(now)
        if s == self._second:
            self._pending += n
            return
        self._settle()
        self._second = s
        self._pending = n

    def _settle(self) -> None:
        """Put the pending events in the slots of their second and minute."""
        n, self._pending = self._pending, 0
        if not n:
            return
        s = self._second
        i = s % 60
        if self._sec_at[i] != s:
            self._sec_at[i] = s
            self._sec[i] = 0
        self._sec[i] += n
        m = s // 60
        j = m % 60
        if self._min_at[j] != m:
            self._min_at[j] = m
            self._min[j] = 0
        self._min[j] += n

    def last_minute(self, now: float) -> int:
        self._settle()
        s = int(now)
        return sum(c for c, at in zip(self._sec, self._sec_at) if s - 60 < at <= s)

    def last_hour(self, now: float) -> int:
        self._settle()
        m = int(now) // 60
        return sum(c for c, at in zip(self._min, self._min_at) if m - 60 < at <= m)

    def per_second(self, now: float, seconds: int = 60) -> List[int]:
        """Counts of the last ``seconds`` seconds, oldest first (for sparklines)."""
        self._settle()
        s = int(now)
        out = []
        for t in range(s - seconds + 1, s + 1):
            i = t % 60
            out.append(self._sec[i] if self._sec_at[i] == t else 0)
        return out


def status_colour(now: float, last_activity: float, client_count: int,
                  warning: float, inactive: float) -> str:
    """The seed's rule: red when empty or idle past ``inactive``, yellow past ``warning``."""
    idle = now - last_activity
    if client_count == 0 or idle > inactive:
        return "red"
    if idle > warning:
        return "yellow"
    return "green"


class AppCounters:
    """The app-wide counters, in one place (``get_stats()`` reads them; the per-namespace
    ones are in :class:`NamespaceStats`, the admission caps in ``server.admission``)."""

    __slots__ = ("connections", "messages", "dropped", "server_errors", "messages_in",
                 "messages_out", "deliveries", "dropped_by", "closes")

    def __init__(self) -> None:
        self.connections = 0  # welcomed since start
        self.messages = 0  # accepted inbound + each send/broadcast/reply out
        self.dropped = 0  # inbound messages refused (size, rate, invalid...) and slow consumers
        self.server_errors = 0  # connections ended by an unexpected exception after the 101
        self.messages_in = 0  # accepted inbound messages
        self.messages_out = 0  # each send/broadcast/reply made here
        self.deliveries = 0  # frames handed to sockets here: a broadcast to N counts N
        self.dropped_by: Dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.closes: Dict[int, int] = {}  # welcomed connections ended, by close code

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.dropped_by[reason] = self.dropped_by.get(reason, 0) + 1

    def closed(self, code: Optional[int]) -> None:
        """Count a welcomed connection's end; ``None`` (cut, no close frame) is 1006."""
        key = 1006 if code is None else code
        self.closes[key] = self.closes.get(key, 0) + 1


class NamespaceStats:
    """What one namespace counts: messages in and out, deliveries, drops, activity."""

    __slots__ = ("created", "last_activity", "total_messages", "deliveries", "dropped",
                 "rate", "connections")

    def __init__(self, now: float) -> None:
        self.created = now
        self.last_activity = now
        self.total_messages = 0  # accepted inbound + each send/broadcast/reply out
        self.deliveries = 0  # frames handed to sockets: a broadcast to N counts N
        self.dropped: Dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.rate = RateCounter()
        self.connections = 0  # accepted connections, ever

    def message(self, now: float, deliveries: int = 0) -> None:
        self.total_messages += 1
        self.deliveries += deliveries
        self.last_activity = now
        self.rate.add(now)

    def touch(self, now: float) -> None:
        self.last_activity = now

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def snapshot(self, now: float, path: str, client_count: int, active_users: int,
                 limits: Dict[str, int], warning: float, inactive: float) -> Dict[str, Any]:
        return {
            "path": path,
            "status": status_colour(now, self.last_activity, client_count, warning, inactive),
            "clientCount": client_count,
            "activeUsers": active_users,
            "messagesPerMin": self.rate.last_minute(now),
            "messagesPerHour": self.rate.last_hour(now),
            "totalMessages": self.total_messages,
            "deliveries": self.deliveries,
            "totalConnections": self.connections,
            "lastActivity": iso(self.last_activity),
            "dropped": dict(self.dropped),
            "limits": limits,
        }


class ActivityLog:
    """The last ``window`` seconds of events, at most ``max_entries`` of them."""

    DIRECTIONS = ("received", "sent", "rejected", "connected", "disconnected")

    def __init__(self, window: float, max_entries: int, message_chars: int) -> None:
        self._window = window
        self._chars = message_chars
        # Tuples, not dicts: the log is written on every message and read rarely.
        self._entries: Deque[Tuple[Any, ...]] = deque(maxlen=max_entries)

    def add(self, now: float, namespace: str, direction: str, username: str = "",
            msg_type: str = "", message: Union[None, str, bytes] = None) -> None:
        """Record one event; ``message`` is cut to its first and last characters."""
        text: Union[str, bytes] = message or ""
        if len(text) > self._chars:
            keep = self._chars // 2
            if isinstance(text, bytes):
                text = text[:keep] + b" ... " + text[-keep:]
            else:
                text = text[:keep] + " ... " + text[-keep:]
        # Old entries go when the log is read (entries()); maxlen bounds it meanwhile.
        self._entries.append((now, namespace, direction, username, msg_type, text))

    def _prune(self, now: float) -> None:
        horizon = now - self._window
        entries = self._entries
        while entries and entries[0][0] < horizon:
            entries.popleft()

    def entries(self, now: float) -> List[Dict[str, Any]]:
        """Newest last, as the dicts ``get_stats()["activityLog"]`` shows."""
        self._prune(now)
        return [{"timestamp": iso(ts), "namespace": ns, "direction": direction,
                 "username": username, "type": msg_type,
                 "message": text.decode("utf-8", "replace") if isinstance(text, bytes) else text}
                for ts, ns, direction, username, msg_type, text in self._entries]

    def __len__(self) -> int:
        return len(self._entries)
