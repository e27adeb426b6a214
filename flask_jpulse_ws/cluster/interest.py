"""Which namespace channels a process listens to: those of the namespaces it holds a
client of, and each for a short linger after its last client left (interest routing).

A worker therefore receives only the operations of its own namespaces, plus its control
channel and inbox (``keys.py``). Holding starts before the welcome: :meth:`Interest.follow`
returns once Redis confirmed the subscription, so nothing published after the welcome
can miss the new client. The first client of a path subscribes; later ones wait for the
same confirmation or none. Subscriptions wanted in one loop iteration go out as one
command (``MAX_CHANNELS_PER_COMMAND`` channels at the most), and so do unsubscriptions.

A message on a channel nobody here holds (lingering, or just left) is dropped by one
dict lookup, before it is decoded (:meth:`Interest.holds`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional, Sequence

from .. import concurrency

__all__ = ["Interest"]

#: States of a channel, as far as this process knows Redis' side.
_OFF, _SUBSCRIBING, _ON, _UNSUBSCRIBING = "off", "subscribing", "on", "unsubscribing"


class _Channel:
    __slots__ = ("path", "name", "holders", "state", "idle_since", "confirmed", "late")

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        self.holders = 0
        self.state = _OFF
        self.idle_since = 0.0
        self.confirmed = concurrency.Event()
        self.late = False  # a client was welcomed before the subscription: resync it


class Interest:
    """Per-path subscription counts of one process (one connection to one Redis).

    :param channel_of: the channel name of a path (``keys.namespace_channel``).
    :param send: ``(verb, channels)`` sends ``SUBSCRIBE``/``UNSUBSCRIBE``; raises
        ``ConnectionError`` while there is no connection (the next one subscribes).
    :param on_late: ``(paths)``: these paths' clients were welcomed before their
        subscription was confirmed; they may have missed messages (``_resync``).
    :param linger: seconds a path stays subscribed after its last client left.
    """

    def __init__(self, channel_of: Callable[[str], str],
                 send: Callable[[str, Sequence[str]], None],
                 on_late: Callable[[List[str]], Any], linger: float,
                 subscribe_verb: str = "SUBSCRIBE",
                 unsubscribe_verb: str = "UNSUBSCRIBE") -> None:
        self._channel_of = channel_of
        self._send = send
        self._on_late = on_late
        self.linger = linger
        self._verbs = (subscribe_verb, unsubscribe_verb)
        self._by_path: Dict[str, _Channel] = {}
        self._by_name: Dict[bytes, _Channel] = {}
        self._to_subscribe: List[_Channel] = []
        self._flush_scheduled = False
        # Under threads (flask run) a want and the flush can overlap: without the lock a
        # path appended to the list the flush had just taken was never subscribed.
        # Under gevent nothing in between switches, so no lock.
        self._batch_lock: Any = (contextlib.nullcontext() if concurrency.using_gevent()
                                 else concurrency.Lock())
        self.connected = False
        self.subscribes = 0
        self.unsubscribes = 0

    # ------------------------------------------------------------------ clients
    def follow(self, path: str, wait: float) -> bool:
        """One more local client of ``path``. Waits up to ``wait`` seconds for the
        subscription; False when it is not confirmed by then (the path is then
        resynced once it is)."""
        ch = self._by_path.get(path)
        if ch is None:
            ch = self._by_path[path] = _Channel(path, self._channel_of(path))
            self._by_name[ch.name.encode("utf-8")] = ch
        ch.holders += 1
        if ch.state == _ON:
            return True
        if ch.state != _SUBSCRIBING:  # off, or its unsubscription is under way
            self._want(ch)
        if wait > 0 and self.connected and ch.confirmed.wait(wait):
            return True
        ch.late = True
        return False

    def unfollow(self, path: str) -> None:
        """One client of ``path`` fewer; the last one starts the linger."""
        ch = self._by_path.get(path)
        if ch is None or ch.holders <= 0:
            return
        ch.holders -= 1
        if ch.holders == 0:
            ch.idle_since = concurrency.monotonic()

    def holds(self, channel: bytes) -> bool:
        """Whether a message on ``channel`` is for a client of this process."""
        ch = self._by_name.get(channel)
        return ch is not None and ch.holders > 0

    def path_of(self, channel: bytes) -> Optional[str]:
        ch = self._by_name.get(channel)
        return ch.path if ch is not None else None

    # ------------------------------------------------------------------ Redis' side
    def confirmed(self, kind: bytes, channel: bytes) -> None:
        """A subscribe or unsubscribe reply (or an unsubscription Redis pushed)."""
        ch = self._by_name.get(channel)
        if ch is None:
            return
        if kind.endswith(b"unsubscribe"):
            if ch.state == _UNSUBSCRIBING:
                self._forget(ch)
            elif ch.state == _ON:  # pushed by Redis (slot moved): subscribe again
                ch.state = _OFF
                ch.confirmed = concurrency.Event()
                if ch.holders:
                    ch.late = True
                    self._want(ch)
                else:
                    self._forget(ch)
            return
        if ch.state != _SUBSCRIBING:
            return
        ch.state = _ON
        ch.confirmed.set()
        if ch.late:
            ch.late = False
            self._on_late([ch.path])
        if not ch.holders:
            ch.idle_since = concurrency.monotonic()

    def sweep(self, now: float) -> int:
        """Unsubscribe paths idle for longer than the linger; returns how many."""
        idle = [ch for ch in self._by_path.values()
                if ch.holders == 0 and ch.state == _ON and now - ch.idle_since >= self.linger]
        if not idle or not self.connected:
            return 0
        for ch in idle:
            ch.state = _UNSUBSCRIBING
        try:
            self._send(self._verbs[1], [ch.name for ch in idle])
        except ConnectionError:
            return 0  # the connection is gone: so are its subscriptions
        self.unsubscribes += len(idle)
        return len(idle)

    def connection_lost(self) -> None:
        """Redis forgot every subscription: held paths are subscribed again when the
        next connection is up (:meth:`resubscribe`), the others are forgotten."""
        self.connected = False
        for ch in list(self._by_path.values()):
            if ch.holders == 0:
                self._forget(ch)
            else:
                ch.state = _OFF
                ch.confirmed = concurrency.Event()
        self._to_subscribe.clear()

    def resubscribe(self) -> List[str]:
        """A new connection: subscribe every held path again (batched). Returns the
        channel names sent."""
        self.connected = True
        for ch in [ch for ch in self._by_path.values() if ch.holders == 0]:
            self._forget(ch)  # joined and left while there was no connection
        held = list(self._by_path.values())  # all off or wanted: connection_lost()
        for ch in held:
            ch.state = _SUBSCRIBING
        names = [ch.name for ch in held]
        if names:
            self._send(self._verbs[0], names)
            self.subscribes += len(names)
        return names

    def held_paths(self) -> List[str]:
        return [ch.path for ch in self._by_path.values() if ch.holders > 0]

    def status(self) -> Dict[str, int]:
        states: Dict[str, int] = {}
        for ch in self._by_path.values():
            states[ch.state] = states.get(ch.state, 0) + 1
        return {"held": sum(1 for ch in self._by_path.values() if ch.holders),
                "channels": len(self._by_path), "subscribes": self.subscribes,
                "unsubscribes": self.unsubscribes,
                "lingering": sum(1 for ch in self._by_path.values()
                                 if ch.holders == 0 and ch.state == _ON)}

    # ------------------------------------------------------------------ internals
    def _want(self, ch: _Channel) -> None:
        ch.state = _SUBSCRIBING
        if not self.connected:
            return  # resubscribe() sends it with the next connection
        with self._batch_lock:
            self._to_subscribe.append(ch)
            schedule, self._flush_scheduled = not self._flush_scheduled, True
        if schedule:
            concurrency.spawn(self._flush)  # after the handshakes of this iteration

    def _flush(self) -> None:
        with self._batch_lock:
            self._flush_scheduled = False
            batch, self._to_subscribe = self._to_subscribe, []
        names = [ch.name for ch in batch if ch.state == _SUBSCRIBING]
        if not names or not self.connected:
            return
        try:
            self._send(self._verbs[0], names)
            self.subscribes += len(names)
        except ConnectionError:
            pass  # connection_lost() follows; resubscribe() sends them again

    def _forget(self, ch: _Channel) -> None:
        ch.state = _OFF
        if ch.holders == 0:
            self._by_path.pop(ch.path, None)
            self._by_name.pop(ch.name.encode("utf-8"), None)
