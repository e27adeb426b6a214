"""Short Redis commands of a process on a Redis Cluster: one auto-pipelined link per
master (``redis_link.RedisLink``), and each call sent to the master of its slot.

Every script and every command of the relay touches one slot: a namespace's keys share
its hash tag (``keys.py``), the stats theirs. A call goes to the master that serves the
slot of its keys, as the cluster's slot map says (:class:`ClusterTopology`, read with
``CLUSTER SLOTS``); a pipeline over several namespaces (a presence tick, the claims'
refresh) is split by master, each part sent on that master's link, and the results put
back in order. Redirections are followed: a
``MOVED`` refreshes the map and sends the call again (the command did not run), an
``ASK`` sends it to the importing node behind ``ASKING``, and ``TRYAGAIN`` waits a
little. A call without a key (``PING``) goes to every master: the relay's probe only
recovers once every shard answers.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import redis
from redis.commands.core import Script
from redis.crc import key_slot

from .. import concurrency
from .link_errors import CommandFailed, LinkBusy, LinkDown
from .redis_connect import ClusterURL, node_client
from .redis_link import CALL_WAIT, OneCall, RedisLink

__all__ = ["ClusterTopology", "ClusterLink", "slot_of_call"]

log = logging.getLogger("flask_jpulse_ws")

Node = Tuple[str, int]

#: Redirections followed for one call before it fails.
MAX_REDIRECTS = 16
#: Seconds to wait before sending a call again after ``TRYAGAIN`` (a slot migrating).
TRYAGAIN_WAIT = 0.05
_KEYLESS = frozenset({"PING", "INFO", "SCRIPT"})


def slot_of_command(args: Sequence[Any]) -> Optional[int]:
    """The slot of one command's first key; ``None`` for a command without keys."""
    name = str(args[0]).upper()
    if name in ("EVAL", "EVALSHA"):
        return _slot(args[3]) if int(args[2]) > 0 else None
    if name in _KEYLESS or len(args) < 2:
        return None
    return _slot(args[1])


def slot_of_call(commands: Sequence[Any]) -> Optional[int]:
    """The slot of a recorded call (redis-py pipeline ``command_stack``): that of the
    first key of its first command with keys; ``None`` for a call without keys."""
    for args, _ in commands:
        slot = slot_of_command(args)
        if slot is not None:
            return slot
    return None


def _slot(key: Any) -> int:
    return int(key_slot(key if isinstance(key, bytes) else str(key).encode("utf-8")))


class ClusterTopology:
    """Which master serves each slot, from ``CLUSTER SLOTS`` of any reachable node."""

    def __init__(self, spec: ClusterURL, options: Dict[str, Any]) -> None:
        self.spec = spec
        self.options = options
        self._slots: List[Tuple[int, int, Node]] = []
        self._lock = concurrency.Lock()
        self.stale = True
        self.refreshes = 0

    def refresh(self) -> None:
        """Read the slot map again (one refresh at a time; waiters share it)."""
        with self._lock:
            if not self.stale and self._slots:
                return
            seeds = list(dict.fromkeys([node for _, _, node in self._slots]
                                       + list(self.spec.nodes)))
            last: Optional[BaseException] = None
            for host, port in seeds:
                client = node_client(self.spec, host, port, **self.options)
                try:
                    slots = client.execute_command("CLUSTER SLOTS")
                except Exception as exc:  # noqa: BLE001 - try the next node
                    last = exc
                    continue
                finally:
                    client.close()
                self._slots = sorted((int(start), int(end), _node(master))
                                     for start, end, master, *_ in slots)
                self.stale = False
                self.refreshes += 1
                return
            raise LinkDown(f"no node of the Redis Cluster answered: {last}")

    def node_of(self, slot: int) -> Node:
        if self.stale or not self._slots:
            self.refresh()
        for start, end, node in self._slots:
            if start <= slot <= end:
                return node
        self.stale = True
        raise LinkDown(f"no master serves slot {slot} (cluster down?)")

    def masters(self) -> List[Node]:
        if self.stale or not self._slots:
            self.refresh()
        return list(dict.fromkeys(node for _, _, node in self._slots))


def _node(entry: Sequence[Any]) -> Node:
    host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
    return host or "127.0.0.1", int(entry[1])


