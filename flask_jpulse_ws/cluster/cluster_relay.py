"""The relay on a Redis Cluster (7.0 or newer): sharded pub/sub.

A namespace's channel lives in its hash tag's slot, like the rest of its keys
(``keys.py``), so ``SPUBLISH`` reaches only the shard that serves it and the cluster bus
carries nothing (classic ``PUBLISH`` is copied to every node). A process keeps one
subscriber connection per master (``subscriber.py``) and sends each ``SSUBSCRIBE`` to
the master of the channel's slot, one command per slot (Redis refuses a command whose
channels span slots).

What can change under it, and what follows:

- **A slot migrates** to another master: Redis pushes ``sunsubscribe`` for its channels;
  :class:`~.interest.Interest` subscribes them again, now at the new master (the slot map
  is read again first), and the clients of those paths only get ``_resync``.
- **A master fails** (its replica is promoted), **or a connection stops answering**
  (health-check ``PING``): every subscriber is closed and the relay degrades, as with a
  single Redis; it reads the slot map again, with jitter, until every slot is served,
  subscribes again, and every local client gets ``_resync``. History namespaces keep
  their epoch only if the new master holds the same replication id (``redis_history``).
- **A master we have no connection to** (a node added to the cluster) serves a wanted
  channel: the subscribers are rebuilt with the new map.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import redis
from redis.crc import key_slot

from .. import concurrency
from .cluster_link import ClusterLink
from .link_errors import LinkError
from .redis_connect import node_client, parse_cluster_url
from .redis_link import REPLY_TIMEOUT
from .redis_relay import (
    _NO_RETRY,
    BACKOFF_MAX,
    BACKOFF_MIN,
    CONNECT_TIMEOUT,
    HEALTH_CHECK_INTERVAL,
    SUBSCRIBER_TIMEOUT,
    RedisRelay,
    WrongTopologyError,
)
from .subscriber import Subscriber, SubscriberLost

__all__ = ["ClusterRelay", "MIN_REDIS_VERSION"]

log = logging.getLogger("flask_jpulse_ws")

#: Sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``) came with Redis 7.0.
MIN_REDIS_VERSION = (7, 0)

Node = Tuple[str, int]


class ClusterRelay(RedisRelay):
    """:class:`~.redis_relay.RedisRelay` over the masters of a Redis Cluster."""

    publish_verb = "SPUBLISH"
    subscribe_verbs = ("SSUBSCRIBE", "SUNSUBSCRIBE")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._subscribers: Dict[Node, Subscriber] = {}
        self._rebuild: Any = None
        self.topology_changes = 0
        super().__init__(*args, **kwargs)

    def _make_link(self) -> Any:
        return ClusterLink(parse_cluster_url(self.url),
                           dict(socket_timeout=REPLY_TIMEOUT,
                                socket_connect_timeout=CONNECT_TIMEOUT, retry=_NO_RETRY,
                                max_connections=1),
                           on_down=self.report_failure)

    def stop(self) -> None:
        self._stopped = True
        for sub in list(self._subscribers.values()):
            sub.close()
        if self._rebuild is not None:
            self._rebuild.set()
        self.link.stop()

    # ------------------------------------------------------------------ subscribing
    def _send_subscription(self, verb: str, channels: Sequence[str]) -> None:
        subs = self._subscribers
        if not subs:
            raise SubscriberLost("no subscriber connection")
        by_slot: Dict[int, List[str]] = {}
        for name in channels:
            by_slot.setdefault(int(key_slot(name.encode("utf-8"))), []).append(name)
        for slot, names in by_slot.items():
            try:
                node = self.link.topology.node_of(slot)
            except LinkError as exc:
                raise SubscriberLost(str(exc)) from exc
            sub = subs.get(node)
            if sub is None:  # a master we have no connection to: rebuild with the new map
                self._request_rebuild(f"slot {slot} is served by {node[0]}:{node[1]}")
                raise SubscriberLost(f"no subscriber connection to {node[0]}:{node[1]}")
            sub.subscribe(verb, names)

    def _request_rebuild(self, reason: str) -> None:
        if self._rebuild is not None and not self._rebuild.is_set():
            log.info("Redis Cluster topology changed (%s): subscribing again", reason)
            self.topology_changes += 1
            self._rebuild.set()

    def _subscribe_loop(self) -> None:
        backoff = BACKOFF_MIN
        while not self._stopped:
            self._rebuild = concurrency.Event()
            clients: List[Any] = []
            try:
                topology = self.link.topology
                topology.stale = True
                subs: Dict[Node, Subscriber] = {}
                for node in topology.masters():
                    client, sub = self._connect(node)
                    clients.append(client)
                    subs[node] = sub
                self._subscribers = subs
                self._send_subscription(self.subscribe_verbs[0], [self.control, self.inbox])
                self.interest.resubscribe()
                backoff = BACKOFF_MIN
                self._run_until_one_ends(subs)
            except WrongTopologyError as exc:
                self._lost(str(exc))
                log.error("%s", exc)
                concurrency.sleep(BACKOFF_MAX * 20)  # a configuration error: no log storm
            except (SubscriberLost, LinkError, redis.RedisError, OSError) as exc:
                self._lost(f"subscription lost: {exc}")
            except Exception:  # keep the subscriber alive whatever happens
                log.exception("Redis Cluster relay subscriber failed")
                self._lost("subscriber error")
            finally:
                for sub in self._subscribers.values():
                    sub.close()
                self._subscribers = {}
                self.interest.connection_lost()
                for client in clients:
                    try:
                        client.connection_pool.disconnect()
                    except Exception:  # noqa: BLE001 - closing a dead socket
                        pass
            if not self._stopped:
                # Jitter: every worker of the fleet lost the same master at once.
                concurrency.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _connect(self, node: Node) -> Tuple[Any, Subscriber]:
        client = node_client(parse_cluster_url(self.url), node[0], node[1],
                             socket_timeout=SUBSCRIBER_TIMEOUT,
                             socket_connect_timeout=CONNECT_TIMEOUT, retry=_NO_RETRY,
                             protocol=2)
        connection = client.connection_pool.get_connection()
        _check_node(connection, node)
        sub = Subscriber(connection._sock, self._on_message, self._on_confirm,
                         HEALTH_CHECK_INTERVAL, SUBSCRIBER_TIMEOUT)
        return client, sub

    def _run_until_one_ends(self, subs: Dict[Node, Subscriber]) -> None:
        """Read every master's subscriber, each in its own task; return (raising what
        ended it) as soon as one connection is lost or a rebuild is asked for."""
        ended: List[BaseException] = []
        rebuild = self._rebuild

        def read(node: Node, sub: Subscriber) -> None:
            try:
                sub.run()
                ended.append(SubscriberLost(f"{node[0]}:{node[1]}: closed"))
            except BaseException as exc:  # noqa: BLE001 - handed to the loop below
                ended.append(SubscriberLost(f"{node[0]}:{node[1]}: {exc}"))
            rebuild.set()

        tasks = [concurrency.spawn(read, node, sub) for node, sub in subs.items()]
        rebuild.wait()
        for sub in subs.values():
            sub.close()
        for task in tasks:
            task.join(1.0)
        if self._stopped:
            return
        raise ended[0] if ended else SubscriberLost("the cluster's topology changed")

    def _on_confirm(self, kind: bytes, channel: bytes) -> None:
        if kind == b"sunsubscribe":
            if channel in self._always:  # never unsubscribed by us: its slot moved
                self._request_rebuild("the control channel or inbox moved")
                return
            self.link.topology.stale = True  # a slot moved: route by the new map
        super()._on_confirm(kind, channel)

    def status(self) -> Dict[str, Any]:
        out = super().status()
        out["cluster"] = {"masters": len(self._subscribers),
                          "topologyChanges": self.topology_changes}
        return out


def _check_node(connection: Any, node: Node) -> None:
    try:
        connection.send_command("INFO", "server")
        version = _info_field(connection.read_response(), "redis_version")
        connection.send_command("INFO", "cluster")
        enabled = _info_field(connection.read_response(), "cluster_enabled")
    except redis.ResponseError:  # an ACL without INFO: SSUBSCRIBE's own error will tell
        return
    if enabled != "1":
        raise WrongTopologyError(
            f"JPULSE_WS_REDIS_URL is a redis+cluster:// URL but {node[0]}:{node[1]} is not "
            f"a Redis Cluster node: use redis://host:port for a single Redis")
    parsed = tuple(int(p) for p in (version or "0").split(".")[:2] if p.isdigit())
    if parsed < MIN_REDIS_VERSION:
        raise WrongTopologyError(
            f"Redis Cluster needs Redis 7.0 or newer for sharded pub/sub "
            f"({node[0]}:{node[1]} runs {version}); upgrade, or use a single Redis")


def _info_field(info: Any, field: str) -> Optional[str]:
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return None
