"""Redis clients from ``JPULSE_WS_REDIS_URL``: a plain URL, or Redis Sentinel.

``redis://``, ``rediss://`` and ``unix://`` URLs go to redis-py's ``from_url``.
``redis+sentinel://`` (``rediss+sentinel://`` for TLS to the master) names the
sentinels and the monitored service; every new connection asks the sentinels where
the master is, so after a failover the relay's ordinary reconnect finds the new one::

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
        [?sentinel_password=...]

The password (and user) are the master's; ``sentinel_password`` is for sentinels that
require one. The sentinel port defaults to 26379.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

__all__ = ["SentinelURL", "parse_sentinel_url", "redis_client", "SENTINEL_SCHEMES"]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    sentinels: List[Tuple[str, int]]
    service: str
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    sentinel_password: Optional[str] = None
    ssl: bool = False


def _host_port(item: str, url: str) -> Tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"a sentinel address in {url!r} has no host")
    try:
        return host, int(port) if port else DEFAULT_SENTINEL_PORT
    except ValueError:
        raise ValueError(f"bad sentinel port in {url!r}: {port!r}") from None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split a ``redis+sentinel://`` URL; ``ValueError`` with the reason otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a sentinel URL (redis+sentinel://...): {url!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if credentials:
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    sentinels = [_host_port(item, url) for item in hosts.split(",") if item]
    if not sentinels:
        raise ValueError(f"no sentinel address in {url!r}")
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError(f"a sentinel URL ends with /service or /service/db: {url!r}")
    try:
        db = int(segments[1]) if len(segments) == 2 else 0
    except ValueError:
        raise ValueError(f"bad database number in {url!r}") from None
    query = parse_qs(parts.query)
    sentinel_password = query.get("sentinel_password", [None])[-1]
    return SentinelURL(sentinels, segments[0], db, username, password, sentinel_password,
                       ssl=parts.scheme == "rediss+sentinel")


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A ``redis.Redis`` for ``url``; ``options`` (timeouts, retry...) apply to the
    connections to Redis itself, and the timeouts also to the sentinels."""
    if urlsplit(url).scheme not in SENTINEL_SCHEMES:
        return redis.Redis.from_url(url, **options)
    spec = parse_sentinel_url(url)
    timeouts = ("socket_timeout", "socket_connect_timeout")
    sentinel_kwargs: Dict[str, Any] = {k: options[k] for k in timeouts if k in options}
    if spec.sentinel_password:
        sentinel_kwargs["password"] = spec.sentinel_password
    sentinel = Sentinel(spec.sentinels, sentinel_kwargs=sentinel_kwargs)
    master_options = dict(options, db=spec.db)
    if spec.username:
        master_options["username"] = spec.username
    if spec.password is not None:
        master_options["password"] = spec.password
    if spec.ssl:
        master_options["ssl"] = True
    return sentinel.master_for(spec.service, redis_class=redis.Redis, **master_options)
