"""Every short Redis command of a process goes through one connection, auto-pipelined.

Why: with a pool connection per waiting greenlet, a handshake storm needs as many Redis
connections as handshakes in flight. redis-py 8 pools stop at 100 and raise
``MaxConnectionsError``, which looked like an outage and opened the circuit while Redis
was healthy. Here no caller ever holds a connection: it queues its commands and waits
for its own results; one flusher task sends everything queued as one pipeline, reads the
replies and hands each caller its own (auto-pipelining, as rueidis does for Centrifugo
and ioredis for Node). 2,000 id claims at once are two pipelines, not 2,000 round trips,
and Redis sees one connection per process besides the subscriber.

Calls run in the order they were queued, so one caller's publishes reach Redis in order.

Every failure is mapped here, once:

- :class:`LinkDown`: the connection failed or Redis did not answer within
  :data:`REPLY_TIMEOUT`. Any exception out of redis-py or the socket counts (``RedisError``,
  ``OSError``, a ``ValueError`` from a file closed under it). The link reports it once to
  ``on_down`` (the relay's circuit) and fails everything queued behind it.
- :class:`LinkBusy`: the caller waited longer than it was ready to, or the queue is full.
  Redis may be fine: the circuit is not told; the caller takes its documented fallback.
- :class:`CommandFailed`: Redis answered with an error (a bug of ours, never an outage).

Only the flusher touches the connection, so closing it after a failure can never cut a
command another greenlet is in the middle of.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

import redis
from redis.commands.core import Script

from .. import concurrency
from .link_errors import CommandFailed, LinkBusy, LinkDown, LinkError

__all__ = ["RedisLink", "record_eval", "LinkError", "LinkDown", "LinkBusy", "CommandFailed",
           "REPLY_TIMEOUT", "CALL_WAIT", "MAX_QUEUED", "MAX_BATCH"]

log = logging.getLogger("flask_jpulse_ws")

#: Guards the start of a link's flusher; never held while anything waits.
_START_LOCK = threading.Lock()

#: Seconds Redis may take to answer (each read of a pipeline's replies) before the link
#: counts it as down. A
#: pipeline of 1,000 scripts takes a few ms; a starved gevent hub can add hundreds of ms
#: before the reply is read, which must not look like an outage.
REPLY_TIMEOUT = 2.0
#: Seconds a caller waits for its results by default; then :class:`LinkBusy`.
CALL_WAIT = 5.0
#: Calls that may wait in the queue; beyond it a call fails at once with LinkBusy
#: instead of growing memory behind a slow Redis.
MAX_QUEUED = 20000
#: Commands sent in one pipeline at the most (a call's commands are never split).
MAX_BATCH = 1000
#: Seconds the flusher's connection may sit unused before it is checked ahead of the next
#: batch, as redis-py's pool checks every connection it hands out: Redis may have closed
#: it meanwhile (its idle timeout, a restart). A busy link skips the check (a poll of the
#: socket per batch); :meth:`RedisLink.recheck` asks for it at once.
IDLE_CHECK = 1.0


#: What redis-py can send as an argument (it refuses bool and everything else, but only
#: while packing the whole pipeline: one bad call would fail every other call with it).
_ARGUMENT_TYPES = (bytes, bytearray, memoryview, str, int, float)


class _Call:
    __slots__ = ("commands", "scripts", "results", "error", "done", "cancelled", "sent",
                 "reloaded")

    def __init__(self, commands: List[Any], scripts: Sequence[Script]) -> None:
        self.commands = commands  # [(args, options)] as redis-py's Pipeline records them
        self.scripts = scripts
        self.results: Optional[List[Any]] = None
        self.error: Optional[LinkError] = None
        self.done: Any = None  # an Event, made only for a caller that waits
        self.cancelled = False
        self.sent = False
        self.reloaded = False  # sent again once after NOSCRIPT


def record_eval(recorded: Any, script: Script, keys: Sequence[Any],
                args: Sequence[Any]) -> None:
    """Record one run of ``script`` on a pipeline from ``pipeline()``: what
    ``script(keys, args, client=recorded)`` records, without redis-py's isinstance checks
    against its cluster classes (typing protocols: 10 % of a handshake's CPU in a storm
    profile, where the id claim is one script)."""
    recorded.scripts.add(script)
    recorded.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


class OneCall:
    """``call`` and ``eval`` on top of a link's ``pipeline()`` and ``run()`` (the link of
    one Redis and that of a Redis Cluster share them)."""

    def pipeline(self) -> Any:
        raise NotImplementedError

    def run(self, recorded: Any, timeout: Optional[float] = CALL_WAIT,
            cancel_on_timeout: bool = True) -> List[Any]:
        raise NotImplementedError

    def call(self, *args: Any, timeout: Optional[float] = CALL_WAIT,
             cancel_on_timeout: bool = True) -> Any:
        """One command, e.g. ``link.call("PUBLISH", channel, data)``."""
        rec = self.pipeline()
        rec.execute_command(*args)
        return self.run(rec, timeout, cancel_on_timeout)[0]

    def eval(self, script: Script, keys: Sequence[Any], args: Sequence[Any],
             timeout: Optional[float] = CALL_WAIT, cancel_on_timeout: bool = True) -> Any:
        """One registered script (loaded into Redis on first use, and again after a
        Redis restart)."""
        rec = self.pipeline()
        record_eval(rec, script, keys, args)
        return self.run(rec, timeout, cancel_on_timeout)[0]


class RedisLink(OneCall):
    """One process's command channel to Redis (the subscriber has its own connection).

    ``client`` is a ``redis.Redis`` that nothing else uses, made without retries (a
    retried PUBLISH could deliver twice) and with ``socket_timeout=REPLY_TIMEOUT``.
    ``on_down(reason)`` is called from the flusher when the connection fails.
    """

    def __init__(self, client: redis.Redis, on_down: Callable[[str], None],
                 max_queued: int = MAX_QUEUED, max_batch: int = MAX_BATCH) -> None:
        self._client = client
        self._on_down = on_down
        self._max_queued = max_queued
        self._max_batch = max_batch
        self._queue: Deque[_Call] = deque()
        self._wake: Any = None  # made with the flusher: after a fork (gunicorn --preload)
        self._flusher: Any = None
        self._stopped = False
        self._loaded: set = set()  # shas of the scripts loaded on the current connection
        self._conn: Any = None  # the flusher's connection (see _connection)
        self._conn_pid = 0
        self._conn_used = 0.0  # monotonic time of its last batch
        self._recheck = False  # check the connection before the next batch
        self.calls = 0
        self.batches = 0
        self.largest_batch = 0
        self.busy = 0
        self.failures = 0

    # ------------------------------------------------------------------ calling
    def pipeline(self) -> Any:
        """A recorder with redis-py's command methods; nothing is sent until :meth:`run`."""
        return self._client.pipeline(transaction=False)

    def register_script(self, source: str) -> Script:
        return self._client.register_script(source)

    def run(self, recorded: Any, timeout: Optional[float] = CALL_WAIT,
            cancel_on_timeout: bool = True) -> List[Any]:
        """Send the commands recorded on ``recorded`` (from :meth:`pipeline`) with
        whatever else is queued; return their results in order.

        :param timeout: seconds to wait for the results, then :class:`LinkBusy`.
        :param cancel_on_timeout: a call still queued when its caller gives up is not
            sent (for claims); ``False`` keeps it queued (for publishes: order holds).
        """
        call = self._enqueue(recorded, wait=True)
        if not call.done.wait(timeout):
            call.cancelled = cancel_on_timeout and not call.sent
            self.busy += 1
            raise LinkBusy(f"no reply from the Redis queue within {timeout} s", call.sent)
        if call.error is not None:
            raise call.error
        assert call.results is not None
        return call.results

    def post(self, recorded: Any) -> bool:
        """Queue the recorded commands without waiting for them (results ignored);
        False when the queue is full."""
        try:
            self._enqueue(recorded, wait=False)
        except LinkBusy:
            return False
        return True

    def _enqueue(self, recorded: Any, wait: bool) -> _Call:
        if self._stopped:
            raise LinkDown("the link is stopped")
        if len(self._queue) >= self._max_queued:
            self.busy += 1
            raise LinkBusy(f"{len(self._queue)} Redis calls already queued")
        for args, _ in recorded.command_stack:  # this caller's mistake fails it alone
            for arg in args:
                if isinstance(arg, bool) or not isinstance(arg, _ARGUMENT_TYPES):
                    raise CommandFailed(f"{args[0]}: cannot send {type(arg).__name__} "
                                        f"{arg!r} to Redis")
        call = _Call(list(recorded.command_stack), tuple(recorded.scripts))
        if wait:
            call.done = concurrency.Event()
        self.calls += 1
        self._queue.append(call)
        if self._flusher is None:
            self._start_flusher()
        self._wake.set()
        return call

    def stop(self) -> None:
        """Fail what is queued and end the flusher (the app is shutting down)."""
        self._stopped = True
        self._fail_queued([], LinkDown("the link is stopped"))
        if self._wake is not None:
            self._wake.set()

    def recheck(self) -> None:
        """Check the connection before the next batch, however recent its last one: the
        relay lost its subscription, so Redis may have restarted under this one too
        (sent on, the next batch would fail and reopen the circuit that the restart is
        about to close)."""
        self._recheck = True

    @property
    def queued(self) -> int:
        """Calls waiting for the flusher (not those it is sending)."""
        return len(self._queue)

    def status(self) -> Dict[str, Any]:
        return {"queued": len(self._queue), "calls": self.calls, "batches": self.batches,
                "largestBatch": self.largest_batch, "busy": self.busy,
                "failures": self.failures}

    # ------------------------------------------------------------------ the flusher
    def _start_flusher(self) -> None:
        with _START_LOCK:  # threads mode: two first callers at once
            if self._flusher is None:
                self._wake = concurrency.Event()
                self._flusher = concurrency.spawn(self._flush_forever)

    def _flush_forever(self) -> None:
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()  # before draining: a call queued from now on wakes us again
            while self._queue and not self._stopped:
                try:
                    self._flush_once()
                except Exception:  # the flusher must outlive anything
                    log.exception("Redis link flusher failed")

    def _take_batch(self) -> List[_Call]:
        batch: List[_Call] = []
        size = 0
        while self._queue:
            call = self._queue[0]
            if batch and size + len(call.commands) > self._max_batch:
                break
            self._queue.popleft()
            if call.cancelled:
                continue
            batch.append(call)
            size += len(call.commands)
        return batch

    def _flush_once(self) -> None:
        batch = self._take_batch()
        if not batch:
            return
        try:
            self._flush_batch(batch)
        except Exception as exc:  # noqa: BLE001 - a bug here must not strand the callers
            log.exception("Redis link flusher failed")
            self._fail_queued(batch, CommandFailed(f"{type(exc).__name__}: {exc}"),
                              only_batch=True)

    def _flush_batch(self, batch: List[_Call]) -> None:
        try:
            results = self._execute(batch)
        except Exception as exc:  # noqa: BLE001 - every failure of the connection is mapped
            self._connection_failed(batch, exc)
            return
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(results))
        if any(isinstance(r, redis.exceptions.ReadOnlyError) for r in results):
            # A replica since a failover that DNS has not followed yet: reconnect.
            self._connection_failed(batch, redis.exceptions.ReadOnlyError("READONLY"))
            return
        retry: List[_Call] = []
        it = iter(results)
        for call in batch:
            mine = [next(it) for _ in call.commands]
            if call.scripts and not call.reloaded and any(
                    isinstance(r, redis.exceptions.NoScriptError) for r in mine):
                call.reloaded = True  # Redis flushed its scripts meanwhile: send once more
                retry.append(call)
                continue
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if error is not None:
                self._finish(call, None, CommandFailed(str(error), reply=error))
            else:
                self._finish(call, mine, None)
        if retry:
            self._loaded.clear()
            self._queue.extendleft(reversed(retry))  # first again, in their order

    def _execute(self, batch: List[_Call]) -> List[Any]:
        """One round trip: the scripts this connection has not loaded yet first (so that
        a call never fails with NOSCRIPT and goes again after the calls behind it), then
        every call's commands; returns the calls' results (an error reply as its
        ``ResponseError``, as ``pipeline.execute(raise_on_error=False)`` gives it)."""
        loading = {s.sha: s.script for call in batch for s in call.scripts
                   if s.sha not in self._loaded}
        commands: List[Any] = [(("SCRIPT", "LOAD", source), {}) for source in loading.values()]
        for call in batch:
            call.sent = True
            commands.extend(call.commands)
        # What redis-py's Pipeline.execute does, on the connection the flusher keeps:
        # without a pool checkout and its readiness poll, the retry wrapper and a new
        # Pipeline per batch (123 against 55 us of CPU for a batch of one command).
        conn = self._connection()
        conn.send_packed_command(conn.pack_commands([args for args, _ in commands]))
        results: List[Any] = []
        for args, options in commands:
            try:
                results.append(self._client.parse_response(conn, args[0], **options))
            except redis.ResponseError as exc:
                results.append(exc)
        self._loaded.update(loading)
        return results[len(loading):]

    def _connection(self) -> Any:
        """The flusher's own connection, taken from the client's pool once (again in a
        forked child, and after a failure closed it); after :data:`IDLE_CHECK` seconds
        unused, made again if Redis closed it meanwhile."""
        now = concurrency.monotonic()
        if self._conn is None or self._conn_pid != os.getpid():
            self._conn = self._client.connection_pool.get_connection()
            self._conn_pid = os.getpid()
        elif (self._recheck or now - self._conn_used > IDLE_CHECK) and \
                self._closed_by_redis(self._conn):
            self._loaded.clear()  # perhaps a Redis that restarted empty
            self._conn.disconnect()
            self._conn.connect()  # a failure here is an outage, as in any batch
        self._recheck = False
        self._conn_used = now
        return self._conn

    @staticmethod
    def _closed_by_redis(conn: Any) -> bool:
        """True when an idle connection can be read: end of file, or a reply nobody
        asked for; either way it cannot carry the next batch."""
        try:
            return bool(conn.can_read(timeout=0))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return True

    def _connection_failed(self, batch: List[_Call], exc: BaseException) -> None:
        if isinstance(exc, redis.ResponseError) and \
                not isinstance(exc, redis.exceptions.ReadOnlyError):
            for call in batch:  # Redis answered: not the connection
                self._finish(call, None, CommandFailed(str(exc)))
            return
        self.failures += 1
        self._loaded.clear()  # a new connection may meet a Redis that restarted empty
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        conn, self._conn = self._conn, None
        try:
            if conn is not None:  # only the flusher uses it; the pool holds just this one
                conn.disconnect()
                self._client.connection_pool.release(conn)
            self._client.connection_pool.disconnect()
        except Exception:  # noqa: BLE001 - closing a dead socket
            pass
        # What is queued would meet the same dead Redis: fail it now.
        self._fail_queued(batch, LinkDown(reason))
        self._on_down(reason)

    def _fail_queued(self, batch: List[_Call], error: LinkError, only_batch: bool = False
                     ) -> None:
        calls = list(batch)
        while self._queue and not only_batch:  # popleft: safe against threads appending
            calls.append(self._queue.popleft())
        for call in calls:
            self._finish(call, None, error)

    @staticmethod
    def _finish(call: _Call, results: Optional[List[Any]], error: Optional[LinkError]
                ) -> None:
        call.results, call.error = results, error
        if call.done is not None:
            call.done.set()