class ClusterLink(OneCall):
    """The same calls as :class:`~.redis_link.RedisLink`, over every master."""

    def __init__(self, spec: ClusterURL, options: Dict[str, Any],
                 on_down: Callable[[str], None]) -> None:
        self.topology = ClusterTopology(spec, {k: v for k, v in options.items()
                                               if k in ("socket_timeout",
                                                        "socket_connect_timeout")})
        self._spec = spec
        self._options = options
        self._on_down = on_down
        self._links: Dict[Node, RedisLink] = {}
        self._recorder = redis.Redis()  # records pipelines and scripts; never connects
        self.redirects = 0

    # ------------------------------------------------------------------ the calls
    def pipeline(self) -> Any:
        return self._recorder.pipeline(transaction=False)

    def register_script(self, source: str) -> Script:
        return self._recorder.register_script(source)

    def run(self, recorded: Any, timeout: Optional[float] = CALL_WAIT,
            cancel_on_timeout: bool = True) -> List[Any]:
        slots = [slot_of_command(args) for args, _ in recorded.command_stack]
        known = {slot for slot in slots if slot is not None}
        if not known:
            return self._run_everywhere(recorded, timeout, cancel_on_timeout)
        if len(known) > 1:
            return self._run_split(recorded, slots, timeout, cancel_on_timeout)
        return self._run_on_slot(recorded, known.pop(), timeout, cancel_on_timeout)

    def _run_split(self, recorded: Any, slots: List[Optional[int]],
                   timeout: Optional[float], cancel_on_timeout: bool) -> List[Any]:
        """Commands of several slots: one part per slot, in turn (a part is one round
        trip queued with whatever else goes to that master)."""
        parts: Dict[int, List[int]] = {}
        first = next(s for s in slots if s is not None)
        for index, slot in enumerate(slots):
            parts.setdefault(first if slot is None else slot, []).append(index)
        results: List[Any] = [None] * len(slots)
        for slot, indexes in parts.items():
            part = self.pipeline()
            part.command_stack = [recorded.command_stack[i] for i in indexes]
            part.scripts = set(recorded.scripts)
            for index, result in zip(indexes, self._run_on_slot(part, slot, timeout,
                                                                cancel_on_timeout)):
                results[index] = result
        return results

    def _run_on_slot(self, recorded: Any, slot: int, timeout: Optional[float],
                     cancel_on_timeout: bool) -> List[Any]:
        deadline = None if timeout is None else concurrency.monotonic() + timeout
        for _ in range(MAX_REDIRECTS):
            node = self.topology.node_of(slot)
            left = None if deadline is None else max(0.0, deadline - concurrency.monotonic())
            try:
                return self._link(node).run(recorded, left, cancel_on_timeout)
            except CommandFailed as exc:
                kind = _redirection(exc)
                if kind is None:
                    raise
                self.redirects += 1
                if kind == "MOVED":  # the slot has a new master: read the map again
                    self.topology.stale = True
                elif kind == "ASK":  # being imported by another node: ask it there
                    return self._ask(exc, recorded, left, cancel_on_timeout)
                else:  # TRYAGAIN, CLUSTERDOWN: the slot is moving or the shard failing over
                    concurrency.sleep(TRYAGAIN_WAIT)
                    self.topology.stale = True
        raise LinkBusy(f"slot {slot}: still redirected after {MAX_REDIRECTS} tries")

    def _ask(self, exc: CommandFailed, recorded: Any, timeout: Optional[float],
             cancel_on_timeout: bool) -> List[Any]:
        host, _, port = str(exc.reply).split()[-1].rpartition(":")
        results = self._link((host, int(port))).run(_with_asking(self, recorded), timeout,
                                                    cancel_on_timeout)
        return results[1::2]

    def _run_everywhere(self, recorded: Any, timeout: Optional[float],
                        cancel_on_timeout: bool) -> List[Any]:
        results: List[Any] = []
        for node in self.topology.masters():
            results = self._link(node).run(recorded, timeout, cancel_on_timeout)
        return results

    def post(self, recorded: Any) -> bool:
        """Queue without waiting (stats, revocations): sent to the master of the slot of
        its first key, as the map says (such calls touch one slot)."""
        slot = slot_of_call(recorded.command_stack)
        try:
            node = self.topology.node_of(slot) if slot is not None else \
                self.topology.masters()[0]
        except LinkDown:
            return False
        return self._link(node).post(recorded)

    def stop(self) -> None:
        for link in list(self._links.values()):
            link.stop()

    def recheck(self) -> None:
        """``RedisLink.recheck`` on every master's link."""
        for link in list(self._links.values()):
            link.recheck()

    @property
    def queued(self) -> int:
        return sum(link.queued for link in self._links.values())

    def status(self) -> Dict[str, Any]:
        total: Dict[str, Any] = {"nodes": len(self._links), "redirects": self.redirects,
                                 "topologyRefreshes": self.topology.refreshes}
        for link in self._links.values():
            for key, value in link.status().items():
                total[key] = max(total.get(key, 0), value) if key == "largestBatch" \
                    else total.get(key, 0) + value
        return total

    # ------------------------------------------------------------------ the nodes
    def _link(self, node: Node) -> RedisLink:
        link = self._links.get(node)
        if link is None:
            client = node_client(self._spec, node[0], node[1], **self._options)
            def on_down(reason: str, n: Node = node) -> None:
                self._node_down(n, reason)

            link = self._links[node] = RedisLink(client, on_down=on_down)
        return link

    def _node_down(self, node: Node, reason: str) -> None:
        self.topology.stale = True  # failed over, perhaps: read the map again
        self._on_down(f"{node[0]}:{node[1]}: {reason}")


def _redirection(exc: CommandFailed) -> Optional[str]:
    reply = exc.reply
    if isinstance(reply, redis.exceptions.MovedError):
        return "MOVED"
    if isinstance(reply, redis.exceptions.AskError):
        return "ASK"
    if isinstance(reply, (redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)):
        return "TRYAGAIN"
    return None


def _with_asking(link: ClusterLink, recorded: Any) -> Any:
    """The same call with ``ASKING`` before each command (it lasts one command)."""
    call = link.pipeline()
    for command in recorded.command_stack:
        call.command_stack.append((("ASKING",), {}))
        call.command_stack.append(command)
    call.scripts = set(recorded.scripts)
    return call
