"""The Redis transport of the relay: interest routing (a process listens to the
channels of the namespaces it holds clients of, its inbox and the control channel:
``interest.py``), one pub/sub connection read by one task (``subscriber.py``),
publishes through the process's auto-pipelined link (the caller waits until its message
is in Redis), a circuit that drops (never buffers) while Redis is away, and a
``_resync`` to every client that may have missed something.

Imported only when ``JPULSE_WS_REDIS_URL`` is set. See ``docs/scaling.md``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Set

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import concurrency
from ..core import envelope
from .interest import Interest
from .keys import control_channel, inbox_channel, instances_key, namespace_channel, stats_key
from .redis_connect import redis_client
from .redis_link import REPLY_TIMEOUT, LinkBusy, LinkDown, LinkError, RedisLink
from .relay import channel_for, encode_op, merge_instances
from .subscriber import Subscriber, SubscriberLost

__all__ = ["RedisRelay", "check_cooperative"]

log = logging.getLogger("flask_jpulse_ws")

#: Seconds a publish waits for its turn in the link's queue (Redis slow, not down);
#: past it the message counts as dropped and a ``_resync`` follows. It stays queued.
PUBLISH_WAIT = 10.0
#: Seconds a stats read or write waits for the link.
STATS_WAIT = 2.0
#: Seconds to open a TCP connection to Redis (local network: refused or fast).
CONNECT_TIMEOUT = 0.5
#: Seconds the subscriber waits for a reply to its own commands (health-check pings).
SUBSCRIBER_TIMEOUT = 5.0
#: Idle seconds between the subscriber's health-check pings (finds a silent peer).
HEALTH_CHECK_INTERVAL = 2.0
#: First and largest wait between reconnect attempts: a refused connection costs
#: nothing, and 0.5 s leaves room to resume within 2 s on a busy machine.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 0.5
#: Seconds between two stats snapshots of this process; they expire after STATS_TTL.
STATS_INTERVAL = 2.0
STATS_TTL = 10
#: Seconds ``start`` waits for the first subscription, so that the first clients of a
#: fresh worker miss nothing; when Redis is down it returns at the first failure.
START_WAIT = 2.0
#: Seconds a handshake waits for its namespace's subscription before the welcome; past
#: it the client is welcomed anyway and gets a ``_resync`` once it is confirmed.
FOLLOW_WAIT = 2.0
#: Seconds between the relay's housekeeping rounds (probe, stats, linger, pending).
HOUSEKEEPING_INTERVAL = 0.5
#: Namespaces remembered for the post-outage ``_resync``; beyond it, everyone resyncs.
MAX_GAP_PATHS = 1000
#: Logout revocations kept while Redis is away: idempotent, so replaying them is safe.
MAX_PENDING_REVOKES = 10000

_NO_RETRY = Retry(NoBackoff(), 0)  # a retried PUBLISH could deliver twice
#: Server requests to another process and their replies (``remote_request``).
_POINT_TO_POINT_OPS = frozenset({"request", "reply"})


def check_cooperative() -> None:
    """Refuse blocking Redis sockets inside an unpatched gevent greenlet."""
    if concurrency.using_gevent():
        return
    gevent = sys.modules.get("gevent")
    if gevent is None:
        return
    if getattr(gevent.getcurrent(), "parent", None) is not None:  # inside the hub's loop
        raise RuntimeError(
            "The Redis relay (JPULSE_WS_REDIS_URL) runs under gevent but socket is not "
            "monkey-patched: every Redis call would stall all greenlets. Serve with "
            "'gunicorn -k gevent' (which patches), or call gevent.monkey.patch_all() "
            "before importing anything else; unset JPULSE_WS_REDIS_URL for one process.")


class WrongTopologyError(RuntimeError):
    """The URL's kind does not match the Redis behind it (a cluster node behind a plain
    URL, a Redis older than 7 behind ``redis+cluster://``)."""


