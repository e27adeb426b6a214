"""One pub/sub connection of a process, read by one task that parses every message a
read brings (hiredis' ``Reader``) and never polls.

Why not redis-py's ``PubSub.get_message(timeout)``: under gevent it costs a poll, a
Timeout and RESP3 push parsing per message, 140-190 us of CPU in the real server
(``docs/scaling.md``); here a wake-up reads up to 64 KiB and hands over every complete
message in it, a few microseconds each. redis-py still makes the connection (URLs,
Sentinel, TLS, AUTH, ``SELECT``); it speaks RESP2, so messages are plain arrays.

The connection is the caller's to open and to read (:meth:`Subscriber.run` returns when
it fails); commands may be sent from any task (:meth:`Subscriber.send`).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Iterable, List, Optional, Sequence

import hiredis

from .. import concurrency

__all__ = ["Subscriber", "SubscriberLost", "encode_command", "MAX_CHANNELS_PER_COMMAND"]

#: Channels in one SUBSCRIBE/UNSUBSCRIBE (Centrifugo uses 512): a long command is
#: one parse for Redis, but a huge one holds Redis' single thread.
MAX_CHANNELS_PER_COMMAND = 512
#: Bytes one read takes at the most.
READ_SIZE = 65536


class SubscriberLost(ConnectionError):  # noqa: N818 - reads as what happened
    """The pub/sub connection failed, closed, or stopped answering."""


def encode_command(*args: Any) -> bytes:
    """One command in RESP (what redis-py's ``pack_command`` makes, without its cost)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class Subscriber:
    """A connection in pub/sub mode and the loop that reads it.

    :param sock: a connected socket, authenticated and on the right database.
    :param on_message: ``(channel, data)`` for every ``message`` (``smessage`` in
        Redis Cluster), in the order Redis sent them. It must not block.
    :param on_confirm: ``(kind, channel)`` for every ``subscribe``/``unsubscribe``
        (``ssubscribe``/``sunsubscribe``) reply, and for an ``sunsubscribe`` that Redis
        pushes by itself when a slot moves.
    :param health_interval: idle seconds before a ``PING`` checks the connection.
    :param reply_timeout: seconds without any byte after that ``PING``: the connection
        is dead (a peer that vanished, or alive but deaf).
    """

    def __init__(self, sock: Any, on_message: Callable[[bytes, bytes], None],
                 on_confirm: Callable[[bytes, bytes], None], health_interval: float,
                 reply_timeout: float) -> None:
        self.sock = sock
        self._on_message = on_message
        self._on_confirm = on_confirm
        self._health_interval = health_interval
        self._reply_timeout = reply_timeout
        self._send_lock = concurrency.Lock()
        self._closed = False
        self.messages = 0
        self.reads = 0

    def send(self, *commands: bytes) -> None:
        """Send encoded commands (from any task); :class:`SubscriberLost` on failure."""
        if self._closed:
            raise SubscriberLost("the subscriber connection is closed")
        with self._send_lock:
            try:
                self.sock.sendall(b"".join(commands))
            except OSError as exc:
                raise SubscriberLost(f"could not write to Redis: {exc}") from exc

    def subscribe(self, verb: str, channels: Sequence[str]) -> None:
        """``SUBSCRIBE`` (or another verb taking channel names) in batches."""
        self.send(*_batched(verb, channels))

    def run(self) -> None:
        """Read until the connection fails; raises :class:`SubscriberLost`."""
        reader = hiredis.Reader()
        sock = self.sock
        pinged_at: Optional[float] = None
        sock.settimeout(self._health_interval)
        try:
            while not self._closed:
                try:
                    data = sock.recv(READ_SIZE)
                except socket.timeout:
                    now = concurrency.monotonic()
                    if pinged_at is None:
                        pinged_at = now
                        self.send(encode_command("PING"))
                    elif now - pinged_at >= self._reply_timeout:
                        raise SubscriberLost(f"Redis did not answer a PING within "
                                             f"{self._reply_timeout} s") from None
                    continue
                if not data:
                    raise SubscriberLost("Redis closed the connection")
                pinged_at = None
                self.reads += 1
                reader.feed(data)
                self._dispatch(reader)
        except OSError as exc:
            if isinstance(exc, SubscriberLost):
                raise
            raise SubscriberLost(f"reading from Redis failed: {exc}") from exc
        except hiredis.ProtocolError as exc:
            raise SubscriberLost(f"Redis sent something unreadable: {exc}") from exc

    def _dispatch(self, reader: Any) -> None:
        on_message = self._on_message
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if isinstance(reply, hiredis.ReplyError):
                raise SubscriberLost(f"Redis refused a subscriber command: {reply}")
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0]
            if kind in (b"message", b"smessage") and len(reply) == 3:
                self.messages += 1
                on_message(reply[1], reply[2])
            elif kind in _CONFIRMATIONS and len(reply) == 3:
                self._on_confirm(kind, reply[1])
            # b"pong": any byte already proved the connection alive

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass


_CONFIRMATIONS = frozenset({b"subscribe", b"unsubscribe", b"ssubscribe", b"sunsubscribe"})


def _batched(verb: str, channels: Iterable[str]) -> List[bytes]:
    channels = list(channels)
    return [encode_command(verb, *channels[i:i + MAX_CHANNELS_PER_COMMAND])
            for i in range(0, len(channels), MAX_CHANNELS_PER_COMMAND)]
