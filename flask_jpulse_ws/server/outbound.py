"""The writing side of one socket: outbox, flusher, bounded queue, writer, close frame.

Frames are written straight to the socket when the kernel takes them (no greenlet
switch, no copy); only what does not fit is queued, and a writer is started for as
long as the queue is not empty. A queue over ``JPULSE_WS_MAX_QUEUE_BYTES`` marks a
slow consumer: it is closed 4503 and never holds anyone else up. Every frame goes
through this one path, so frames never interleave, partial writes are always
completed, and nothing follows the close frame.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Union

from .. import concurrency
from ..core import frames
from ..errors import CloseCode

__all__ = ["Outbound"]

log = logging.getLogger("flask_jpulse_ws")

_NO_LOCK = contextlib.nullcontext()
_OVERFLOW = object()
#: Bytes an outbox gathers before it is written without waiting for a yield.
_OUTBOX_MAX = 256 * 1024
_SLOW_CONSUMER_CLOSE = frames.close_frame(CloseCode.SLOW_CONSUMER,
                                          "Slow consumer: outbound queue full")


class _Flusher:
    """Writes every outbox once the current greenlet yields, and counts those turns.

    The flush runs as a callback of gevent's loop: a list swap and one
    non-blocking write per socket, nothing that could switch greenlets.
    """

    def __init__(self) -> None:
        self._dirty: List[Outbound] = []
        self._scheduled = False
        #: Advances each time the flush runs: frames sent with the same ``turn`` were
        #: sent before the greenlet sending them yielded.
        self.turn = 0

    def add(self, out: Outbound) -> None:
        self._dirty.append(out)
        self.end_turn_later()

    def end_turn_later(self) -> None:
        """Make sure ``turn`` advances once the running greenlet yields."""
        if not self._scheduled:
            self._scheduled = True
            concurrency.call_soon(self.flush)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        self.turn += 1
        for out in dirty:
            try:
                out.flush()
            except Exception:  # one broken socket must not keep the others' frames
                log.exception("writing to %r failed", out)


_FLUSHER = _Flusher()


def _uncounted(reason: str) -> None:
    pass


class Outbound:
    """Everything written to one socket, in order, without waiting on its peer.

    :param sock: the connected socket (gevent's, the stdlib's, or TLS).
    :param max_queue: bytes that may wait for a slow peer before it is closed 4503.
    :param close_timeout: seconds the peer has to answer our close frame.
    :param on_drop: counts the drop once the queue bound is passed (``"slowConsumer"``).
    :param name: who is at the other end, for the logs.

    Callbacks are plain functions, never the connection's own methods: a connection
    that leaves is freed at once, with no reference cycle for the garbage collector.
    """

    # Slots: one of these per socket, and the broadcast loop reads them for each.
    __slots__ = ("sock", "name", "closed", "close_code", "_max_queue", "_close_timeout",
                 "_on_drop", "_lock", "_coalesce", "_send_now", "_outbox", "_outbox_bytes",
                 "_queue", "_queued", "_head_partial", "_cut_when_flushed", "_cut_timer",
                 "_drained", "_turn", "_upgrade")

    def __init__(self, sock: Any, max_queue: int, close_timeout: float,
                 on_drop: Callable[[str], None] = _uncounted, name: str = "",
                 upgrade: bytes = b"") -> None:
        """:param upgrade: the HTTP 101 answer when it is not written yet: the first bytes
            on the wire, in the same write as the frames that follow it in this turn
            (the welcome: one send per handshake, not two)."""
        self.sock = sock
        self.name = name
        #: True once a close frame is on its way (ours or our answer): no data after it.
        self.closed = False
        #: The code of the first close: the one we sent, or the peer's.
        self.close_code: Optional[int] = None
        self._max_queue = max_queue
        self._close_timeout = close_timeout
        self._on_drop = on_drop
        # Under gevent nothing here switches greenlets, so no lock; threads need one.
        self._lock: Any = _NO_LOCK if concurrency.using_gevent() else concurrency.Lock()
        #: Under gevent, frames wait in the outbox until this greenlet yields.
        self._coalesce = self._lock is _NO_LOCK
        #: One non-blocking write: what the kernel takes now, never a wait.
        self._send_now: Callable[[Any], int] = concurrency.nonblocking_sender(sock)
        self._outbox: Union[None, bytes, List[bytes]] = None
        self._outbox_bytes = 0
        self._queue: Optional[Deque[Any]] = None  # None while the socket takes everything
        self._queued = 0
        self._head_partial = False
        self._cut_when_flushed = False
        self._cut_timer: Any = None
        self._drained: Any = None  # set by the writer when it ends, once finish() waits
        self._turn = -1  # the flusher's turn of the last frame written straight away
        #: The HTTP 101 while it waits in the outbox (gevent), ``None`` once written.
        self._upgrade: Optional[bytes] = None
        if upgrade:
            self._offer(upgrade, True)
            if self._outbox is not None:
                self._upgrade = upgrade

    def __repr__(self) -> str:
        return f"<Outbound {self.name} queued={self._queued}>"

    # ------------------------------------------------------------------ frames

    def send(self, frame: bytes, early: bool = False) -> bool:
        """Hand one encoded frame to the socket; never waits on a slow peer.

        :param early: write the first frame of this loop turn at once instead of when
            the greenlet yields: for a broadcast, whose first sockets then have it
            while the loop still queues for the others (N = 5,000: 20 % more
            deliveries per second). Not for replies: written one by one as they are
            made, 50 clients got a third fewer replies per second than when a turn's
            replies went out together.
        :returns: False once the socket takes no more data (closing, gone, or just
            closed 4503 for falling behind).
        """
        if self._coalesce:  # gevent: nothing in here can switch greenlets
            outcome = self._offer(frame, False, early)
        else:
            with self._lock:
                outcome = self._offer(frame, False)
        if outcome is _OVERFLOW:
            self._slow_consumer()
            return False
        return outcome is True

    def _offer(self, frame: bytes, force: bool, early: bool = False) -> object:
        """True sent or queued, False gone, ``_OVERFLOW`` past the bound (caller locks).

        :param force: for the close frame: past the closed state and the bound.
        """
        if self.closed and not force:
            return False
        queue = self._queue
        if queue is None:
            if not self._coalesce:
                return self._write_now(frame)
            # Frames sent before this greenlet yields go out in one write: a burst of
            # K broadcasts costs each socket one syscall, not K (two when the first
            # frame of the turn went out early).
            outbox = self._outbox
            if early and outbox is None and self._turn != _FLUSHER.turn:
                self._turn = _FLUSHER.turn
                _FLUSHER.end_turn_later()
                return self._write_now(frame)
            if outbox is None:
                # The frame itself, not a list: a broadcast to N sockets allocates no
                # container per socket (containers are what wakes the cycle collector).
                self._outbox = frame
                self._outbox_bytes = len(frame)
                _FLUSHER.add(self)
            else:
                if isinstance(outbox, list):
                    outbox.append(frame)
                else:
                    self._outbox = [outbox, frame]
                self._outbox_bytes += len(frame)
                if self._outbox_bytes >= _OUTBOX_MAX:
                    self.flush()  # a long burst: write now, memory stays bounded
            return True
        if self._queued + len(frame) > self._max_queue and not force:
            return _OVERFLOW
        queue.append(frame)
        self._queued += len(frame)
        return True

    def _write_now(self, data: bytes) -> bool:
        """Write what the kernel takes; queue the rest for the writer task."""
        started = False
        try:
            sent = self._send_now(data)
        except concurrency.WriteStarted:
            sent, started = 0, True  # TLS: the head is partly taken, like a partial write
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._lost()
            return False
        if sent == len(data):
            return True  # the common case: the kernel took it all, no copy, no switch
        self._queue = deque((memoryview(data)[sent:],))
        self._queued = len(data) - sent
        self._head_partial = sent > 0 or started
        concurrency.spawn(self._write_queued)
        return True

    def flush(self) -> None:
        """Write the frames gathered since the last flush (gevent; no switch).

        Frames reach the outbox only while nothing is queued, so it is written
        straight to the socket.
        """
        pending = self._outbox
        if pending is None:
            return
        self._outbox = None
        self._outbox_bytes = 0
        self._upgrade = None
        self._write_now(b"".join(pending) if isinstance(pending, list) else pending)
        if self._cut_when_flushed and self._queue is None:
            self.cut()

    def _write_queued(self) -> None:
        """The writer: ``sendall`` each queued chunk in order, then end."""
        sock = self.sock
        while True:
            with self._lock:
                queue = self._queue
                if not queue:
                    self._queue = None
                    self._queued = 0
                    done = self._cut_when_flushed
                    drained = self._drained
                    break
                chunk = queue.popleft()
                self._head_partial = False
            try:
                sock.sendall(chunk)
            except OSError:
                with self._lock:
                    self._queue = None  # nothing more will be written
                    drained = self._drained
                self._lost()
                if drained is not None:
                    drained.set()
                return
            with self._lock:
                self._queued -= len(chunk)
        if done:
            self.cut()
        if drained is not None:
            drained.set()

    def _slow_consumer(self) -> None:
        with self._lock:
            if self._queue is not None:
                # Unstarted frames go; a frame already half on the wire must finish.
                keep = [self._queue[0]] if self._head_partial and self._queue else []
                self._queue.clear()
                self._queue.extend(keep)
                self._queued = sum(len(c) for c in keep)
        if self._close(CloseCode.SLOW_CONSUMER, _SLOW_CONSUMER_CLOSE):
            self._on_drop("slowConsumer")  # once, even when two threads overflow together
            log.warning("closing slow consumer %s: more than %d bytes waiting",
                        self.name, self._max_queue)

    # ------------------------------------------------------------------ close

    def close(self, code: int, reason: str = "") -> None:
        """Queue our close frame after everything before it; cut the socket if the peer
        has not answered within the close timeout."""
        self._close(code, frames.close_frame(code, reason))

    def _close(self, code: int, frame: bytes) -> bool:
        """Queue ``frame`` as our close; False when a close was already sent."""
        with self._lock:
            if self.closed:
                return False
            self.closed = True  # with the frame, under the lock: no data frame after it
            self.close_code = code
            sent = self._offer(frame, True)
        if sent is True:
            self._cut_timer = concurrency.spawn_later(self._close_timeout, self.cut)
        return True

    def answer_close(self, code: int, echo: int) -> None:
        """The peer closed with ``code``: answer with ``echo`` (unless our close is out
        already), then cut once everything before it is written."""
        frame = frames.close_frame(echo)
        with self._lock:
            if self.close_code is None:
                self.close_code = code
            if not self.closed:
                self.closed = True
                self._offer(frame, True)
            flushed = self._queue is None and self._outbox is None
            if not flushed:
                self._cut_when_flushed = True  # the writer or the last flush cuts
        if flushed:
            self.cut()

    def terminate(self, code: Optional[int], reason: str = "") -> None:
        """Best-effort close frame (none for ``code=None``), then cut at once: for a peer
        that will not read, a queued close frame would never pass."""
        if not self.closed:
            self.close_code = code
            with self._lock:
                idle = self._queue is None
                self._outbox = None  # cut anyway: what has not been written is dropped,
                upgrade, self._upgrade = self._upgrade or b"", None  # but for the 101
                self.closed = True
            if idle and code is not None:
                try:
                    self._send_now(upgrade + frames.close_frame(code, reason))
                except OSError:
                    pass
        self.cut()

    def take_upgrade(self) -> bytes:
        """The HTTP 101 taken back while nothing else was sent after it, for a handshake
        that ends with a close frame written by itself (``b""`` when already written;
        anything else waiting is written first)."""
        upgrade = self._upgrade
        if upgrade is not None and self._outbox is upgrade:
            self._outbox, self._outbox_bytes, self._upgrade = None, 0, None
            return upgrade
        self.flush()
        return b""

    def finish(self) -> None:
        """The reader has ended and the server closes the socket next: write what the
        outbox holds, let the writer finish what is queued (the close frame may be
        among it) within the close timeout, and the close deadline is no longer needed.

        Without the wait the server closed the socket under a working writer (under
        werkzeug it even wrote an HTTP response after it), and the peer got a cut
        stream with no close frame.
        """
        self.flush()
        with self._lock:
            writing = self._queue is not None
            if writing:
                self._drained = drained = concurrency.Event()
        if writing:
            drained.wait(self._close_timeout)
        timer, self._cut_timer = self._cut_timer, None  # the timer holds us: let go of it
        if timer is not None:
            timer.cancel()

    def _lost(self) -> None:
        self.closed = True
        self.cut()

    def cut(self) -> None:
        """Shut the socket down, which wakes a blocked ``recv`` and ``sendall``."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
