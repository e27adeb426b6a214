"""The only module that touches gevent: spawn, sleep, events, locks, raw sockets.

Under a gevent server (``gunicorn -k gevent``) everything is a greenlet; under a
threaded server (``flask run``) the same calls fall back to threads. The choice
is made once, at first use, from whether ``socket`` is monkey-patched.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
import time
from typing import Any, Callable, Optional, Set

__all__ = ["using_gevent", "spawn", "spawn_later", "every", "sleep", "Event", "Lock",
           "nonblocking_sender", "receiver", "AsyncResult", "monotonic", "call_soon", "is_tls",
           "WriteStarted", "watch_blocking", "unwatch_blocking"]

_gevent: Optional[bool] = None
_gevent_module: Any = None
monotonic = time.monotonic


def _forget_after_fork() -> None:
    global _gevent, _check_scheduled
    _gevent = None  # gunicorn --preload: the worker patches socket after the fork
    _check_scheduled = False  # the child has a loop of its own
    _watched.clear()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forget_after_fork)


def using_gevent() -> bool:
    """True when the process runs gevent with a monkey-patched ``socket``."""
    global _gevent
    if _gevent is None:
        # Not imported yet: nothing patched socket (and a script that only uses the
        # Emitter never loads gevent).
        _gevent = "gevent" in sys.modules and bool(
            _gevent_lib().monkey.is_module_patched("socket"))
    return _gevent


def _gevent_lib() -> Any:
    """gevent with the parts used here, imported on first use."""
    global _gevent_module
    if _gevent_module is None:
        import gevent.event
        import gevent.lock
        import gevent.monkey
        _gevent_module = gevent
    return _gevent_module


def spawn(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` concurrently: a greenlet, or a daemon thread."""
    if using_gevent():
        return _gevent_lib().spawn(fn, *args)
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def every(interval: float, fn: Callable[[], Any], name: str) -> Any:
    """Run ``fn()`` every ``interval`` seconds in a task of its own, for as long as it
    returns anything but ``False``; an exception is logged (naming ``name``) and the
    loop goes on: one bad round must not stop a background job."""

    def loop() -> None:
        while True:
            sleep(interval)
            try:
                if fn() is False:
                    return
            except Exception:
                logging.getLogger("flask_jpulse_ws").exception("%s failed", name)

    return spawn(loop)


