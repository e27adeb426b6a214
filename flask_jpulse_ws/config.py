"""Documented defaults for every ``JPULSE_WS_*`` setting, and ``load(app)``.

Settings are read once in ``init_app`` into a frozen :class:`Settings`; changing
``app.config`` afterwards has no effect (the hot path never reads a dict).
"""

from __future__ import annotations

import difflib
import ipaddress
import warnings
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["Settings", "DEFAULTS", "load", "UnknownSettingWarning"]

#: Seconds between protocol pings; under 60 keeps idle proxies from cutting the socket.
PING_INTERVAL = 30.0
#: Seconds a pong may take after a ping before the peer is declared dead.
PONG_TIMEOUT = 10.0
#: Largest application message in bytes (``maxSize``); bigger ones get MESSAGE_TOO_LARGE.
MAX_MESSAGE_SIZE = 65536
#: Rate window in milliseconds (``interval``).
RATE_INTERVAL = 1000
#: Accepted messages per connection per window (``maxMessages``).
RATE_MAX_MESSAGES = 50
#: Largest WebSocket message before reassembly stops and the socket closes 1009.
MAX_FRAME_SIZE = 1024 * 1024
#: Fragments one message may have: a client that fragments at 4 KiB needs 256 for 1 MiB,
#: and each fragment costs a header's work whatever it carries (close 1009 past it).
MAX_FRAGMENTS = 4096
#: Outbound bytes one connection may have waiting; more means a slow consumer (4503).
MAX_QUEUE_BYTES = 1024 * 1024
#: ``None`` means same origin as the Host header; a list of origins, or ``"*"``.
ALLOWED_ORIGINS: Union[None, str, Tuple[str, ...]] = None
#: Public access lets anonymous visitors into whitelisted namespaces.
PUBLIC_ACCESS = False
#: Whitelist entries: ``hello-*`` (prefix) or ``jpulse-ws-status`` (exact remainder).
PUBLIC_WHITELIST: Sequence[str] = ()
#: Context fields other clients may see; never the IP or roles by default.
WIRE_CTX_FIELDS: Sequence[str] = ("username",)
#: Seconds idle before a namespace turns yellow.
STATUS_WARNING = 300.0
#: Seconds idle before a namespace turns red.
STATUS_INACTIVE = 1800.0
#: Seconds of history the activity log keeps.
ACTIVITY_WINDOW = 300.0
#: Entries the activity log keeps at most, whatever the window.
ACTIVITY_MAX = 1000
#: Characters of a message kept in an activity log entry.
ACTIVITY_MESSAGE_CHARS = 500
#: Live namespaces at most; room paths beyond it are refused (4529).
MAX_NAMESPACES = 10000
#: Seconds an empty dynamic namespace lives before it is removed.
DYNAMIC_GRACE = 60.0
#: Open connections from one IP address; further ones close 4529.
MAX_CONNECTIONS_PER_IP = 1000
#: Open connections in one process; further ones close 4529.
MAX_CONNECTIONS = 50000
#: WebSocket handshakes per second one IP address may keep up, per process; more are
#: refused with HTTP 429 before the upgrade. 0 turns the limit off.
HANDSHAKE_RATE = 100.0
#: Handshakes one IP address may make at once (a reconnect wave behind one NAT).
HANDSHAKE_BURST = 1000
#: Reverse proxies in front of us whose ``X-Forwarded-For`` entries are trusted.
TRUSTED_PROXIES = 0
#: Limit violations within ``ABUSE_WINDOW`` seconds that close a connection 1008.
ABUSE_THRESHOLD = 100
#: Seconds over which limit violations are counted.
ABUSE_WINDOW = 10.0
#: Seconds a closing socket waits for the peer's close frame before it is cut.
CLOSE_TIMEOUT = 2.0
#: Redis URL of the cross-process relay; ``None`` keeps everything in this process.
REDIS_URL: Optional[str] = None
#: Prefix of every Redis key and channel; keeps apps sharing one Redis apart.
CHANNEL_PREFIX = "jpulse-ws"
#: Seconds a process keeps listening to a namespace's channel after its last local
#: client left (a client that comes back soon costs no new subscription).
UNSUBSCRIBE_LINGER = 5.0
#: URL of the opt-in admin dashboard.
ADMIN_URL = "/admin/websocket-stats"
#: Roles allowed to see the admin dashboard.
ADMIN_ROLES: Sequence[str] = ("admin", "root")
#: Send the Python traceback text to clients on handler errors (never in production).
DEBUG_ERRORS = False
#: Seconds a presence member outlives its process's last refresh in Redis (refreshed
#: every third of it): the members of a killed worker vanish within this.
PRESENCE_TTL = 30.0
#: Seconds between presence event frames of one namespace: 1,000 joins in a burst are
#: a few frames per client, not 1,000.
PRESENCE_BATCH = 0.5
#: Young-generation threshold of Python's cycle collector, set when the process first
#: serves a WebSocket if CPython's default is still in place (0: leave the collector
#: alone). Each connection keeps about 85 tracked objects; at CPython's 700 a reconnect
#: storm spends seconds per worker in full collections (docs/performance.md).
GC_THRESHOLD = 10000
#: URL of the Prometheus metrics (``/metrics``, say); ``None`` serves none: figures
#: about the server are nobody's business until someone asks for them.
METRICS_URL: Optional[str] = None
#: Addresses (or networks, ``10.0.0.0/8``) allowed to read the metrics; loopback only,
#: so a scraper on the same machine works and nobody else gets in (403).
METRICS_ALLOWED_IPS: Sequence[str] = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Settings:
    """Every setting the extension reads, resolved once per app."""

    ping_interval: float = PING_INTERVAL
    pong_timeout: float = PONG_TIMEOUT
    max_message_size: int = MAX_MESSAGE_SIZE
    rate_interval: int = RATE_INTERVAL
    rate_max_messages: int = RATE_MAX_MESSAGES
    max_frame_size: int = MAX_FRAME_SIZE
    max_fragments: int = MAX_FRAGMENTS
    max_queue_bytes: int = MAX_QUEUE_BYTES
    allowed_origins: Union[None, str, Tuple[str, ...]] = ALLOWED_ORIGINS
    public_access: bool = PUBLIC_ACCESS
    public_whitelist: Tuple[str, ...] = tuple(PUBLIC_WHITELIST)
    wire_ctx_fields: Tuple[str, ...] = tuple(WIRE_CTX_FIELDS)
    status_warning: float = STATUS_WARNING
    status_inactive: float = STATUS_INACTIVE
    activity_window: float = ACTIVITY_WINDOW
    activity_max: int = ACTIVITY_MAX
    activity_message_chars: int = ACTIVITY_MESSAGE_CHARS
    max_namespaces: int = MAX_NAMESPACES
    dynamic_grace: float = DYNAMIC_GRACE
    max_connections_per_ip: int = MAX_CONNECTIONS_PER_IP
    max_connections: int = MAX_CONNECTIONS
    handshake_rate: float = HANDSHAKE_RATE
    handshake_burst: int = HANDSHAKE_BURST
    trusted_proxies: int = TRUSTED_PROXIES
    abuse_threshold: int = ABUSE_THRESHOLD
    abuse_window: float = ABUSE_WINDOW
    close_timeout: float = CLOSE_TIMEOUT
    redis_url: Optional[str] = REDIS_URL
    channel_prefix: str = CHANNEL_PREFIX
    unsubscribe_linger: float = UNSUBSCRIBE_LINGER
    admin_url: str = ADMIN_URL
    admin_roles: Tuple[str, ...] = tuple(ADMIN_ROLES)
    debug_errors: bool = DEBUG_ERRORS
    presence_ttl: float = PRESENCE_TTL
    presence_batch: float = PRESENCE_BATCH
    gc_threshold: int = GC_THRESHOLD
    metrics_url: Optional[str] = METRICS_URL
    metrics_allowed_ips: Tuple[str, ...] = tuple(METRICS_ALLOWED_IPS)


