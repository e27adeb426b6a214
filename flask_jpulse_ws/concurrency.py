"""The only module that touches gevent: spawn, sleep, events, locks, raw sockets.

Under a gevent server (``gunicorn -k gevent``) everything is a greenlet; under a
threaded server (``flask run``) the same calls fall back to threads. The choice
is made once, at first use, from whether ``socket`` is monkey-patched.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Optional

__all__ = ["using_gevent", "spawn", "spawn_later", "sleep", "Event", "Lock",
           "nonblocking_sender", "receiver", "AsyncResult", "monotonic", "call_soon"]

_gevent: Optional[bool] = None
monotonic = time.monotonic


def using_gevent() -> bool:
    """True when the process runs gevent with a monkey-patched ``socket``."""
    global _gevent
    if _gevent is None:
        try:
            from gevent import monkey
            _gevent = bool(monkey.is_module_patched("socket"))
        except ImportError:  # pragma: no cover - gevent is a dependency
            _gevent = False
    return _gevent


def spawn(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` concurrently: a greenlet, or a daemon thread."""
    if using_gevent():
        import gevent
        return gevent.spawn(fn, *args)
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def spawn_later(seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` after ``seconds``; returns something with ``.cancel()``."""
    if using_gevent():
        import gevent
        g = gevent.spawn_later(seconds, fn, *args)
        g.cancel = g.kill  # same verb as threading.Timer
        return g
    t = threading.Timer(seconds, fn, args=args)
    t.daemon = True
    t.start()
    return t


def receiver(sock: Any, size: int) -> Callable[[], bytes]:
    """``recv()`` for a reader that has just handled what it read.

    gevent's ``recv`` tries the socket first and waits only when that fails;
    right after handling a message the next one has almost never arrived, so
    every message would cost a failed system call. This waits first, then reads.
    """
    wait = getattr(sock, "_wait", None)
    event = getattr(sock, "_read_event", None)
    raw = getattr(sock, "_sock", None)
    if not using_gevent() or wait is None or event is None or raw is None:
        return lambda: sock.recv(size)  # type: ignore[no-any-return]
    raw_recv = raw.recv

    def recv() -> bytes:
        while True:
            wait(event)
            try:
                return raw_recv(size)  # type: ignore[no-any-return]
            except (BlockingIOError, InterruptedError):
                continue  # woken without data: wait again

    return recv


def call_soon(fn: Callable[[], Any]) -> None:
    """Run ``fn()`` once the running greenlet yields (gevent only; never blocks in it)."""
    import gevent
    gevent.get_hub().loop.run_callback(fn)


def sleep(seconds: float) -> None:
    if using_gevent():
        import gevent
        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


def Event() -> Any:  # noqa: N802 - a factory standing in for a class
    if using_gevent():
        from gevent.event import Event as GEvent
        return GEvent()
    return threading.Event()


def Lock() -> Any:  # noqa: N802
    if using_gevent():
        from gevent.lock import Semaphore
        return Semaphore()
    return threading.Lock()


class AsyncResult:
    """A value set once by one side and awaited, with a timeout, by another."""

    def __init__(self) -> None:
        self._event = Event()
        self.value: Any = None

    def set(self, value: Any) -> bool:
        if self._event.is_set():
            return False
        self.value = value
        self._event.set()
        return True

    def wait(self, timeout: Optional[float]) -> bool:
        return bool(self._event.wait(timeout))


_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def nonblocking_sender(sock: Any) -> Callable[[Any], int]:
    """``send(data) -> bytes taken now``, never waiting; raises ``BlockingIOError``
    (nothing taken) or ``OSError`` (connection gone).

    Under gevent the real socket behind the cooperative one is already
    non-blocking, so its bound ``send`` is used directly (no wrapper on the hot
    path); under threads ``MSG_DONTWAIT`` makes each call non-blocking.
    """
    raw = getattr(sock, "_sock", None) if using_gevent() else None
    if raw is not None:
        return raw.send  # type: ignore[no-any-return]
    send = sock.send
    return lambda data: send(data, _DONTWAIT)  # type: ignore[no-any-return]
