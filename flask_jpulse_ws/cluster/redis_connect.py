"""Redis clients from ``JPULSE_WS_REDIS_URL``: a plain URL, Redis Sentinel, or Redis
Cluster.

``redis://``, ``rediss://`` and ``unix://`` URLs go to redis-py's ``from_url``.
``redis+sentinel://`` (``rediss+sentinel://`` for TLS to the master) names the
sentinels and the monitored service; every new connection asks the sentinels where
the master is, so after a failover the relay's ordinary reconnect finds the new one::

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
        [?sentinel_password=...]

The password (and user) are the master's; ``sentinel_password`` is for sentinels that
require one. The sentinel port defaults to 26379.

``redis+cluster://`` (``rediss+cluster://`` for TLS) names some nodes of a Redis Cluster
(7.0 or newer: sharded pub/sub); the rest are found from them::

    redis+cluster://[[user]:password@]host:port[,host:port...]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

__all__ = ["SentinelURL", "parse_sentinel_url", "ClusterURL", "parse_cluster_url",
           "is_cluster_url", "node_client", "redis_client", "SENTINEL_SCHEMES",
           "CLUSTER_SCHEMES"]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379


@dataclass(frozen=True)
class SentinelURL:
    sentinels: List[Tuple[str, int]]
    service: str
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    sentinel_password: Optional[str] = None
    ssl: bool = False


@dataclass(frozen=True)
class ClusterURL:
    nodes: List[Tuple[str, int]]
    username: Optional[str] = None
    password: Optional[str] = None
    ssl: bool = False


def _host_port(item: str, url: str, default_port: int = DEFAULT_SENTINEL_PORT
               ) -> Tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"an address in {url!r} has no host")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {url!r}: {port!r}") from None


def _credentials(netloc: str) -> Tuple[Optional[str], Optional[str], str]:
    credentials, _, hosts = netloc.rpartition("@")
    username = password = None
    if credentials:
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    return username, password, hosts


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterURL:
    """Split a ``redis+cluster://`` URL; ``ValueError`` with the reason otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (redis+cluster://...): {url!r}")
    username, password, hosts = _credentials(parts.netloc)
    nodes = [_host_port(item, url, DEFAULT_REDIS_PORT) for item in hosts.split(",") if item]
    if not nodes:
        raise ValueError(f"no node address in {url!r}")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"Redis Cluster has only database 0: {url!r}")
    return ClusterURL(nodes, username, password, ssl=parts.scheme == "rediss+cluster")


def _with_credentials(options: Dict[str, Any], spec: Any) -> Dict[str, Any]:
    """``options`` plus the user, password and TLS of a parsed cluster or sentinel URL."""
    if spec.username:
        options["username"] = spec.username
    if spec.password is not None:
        options["password"] = spec.password
    if spec.ssl:
        options["ssl"] = True
    return options


def node_client(spec: ClusterURL, host: str, port: int, **options: Any) -> redis.Redis:
    """A plain client to one node of the cluster, with the URL's credentials."""
    return redis.Redis(host=host, port=port, **_with_credentials(options, spec))


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split a ``redis+sentinel://`` URL; ``ValueError`` with the reason otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a sentinel URL (redis+sentinel://...): {url!r}")
    username, password, hosts = _credentials(parts.netloc)
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


def redis_client(url: str, **options: Any) -> Any:
    """A ``redis.Redis`` for ``url`` (a ``redis.cluster.RedisCluster`` for
    ``redis+cluster://``); ``options`` (timeouts, retry...) apply to the connections to
    Redis itself, and the timeouts also to the sentinels."""
    scheme = urlsplit(url).scheme
    if scheme in CLUSTER_SCHEMES:
        from redis.cluster import ClusterNode, RedisCluster

        nodes = parse_cluster_url(url)
        options.pop("max_connections", None)  # RedisCluster keeps a pool per node
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes.nodes],
                            **_with_credentials(options, nodes))
    if scheme not in SENTINEL_SCHEMES:
        return redis.Redis.from_url(url, **options)
    spec = parse_sentinel_url(url)
    timeouts = ("socket_timeout", "socket_connect_timeout")
    sentinel_kwargs: Dict[str, Any] = {k: options[k] for k in timeouts if k in options}
    if spec.sentinel_password:
        sentinel_kwargs["password"] = spec.sentinel_password
    sentinel = Sentinel(spec.sentinels, sentinel_kwargs=sentinel_kwargs)
    master_options = _with_credentials(dict(options, db=spec.db), spec)
    return sentinel.master_for(spec.service, redis_class=redis.Redis, **master_options)