#: ``JPULSE_WS_<NAME>`` -> default, for every field of :class:`Settings`.
DEFAULTS = {"JPULSE_WS_" + f.name.upper(): f.default for f in fields(Settings)}

_TUPLE_FIELDS = {"public_whitelist", "wire_ctx_fields", "admin_roles", "metrics_allowed_ips"}
_OPTIONAL_TEXT_FIELDS = {"redis_url", "metrics_url"}
_POSITIVE_FIELDS = ("ping_interval", "pong_timeout", "max_message_size", "rate_interval",
                    "rate_max_messages", "max_frame_size", "max_fragments", "max_queue_bytes",
                    "max_namespaces", "presence_ttl", "presence_batch", "handshake_burst")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def load(config: Mapping[str, Any]) -> Settings:
    """Build :class:`Settings` from a Flask config mapping, validating as it goes.

    Values may come from environment strings (``JPULSE_WS_PING_INTERVAL="30"``,
    ``JPULSE_WS_ADMIN_ROLES="admin,ops"``): each is converted to its setting's type, and
    an error names the key and the type it expects. An unknown ``JPULSE_WS_*`` key (a
    typo) gets a warning naming the closest known one.

    :param config: ``app.config`` (after ``setdefault`` of :data:`DEFAULTS`).
    """
    _warn_unknown(config)
    values = {}
    for f in fields(Settings):
        key = "JPULSE_WS_" + f.name.upper()
        values[f.name] = _convert(key, f.name, config.get(key, f.default), f.default)
    settings = Settings(**values)
    for name in _POSITIVE_FIELDS:
        if getattr(settings, name) <= 0:
            raise ValueError(f"JPULSE_WS_{name.upper()} must be positive, "
                             f"got {getattr(settings, name)!r}")
    if settings.metrics_url is not None and not settings.metrics_url.startswith("/"):
        raise ValueError(f"JPULSE_WS_METRICS_URL must be a path starting with /, "
                         f"got {settings.metrics_url!r}")
    for entry in settings.metrics_allowed_ips:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"JPULSE_WS_METRICS_ALLOWED_IPS: {entry!r} is neither an IP "
                             f"address nor a network (10.0.0.0/8)") from None
    if settings.gc_threshold < 0:
        raise ValueError(f"JPULSE_WS_GC_THRESHOLD must be 0 (leave the collector alone) or "
                         f"positive, got {settings.gc_threshold!r}")
    if settings.handshake_rate < 0:
        raise ValueError(f"JPULSE_WS_HANDSHAKE_RATE must be 0 (off) or positive, "
                         f"got {settings.handshake_rate!r}")
    return settings


