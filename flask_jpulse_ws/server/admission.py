"""Admission: the handshake rate per IP address, the caps on connections (in all, per IP
address) and the count of every refusal, for one app. The handshake asks;
``get_stats()`` reads the counts."""

from __future__ import annotations

import time
from typing import Dict, Optional

from ..config import Settings
from ..core.limits import HandshakeRate
from ..errors import CloseCode

__all__ = ["Admission", "Rejected"]


class Rejected(Exception):  # noqa: N818 - a control-flow signal, not an error
    """An admission check failed: close with ``code`` after the upgrade."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Admission:
    """Open connections against ``JPULSE_WS_MAX_CONNECTIONS`` and
    ``JPULSE_WS_MAX_CONNECTIONS_PER_IP``; refusals by close code."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.open_connections = 0
        self.connections_by_ip: Dict[str, int] = {}
        self.rejections: Dict[int, int] = {}
        self.refused_origins = 0  # HTTP 403 before the upgrade
        self.handshake_rate = HandshakeRate(settings.handshake_rate, settings.handshake_burst)

    def too_fast(self, ip: str) -> Optional[int]:
        """Take a handshake from ``ip``'s bucket (``JPULSE_WS_HANDSHAKE_RATE`` and
        ``_BURST``): ``None`` when allowed, else the seconds for ``Retry-After`` (HTTP 429,
        counted)."""
        return self.handshake_rate.retry_after(ip, time.monotonic())

    def admit(self, ip: str) -> None:
        """Count a connection from ``ip``, or raise :class:`Rejected` (4529)."""
        s = self.settings
        if self.open_connections >= s.max_connections:
            raise Rejected(CloseCode.TOO_MANY, "Server full")
        if self.connections_by_ip.get(ip, 0) >= s.max_connections_per_ip:
            raise Rejected(CloseCode.TOO_MANY, "Too many connections from this address")
        self.connections_by_ip[ip] = self.connections_by_ip.get(ip, 0) + 1
        self.open_connections += 1

    def release(self, ip: str) -> None:
        """A connection admitted from ``ip`` has ended."""
        left = self.connections_by_ip.get(ip, 0) - 1
        if left > 0:
            self.connections_by_ip[ip] = left
        else:
            self.connections_by_ip.pop(ip, None)
        self.open_connections -= 1

    def refused(self, code: int) -> None:
        """Count a connection closed during admission with ``code``."""
        self.rejections[code] = self.rejections.get(code, 0) + 1