def spawn_later(seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` after ``seconds``; returns something with ``.cancel()``."""
    if using_gevent():
        g = _gevent_lib().spawn_later(seconds, fn, *args)
        g.cancel = g.kill  # same verb as threading.Timer
        return g
    t = threading.Timer(seconds, fn, args=args)
    t.daemon = True
    t.start()
    return t


def is_tls(sock: Any) -> bool:
    """True for a TLS socket (``gunicorn --certfile``, ``flask run --cert``): the stdlib's
    or gevent's ``SSLSocket``, whose ``_sock`` is the raw TCP socket under the TLS layer."""
    return isinstance(sock, ssl.SSLSocket) or _is_gevent_tls(sock)


def _is_gevent_tls(sock: Any) -> bool:
    gevent_ssl = sys.modules.get("gevent.ssl")
    return gevent_ssl is not None and isinstance(sock, gevent_ssl.SSLSocket)


def receiver(sock: Any, size: int, idle: Optional[float] = None
             ) -> Callable[[], Optional[bytes]]:
    """``recv()`` for a reader that has just handled what it read.

    gevent's ``recv`` tries the socket first and waits only when that fails;
    right after handling a message the next one has almost never arrived, so
    every message would cost a failed system call. This waits first, then reads.
    Not for TLS: the raw socket carries ciphertext, and decrypted bytes may already
    wait in the TLS layer with nothing left to read on the raw socket.

    :param idle: ``recv()`` returns None once this many seconds pass with nothing to
        read (gevent, plain TCP; under threads or TLS it never does): for a task that
        should end once it is no longer needed rather than wait for the next message.
    """
    wait = getattr(sock, "_wait", None)
    event = getattr(sock, "_read_event", None)
    raw = getattr(sock, "_sock", None)
    if is_tls(sock) or not using_gevent() or wait is None or event is None or raw is None:
        return lambda: sock.recv(size)
    raw_recv = raw.recv
    if idle is None:
        def recv() -> Optional[bytes]:
            while True:
                wait(event)
                try:
                    return raw_recv(size)
                except (BlockingIOError, InterruptedError):
                    continue  # woken without data: wait again

        return recv
    timeout_class = _gevent_lib().Timeout

    def recv_or_idle() -> Optional[bytes]:
        while True:
            timer = timeout_class.start_new(idle)
            try:
                wait(event)  # the socket's own watcher: closing the socket still wakes it
            except timeout_class as exc:
                if exc is not timer:
                    raise
                return None
            finally:
                timer.close()
            try:
                return raw_recv(size)
            except (BlockingIOError, InterruptedError):
                continue

    return recv_or_idle


#: Owners of work that runs in the current greenlet in place of a task of its own: see
#: :func:`watch_blocking`.
_watched: Set[Any] = set()
_check_scheduled = False


def watch_blocking(owner: Any) -> None:
    """Call ``owner.blocked()`` if the running greenlet yields to the loop before
    :func:`unwatch_blocking` (gevent only).

    Work that usually ends without waiting (an app handler) runs in the greenlet at
    hand, which saves a task switch each time; when it does wait, its owner hears so
    as soon as the loop runs its callbacks, before it waits for I/O. One callback per
    turn of the loop checks every owner that is still watched: its greenlet is not
    running, so it yielded in the middle of the work. (A libev *prepare* watcher would
    cost nothing per call, but gevent's loop does not run it before every poll.)
    """
    global _check_scheduled
    _watched.add(owner)
    if not _check_scheduled:
        _check_scheduled = True
        call_soon(_tell_blocked)


#: End :func:`watch_blocking` for ``owner`` (no call if it never yielded).
unwatch_blocking = _watched.discard


def _tell_blocked() -> None:
    global _check_scheduled
    _check_scheduled = False
    if not _watched:
        return
    blocked = tuple(_watched)
    _watched.clear()
    for owner in blocked:
        try:
            owner.blocked()
        except Exception:  # one owner's bug must not stop the others
            logging.getLogger("flask_jpulse_ws").exception("%r.blocked() failed", owner)


def call_soon(fn: Callable[[], Any]) -> None:
    """Run ``fn()`` once the running greenlet yields (gevent only; never blocks in it)."""
    _gevent_lib().get_hub().loop.run_callback(fn)


def sleep(seconds: float) -> None:
    if using_gevent():
        _gevent_lib().sleep(seconds)
    else:
        time.sleep(seconds)


def Event() -> Any:  # noqa: N802 - a factory standing in for a class
    if using_gevent():
        return _gevent_lib().event.Event()
    return threading.Event()


def Lock() -> Any:  # noqa: N802
    if using_gevent():
        return _gevent_lib().lock.Semaphore()
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

    A TLS socket is written through its TLS layer (its raw socket would put plaintext
    on the wire): see :func:`_tls_sender`.
    """
    if is_tls(sock):
        return _tls_sender(sock)
    raw = getattr(sock, "_sock", None) if using_gevent() else None
    if raw is not None:
        return raw.send
    send = sock.send
    return lambda data: send(data, _DONTWAIT)


class WriteStarted(BlockingIOError):  # noqa: N818 - a signal, as BlockingIOError is
    """No byte counts as sent, yet the TLS layer holds the start of the buffer: the next
    write must begin with the same bytes, so they stay at the head of the queue."""


#: Bytes handed to OpenSSL per write. When the socket fills in the middle of a write,
#: OpenSSL keeps what it took and must be handed at least as many of the same bytes
#: again; the connection's writer (``sendall``, 1 MiB chunks under gevent) always does.
_TLS_PIECE = 16384


def _tls_sender(sock: Any) -> Callable[[Any], int]:
    """``send`` for a TLS socket: under gevent its raw socket is non-blocking, so the SSL
    object writes what the kernel takes now and raises ``SSLWantWriteError`` for the
    rest. Under threads the socket blocks and is read by another thread: nothing is
    written here, everything goes to the connection's writer."""
    if not (using_gevent() and _is_gevent_tls(sock)):
        return _refuse_send

    def send(data: Any) -> int:
        sslobj = sock._sslobj
        if sslobj is None:  # gevent's SSLSocket drops it on shutdown()
            raise BrokenPipeError("TLS socket shut down")
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                sent += sslobj.write(view[sent:sent + _TLS_PIECE])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            if not sent:
                raise WriteStarted("TLS write started") from None
        return sent

    return send


def _refuse_send(data: Any) -> int:
    raise BlockingIOError("TLS under threads: written by the connection's writer")