def _convert(key: str, name: str, value: Any, default: Any) -> Any:
    if name in _TUPLE_FIELDS:
        return _text_list(key, value)
    if name == "allowed_origins":
        if value is None or value == "*":
            return value
        return tuple(o.rstrip("/").lower() for o in _text_list(key, value))
    if name in _OPTIONAL_TEXT_FIELDS:
        if value is None or value == "":
            return None
        return _text(key, value)
    if isinstance(default, bool):
        return _boolean(key, value)
    if isinstance(default, int):
        return _number(key, value, int, "a whole number")
    if isinstance(default, float):
        return _number(key, value, float, "a number")
    return _text(key, value)


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise TypeError(f"{key} must be true or false (or 1/0, yes/no, on/off), got {value!r}")


def _number(key: str, value: Any, kind: type, what: str) -> Any:
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float else int(value.strip())
        except ValueError:
            raise TypeError(f"{key} must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and isinstance(value, float) and not value.is_integer()):
        raise TypeError(f"{key} must be {what}, got {value!r}")
    return kind(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string, got {value!r}")
    return value


def _text_list(key: str, value: Any) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # from the environment: comma-separated
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple, set, frozenset)) and \
            all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"{key} must be a list of strings (or one comma-separated string), "
                    f"got {value!r}")


def _warn_unknown(config: Mapping[str, Any]) -> None:
    for key in config:
        if isinstance(key, str) and key.startswith("JPULSE_WS_") and key not in DEFAULTS:
            close = difflib.get_close_matches(key, DEFAULTS, n=1, cutoff=0.6)
            hint = f": did you mean {close[0]}?" if close else ""
            warnings.warn(f"unknown setting {key} is ignored{hint}", UnknownSettingWarning,
                          stacklevel=3)


class UnknownSettingWarning(UserWarning):
    """A ``JPULSE_WS_*`` key in the app's config that no setting reads (a typo?)."""