def _refuse_a_cluster_node(connection: Any) -> None:
    connection.send_command("INFO", "cluster")
    try:
        info = connection.read_response()
    except redis.ResponseError:  # an ACL without INFO: we cannot tell, MOVED will
        return
    text = info.decode() if isinstance(info, bytes) else str(info)
    if "cluster_enabled:1" in text:
        raise WrongTopologyError(
            "JPULSE_WS_REDIS_URL names a node of a Redis Cluster: use "
            "redis+cluster://host:port[,host:port...] (keys of one namespace live on one "
            "shard; a plain URL would meet MOVED errors)")


class RedisRelay:
    """Relay over Redis pub/sub (a channel per namespace, a control channel, an inbox
    per process) and the circuit of this process's Redis connections.

    :param on_op: applies an operation another process published.
    :param on_gap: tells every local client it may have missed messages (``_resync``).
    :param on_late: ``(paths)``: clients of these paths were welcomed before their
        subscription was confirmed (``_resync`` them).
    :param on_recovered: Redis answers again after an outage.
    :param stats_row: this process's row of the cluster stats.
    :param linger: seconds a namespace stays subscribed after its last local client.
    """

    def __init__(self, url: str, prefix: str, host_id: str,
                 on_op: Callable[[Dict[str, Any]], None], on_gap: Callable[[str], int],
                 on_late: Callable[[List[str]], Any], on_recovered: Callable[[], None],
                 stats_row: Callable[[], Dict[str, Any]], linger: float = 5.0) -> None:
        self.url = url
        self.prefix = prefix
        self.host_id = host_id
        self.control = control_channel(prefix)
        self._on_op, self._on_gap = on_op, on_gap
        self._on_recovered, self._stats_row = on_recovered, stats_row
        self.interest = Interest(lambda path: namespace_channel(prefix, path),
                                 self._send_subscription, on_late, linger,
                                 *self.subscribe_verbs)
        self._subscriber: Optional[Subscriber] = None
        self._always: Set[bytes] = set()  # control and inbox: decoded whatever we hold
        self.degraded = False
        #: Publish this process's stats row (False for a command line: it serves nobody).
        self.announce = True
        self.link: Any = self._make_link()
        self._first_attempt: Any = None
        self._started = False
        self._stopped = False
        self._subscribed = False
        self._sub_gap = False  # the subscription was down: local clients may have missed
        self._gap_paths: Set[str] = set()
        self._gap_all = False
        self._pending_revokes: Set[str] = set()
        self._sending_pending = False
        self._down_since: Optional[float] = None
        self._next_probe = 0.0
        self._next_stats = 0.0
        self.last_error = ""
        self.published = 0
        self.received = 0
        self.unrouted = 0
        self.own_echoes = 0
        self.dropped = 0
        self.outages = 0
        self.resyncs = 0

    #: PUBLISH, or SPUBLISH in Redis Cluster (``cluster_relay.py``).
    publish_verb = "PUBLISH"
    subscribe_verbs = ("SUBSCRIBE", "UNSUBSCRIBE")

    def _make_link(self) -> Any:
        # One connection for every short command of this process (redis_link.py); the
        # pool holds one because only the link's flusher ever borrows from it.
        return RedisLink(redis_client(self.url, socket_timeout=REPLY_TIMEOUT,
                                      socket_connect_timeout=CONNECT_TIMEOUT,
                                      retry=_NO_RETRY, max_connections=1),
                         on_down=self.report_failure)

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        if self._started:
            return
        check_cooperative()
        self._started = True
        self._first_attempt = concurrency.Event()
        # The inbox is named after the host id, renewed in a forked worker: name it now.
        self.inbox = inbox_channel(self.prefix, self.host_id)
        self._always = {self.control.encode(), self.inbox.encode()}
        concurrency.spawn(self._subscribe_loop)
        concurrency.every(HOUSEKEEPING_INTERVAL, self._housekeeping, "Redis relay upkeep")
        self._first_attempt.wait(START_WAIT)  # this greenlet only

    def stop(self) -> None:
        self._stopped = True
        sub = self._subscriber
        if sub is not None:
            sub.close()
        self.link.stop()

    # ------------------------------------------------------------------ interest
    def follow(self, path: str) -> bool:
        """A local client of ``path`` is about to be welcomed: listen to its channel.
        True once Redis confirmed it; False (at once while degraded, else after
        :data:`FOLLOW_WAIT`): the client gets a ``_resync`` when it is confirmed."""
        if not self._started:
            self.start()
        return self.interest.follow(path, 0.0 if self.degraded else FOLLOW_WAIT)

    def unfollow(self, path: str) -> None:
        self.interest.unfollow(path)

    def _send_subscription(self, verb: str, channels: Any) -> None:
        sub = self._subscriber
        if sub is None:
            raise SubscriberLost("no subscriber connection")
        sub.subscribe(verb, channels)

    # ------------------------------------------------------------------ publishing
    def publish(self, op: str, **fields: Any) -> Optional[int]:
        """Publish on the operation's channel (``relay.channel_for``) through the link
        and wait until the message is in Redis (so per-caller order holds across
        workers). Returns how many processes listen to that channel, or ``None`` when
        it was dropped: at once while degraded, or (a ``resync`` follows) when it could
        not be sent in time."""
        if not self._started:
            self.start()  # a REST handler may publish before any socket arrived
        path = fields.get("path")
        if self.degraded:
            self._drop(op, path, fields)
            return None
        try:
            receivers = self.link.call(self.publish_verb, channel_for(self.prefix, op, fields),
                                       encode_op(self.host_id, op, fields),
                                       timeout=PUBLISH_WAIT, cancel_on_timeout=False)
            self.published += 1
            return int(receivers)
        except LinkBusy:  # still queued and likely to pass: a resync covers it anyway
            self._drop(op, path, fields)
        except LinkError:  # the link opened the circuit; it may have passed
            self._drop(op, path, fields)
        return None

    def _drop(self, op: str, path: Optional[str], fields: Dict[str, Any]) -> None:
        self.dropped += 1
        if op in _POINT_TO_POINT_OPS:
            return  # the one caller waiting on it sees an error: nothing to resync
        if op == "revoke":
            if len(self._pending_revokes) < MAX_PENDING_REVOKES:
                self._pending_revokes.add(str(fields.get("token")))
        elif op == "resync":  # sent again later, for the same paths
            self._add_gaps(fields.get("paths"))
        else:
            self._add_gaps(None if path is None else [path])

    def _add_gaps(self, paths: Optional[List[str]]) -> None:
        if paths is None or len(self._gap_paths) + len(paths) > MAX_GAP_PATHS:
            self._gap_all = True
        else:
            self._gap_paths.update(paths)

    # ------------------------------------------------------------------ subscribing
    def _subscribe_loop(self) -> None:
        backoff = BACKOFF_MIN
        while not self._stopped:
            client: Any = None
            try:
                # redis-py makes the connection (URL, Sentinel, TLS, AUTH, SELECT) in
                # RESP2; the Subscriber reads its socket itself.
                client = redis_client(self.url, socket_timeout=SUBSCRIBER_TIMEOUT,
                                      socket_connect_timeout=CONNECT_TIMEOUT,
                                      retry=_NO_RETRY, protocol=2)
                connection = client.connection_pool.get_connection()
                _refuse_a_cluster_node(connection)
                sub = Subscriber(connection._sock, self._on_message, self._on_confirm,
                                 HEALTH_CHECK_INTERVAL, SUBSCRIBER_TIMEOUT)
                self._subscriber = sub
                sub.subscribe("SUBSCRIBE", [self.control, self.inbox])
                self.interest.resubscribe()
                backoff = BACKOFF_MIN
                sub.run()
            except WrongTopologyError as exc:
                self._lost(str(exc))
                log.error("%s", exc)
                concurrency.sleep(BACKOFF_MAX * 20)  # a configuration error: no log storm
            except (SubscriberLost, redis.RedisError, OSError) as exc:
                self._lost(f"subscription lost: {exc}")
            except Exception:  # keep the subscriber alive whatever happens
                log.exception("Redis relay subscriber failed")
                self._lost("subscriber error")
            finally:
                self._subscriber = None
                self.interest.connection_lost()
                try:
                    if client is not None:
                        client.connection_pool.disconnect()
                except Exception:  # noqa: BLE001 - closing a dead socket
                    pass
            if not self._stopped:
                concurrency.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _lost(self, reason: str) -> None:
        self._subscribed = False
        self.link.recheck()  # its connection may have met the same end
        if not self._stopped:
            self._enter_degraded(reason, subscription_lost=True)
        self._first_attempt.set()

    def _on_confirm(self, kind: bytes, channel: bytes) -> None:
        if channel in self._always:
            if kind in (b"subscribe", b"ssubscribe") and channel == self.control.encode():
                # Not here: the reader must never wait on the link.
                concurrency.spawn(self._on_subscribed)
            return
        self.interest.confirmed(kind, channel)

    def _housekeeping(self) -> Any:
        if self._stopped:
            return False
        now = concurrency.monotonic()
        if self.degraded and self._subscribed and now >= self._next_probe:
            self._probe(now)  # the publisher failed while the subscription held
        if now >= self._next_stats and not self.degraded and self.announce:
            self._next_stats = now + STATS_INTERVAL
            self._publish_stats()
        if not self.degraded and (self._gap_all or self._gap_paths or self._pending_revokes):
            self._send_pending()  # dropped while Redis was busy, not down
        self.interest.sweep(now)
        return None

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel not in self._always and not self.interest.holds(channel):
            self.unrouted += 1  # nobody here holds it any more: not even decoded
            return
        self.received += 1
        try:
            message = envelope.decode_json(data)
        except ValueError:
            log.warning("ignoring a relayed message that is not JSON")
            return
        if not isinstance(message, dict):
            return
        if message.get("host") == self.host_id:
            self.own_echoes += 1  # this process delivered it locally before publishing
            return
        try:
            self._on_op(message)
        except Exception:  # a bad message must not stop the listener
            log.exception("could not apply relayed message %r", message.get("op"))

    def _on_subscribed(self) -> None:
        self._subscribed = True
        self._first_attempt.set()
        try:
            self.link.call("PING", timeout=REPLY_TIMEOUT)
        except LinkDown as exc:
            self._enter_degraded(f"publisher unavailable: {exc}", subscription_lost=False)
            self._next_probe = concurrency.monotonic() + BACKOFF_MIN
            return
        except LinkBusy:  # answering others: Redis is there
            pass
        if self.degraded:
            self._recover()

    def _probe(self, now: float) -> None:
        try:
            self.link.call("PING", timeout=REPLY_TIMEOUT)
        except LinkDown:
            self._next_probe = now + BACKOFF_MAX
            return
        except LinkBusy:  # answering others: Redis is there
            pass
        self._recover()

    def ensure_available(self) -> bool:
        """Start if needed; False while degraded (callers skip Redis at once)."""
        if not self._started:
            self.start()
        return not self.degraded

    def report_failure(self, reason: str) -> None:
        """The link's connection failed (or Redis did not answer): open the circuit."""
        self._enter_degraded(reason, subscription_lost=False)

    # ------------------------------------------------------------------ the circuit
    def _enter_degraded(self, reason: str, subscription_lost: bool) -> None:
        if subscription_lost:
            self._sub_gap = True
        self.last_error = reason
        if self.degraded:
            return
        self.degraded = True
        self.outages += 1
        self._down_since = concurrency.monotonic()
        self._next_probe = self._down_since + BACKOFF_MIN
        log.warning("Redis relay degraded (%s): local delivery continues; relayed "
                    "messages are dropped until %s answers again", reason, self.url)

    def _recover(self) -> None:
        down = concurrency.monotonic() - (self._down_since or concurrency.monotonic())
        self.degraded = False
        self._down_since = None
        sub_gap, self._sub_gap = self._sub_gap, False
        resynced = self._on_gap("relay-gap") if sub_gap else 0
        if resynced:
            self.resyncs += 1
        self._send_pending()
        self._on_recovered()  # e.g. claims lost with a Redis restart are made again
        log.warning("Redis relay restored after %.1f s: %d messages dropped so far, "
                    "_resync sent to %d local clients", down, self.dropped, resynced)

    def _send_pending(self) -> None:
        """Tell the other processes which namespaces missed what this one dropped, and
        send the logout revocations kept meanwhile: in a task of its own, so that the
        subscriber never waits on a publish."""
        if self._sending_pending:
            return
        self._sending_pending = True
        gap_all, self._gap_all = self._gap_all, False
        gap_paths, self._gap_paths = sorted(self._gap_paths), set()
        revokes, self._pending_revokes = list(self._pending_revokes), set()
        concurrency.spawn(self._publish_pending, gap_all, gap_paths, revokes)

    def _publish_pending(self, gap_all: bool, gap_paths: List[str], revokes: List[str]
                         ) -> None:
        try:
            if gap_all or gap_paths:
                self.publish("resync", paths=None if gap_all else gap_paths)
            for token in revokes:
                self.publish("revoke", token=token)
        finally:
            self._sending_pending = False

    # ------------------------------------------------------------------ stats
    def _publish_stats(self) -> None:
        row = self._stats_row()
        pipe = self.link.pipeline()
        pipe.set(stats_key(self.prefix, self.host_id), envelope.encode_json(row),
                 ex=STATS_TTL)
        pipe.sadd(instances_key(self.prefix), self.host_id)
        pipe.expire(instances_key(self.prefix), STATS_TTL * 6)
        if not self.link.post(pipe):  # not waited for: the subscriber must not block
            log.info("could not publish stats to Redis: the link's queue is full")

    def cluster_stats(self) -> Dict[str, Any]:
        """Stats rows of every live process of this app (own row always fresh)."""
        if not self._started:
            self.start()
        own = self._stats_row()
        rows: List[Dict[str, Any]] = [own]
        error = None
        try:
            members = [m.decode() if isinstance(m, bytes) else str(m)
                       for m in self.link.call("SMEMBERS", instances_key(self.prefix),
                                               timeout=STATS_WAIT)]
            others = [m for m in members if m != self.host_id]
            values = self.link.call("MGET", *[stats_key(self.prefix, m) for m in others],
                                    timeout=STATS_WAIT) if others else []
            gone = []
            for member, raw in zip(others, values):
                if raw is None:
                    gone.append(member)  # its snapshot expired: the process is gone
                else:
                    rows.append(envelope.decode_json(raw))
            if gone:
                self.link.call("SREM", instances_key(self.prefix), *gone,
                               timeout=STATS_WAIT)
        except LinkError as exc:
            error = f"Redis unavailable: {exc}"
        merged = merge_instances(rows)
        if error:
            merged["error"] = error
        return merged

    def status(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"hostId": self.host_id, "degraded": self.degraded}
        out.update({"subscribed": self._subscribed, "interest": self.interest.status(),
                    "published": self.published, "received": self.received,
                    "unrouted": self.unrouted,
                    "ownEchoes": self.own_echoes, "dropped": self.dropped,
                    "outages": self.outages, "resyncs": self.resyncs,
                    "lastError": self.last_error, "pid": os.getpid(),
                    "host": socket.gethostname(), "link": self.link.status()})
        if self._down_since is not None:
            out["degradedFor"] = round(concurrency.monotonic() - self._down_since, 3)
        return out
