"""Namespaces: the declared template, the concrete namespace, and the per-app registry.

``ws.namespace(path)`` returns a :class:`NamespaceTemplate`: handlers and options,
declared before or after any app exists. Each app that uses the extension gets
its own concrete :class:`Namespace` objects (one per literal path, one per room
of a pattern), holding the connections and stats, so several apps in one process
never share clients.
"""

from __future__ import annotations

import logging
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import quote

from flask import Flask

from ..config import Settings
from ..core import envelope
from ..core.history import DEFAULT_TTL
from ..core.limits import Limits
from ..core.paths import PathPattern, decode_path, is_pattern, validate_template
from ..core.stats import ActivityLog, AppCounters, NamespaceStats
from ..errors import CloseCode

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection
    from .fanout import Fanout

__all__ = ["NamespaceTemplate", "Namespace", "Registry"]

log = logging.getLogger("flask_jpulse_ws")

Handler = Callable[["Connection"], Any]
F = TypeVar("F", bound=Handler)
OnCreate = Callable[[Any, Any], Any]


class AppServices(Protocol):
    """What a live namespace asks of its app (``server.state.AppState`` is one): settings,
    counters, the activity log, fan-out and presence. A protocol, so that this module
    need not import the app state that imports it."""

    app: Flask
    settings: Settings
    counters: AppCounters
    activity: ActivityLog
    registry: Registry

    fanout: Fanout

    @property
    def presence(self) -> Any: ...


class NamespaceTemplate:
    """What ``ws.namespace()`` returns: options and handlers for a path or pattern.

    For a literal path its ``broadcast``/``send_to_client``/``get_stats`` act on the
    namespace of the current app. For a pattern they act on the concrete room the
    given ``ctx`` came from (``conn.ctx``), and raise ``ValueError`` without one.
    """

    def __init__(self, ext: Any, path: str, require_auth: bool = False,
                 require_roles: Sequence[str] = (), on_create: Optional[OnCreate] = None,
                 message_limits: Optional[Dict[str, int]] = None,
                 history_size: int = 0, history_ttl: float = 0,
                 presence: bool = False) -> None:
        self.path = validate_template(path)
        self.pattern: Optional[PathPattern] = PathPattern(path) if is_pattern(path) else None
        if isinstance(require_roles, str):
            require_roles = (require_roles,)
        self.require_roles: Tuple[str, ...] = tuple(require_roles)
        # Roles imply a login: nobody anonymous holds a role.
        self.require_auth = bool(require_auth or self.require_roles)
        if on_create is not None and not callable(on_create):
            raise TypeError("on_create must be callable(request, ctx)")
        self.on_create = on_create
        Limits.resolve(message_limits, 1, 1, 1)  # validate keys early, at declaration
        self.message_limits = dict(message_limits or {})
        if history_size < 0 or history_ttl < 0:
            raise ValueError("history_size and history_ttl must not be negative")
        self.history_size = int(history_size)
        self.history_ttl = float(history_ttl or (DEFAULT_TTL if history_size else 0))
        self.has_presence = bool(presence)
        self._ext = ext
        self.connect_handler: Optional[Handler] = None
        self.message_handler: Optional[Handler] = None
        self.type_handlers: Dict[str, Handler] = {}  # ``@ns.on(type)``
        self.disconnect_handler: Optional[Handler] = None

    def __repr__(self) -> str:
        return f"<NamespaceTemplate {self.path}>"

    @property
    def is_pattern(self) -> bool:
        return self.pattern is not None

    # Handlers: decorators that return the function; ``ns.on_message(fn)`` works too.
    def on_connect(self, fn: F) -> F:
        """Register ``fn(conn)``, called after the welcome frame."""
        self.connect_handler = fn
        return fn

    def on_message(self, fn: F) -> F:
        """Register ``fn(conn)``, called for each accepted message (``conn.message``)
        whose type has no handler of its own (:meth:`on`)."""
        self.message_handler = fn
        return fn

    def on(self, msg_type: str) -> Callable[[F], F]:
        """Register ``fn(conn)`` for the messages of one type; other types still go to
        :meth:`on_message`. Handlers of one connection run one at a time, in order::

            @chat.on("say")
            def say(conn):
                chat.broadcast({"type": "said", "data": conn.message["data"]}, conn.ctx)

        :raises ValueError: for a reserved type (``_`` first) or one already handled.
        """
        if not isinstance(msg_type, str) or not msg_type or msg_type.startswith("_"):
            raise ValueError(f"@on({msg_type!r}): a message type is a non-empty string; "
                             f"types starting with '_' are reserved for the protocol")

        def register(fn: F) -> F:
            if msg_type in self.type_handlers:
                raise ValueError(f"{self.path} already has a handler for {msg_type!r}")
            self.type_handlers[msg_type] = fn
            return fn

        return register

    def on_disconnect(self, fn: F) -> F:
        """Register ``fn(conn)``, called once after the connection has left."""
        self.disconnect_handler = fn
        return fn

    # Actions, resolved to the concrete namespace of the current app.
    def _concrete_path(self, ctx: Any) -> str:
        if self.pattern is None:
            return self.path
        path = getattr(ctx, "namespace", None) or (
            ctx.get("namespace") if isinstance(ctx, dict) else None)
        if not path:
            raise ValueError(f"{self.path} is a pattern: pass the ctx of a connection in "
                             f"the room (conn.ctx), or use ws.broadcast(concrete_path, ...)")
        return str(path)

    def broadcast(self, data: Dict[str, Any], ctx: Any = None) -> int:
        """Send ``{type, data}`` to every client of the namespace, on every process.

        :returns: how many local clients it was handed to.
        """
        return self._ext.broadcast(self._concrete_path(ctx), data, ctx)

    def send_to_client(self, client_id: str, data: Dict[str, Any], ctx: Any = None) -> bool:
        """Send to one client; True when it is connected to this process."""
        return self._ext.send_to_client(self._concrete_path(ctx), client_id, data, ctx)

    def request(self, client_id: str, data: Dict[str, Any], timeout: float = 30.0,
                ctx: Any = None) -> Dict[str, Any]:
        """Ask one client and wait for its reply (see :meth:`Namespace.request`)."""
        return self._ext.request(self._concrete_path(ctx), client_id, data, timeout, ctx)

    def get_stats(self, ctx: Any = None) -> Optional[Dict[str, Any]]:
        """Stats of the concrete namespace; ``None`` for a pattern without ``ctx``."""
        if self.pattern is not None and ctx is None:
            return None
        ns = self._ext.get_namespace(self._concrete_path(ctx))
        return ns.get_stats() if ns is not None else None

    def remove_if_empty(self, ctx: Any = None) -> bool:
        """Remove the concrete namespace if it has no clients; True when removed."""
        return bool(self._ext.remove_namespace(self._concrete_path(ctx), remove_if_empty=True))

    def presence(self, ctx: Any = None) -> List[Dict[str, Any]]:
        """Members of the concrete namespace across every process (``presence=True``)."""
        return self._ext._state().presence_of(self._concrete_path(ctx), stats=False)

    def presence_stats(self, ctx: Any = None) -> Dict[str, Any]:
        """``{"clients": n, "users": m}`` of the concrete namespace, every process."""
        return self._ext._state().presence_of(self._concrete_path(ctx), stats=True)


class Namespace:
    """A live namespace of one app: its clients, limits and stats."""

    def __init__(self, state: AppServices, template: NamespaceTemplate, path: str,
                 params: Dict[str, str]) -> None:
        self.state = state
        self.template = template
        self.path = path
        self.params = params
        self.dynamic = template.is_pattern
        self.clients: Dict[str, Connection] = {}
        s = state.settings
        self.limits = Limits.resolve(template.message_limits, s.max_message_size,
                                     s.rate_interval, s.rate_max_messages)
        self.limits_wire = self.limits.as_wire()
        self.stats = NamespaceStats(time.time())
        self.removed = False
        #: Handshakes between their lookup of this namespace and their join (or refusal):
        #: while any are, the namespace is not "empty", so neither evicted nor swept.
        self.joining = 0

    def __repr__(self) -> str:
        return f"<Namespace {self.path} clients={len(self.clients)}>"

    # --- bookkeeping shared by the pipeline and senders
    def wire_ctx(self, ctx: Any) -> Dict[str, Any]:
        return envelope.wire_ctx(ctx, self.state.settings.wire_ctx_fields)

    def drop(self, reason: str) -> None:
        self.stats.drop(reason)
        self.state.counters.drop(reason)

    def count_sent(self, deliveries: int, now: float) -> None:
        """Count deliveries without an activity-log entry (the dashboard's own pushes)."""
        self.stats.message(now, deliveries)
        self.state.counters.deliveries += deliveries

    def messages_per_second(self, now: float, seconds: int) -> List[int]:
        """Messages in each of the last ``seconds`` seconds, oldest first."""
        return self.stats.rate.per_second(now, seconds)

    def record_sent(self, msg_type: str, deliveries: int, username: str = "",
                    text: Union[None, str, bytes] = None) -> None:
        now = time.time()
        self.stats.message(now, deliveries)
        counters = self.state.counters
        counters.messages += 1
        counters.messages_out += 1
        counters.deliveries += deliveries
        self.state.activity.add(now, self.path, "sent", username, msg_type, text)

    # --- sending
    def deliver_frame(self, frame: bytes) -> int:
        """Hand one encoded frame to every local client; returns how many took it."""
        n = 0
        for conn in tuple(self.clients.values()):
            if conn.send_frame(frame, True):  # early: see Outbound.send
                n += 1
        return n

    def deliver_history(self, epoch: str, offset: int, frame: bytes) -> int:
        """Hand a frame with a history position to every local client, once each."""
        n = 0
        for conn in tuple(self.clients.values()):
            if conn.deliver_history_frame(epoch, offset, frame):
                n += 1
        return n

    def broadcast(self, data: Dict[str, Any], ctx: Any = None) -> int:
        """Send to every client of this path on every process; returns local count."""
        return self.state.fanout.broadcast(self.path, data, ctx)

    def send_to_client(self, client_id: str, data: Dict[str, Any], ctx: Any = None) -> bool:
        return self.state.fanout.send_to_client(self.path, client_id, data, ctx)

    def request(self, client_id: str, data: Dict[str, Any], timeout: float = 30.0,
                ctx: Any = None) -> Dict[str, Any]:
        """Ask one client, on whichever process holds it; returns its reply or an
        error dict (never raises).

        Codes: ``NOT_CONNECTED``, ``REQUEST_TIMEOUT``, ``CONNECTION_LOST``.
        """
        return self.state.fanout.request(self.path, client_id, data, timeout, ctx)

    def get_stats(self) -> Dict[str, Any]:
        s = self.state.settings
        users = {c.ctx.username for c in self.clients.values() if c.ctx.username}
        return self.stats.snapshot(time.time(), self.path, len(self.clients), len(users),
                                   self.limits_wire, s.status_warning, s.status_inactive)

    def remove_if_empty(self) -> bool:
        """Remove this namespace if it has no clients; True when it was removed."""
        return self.state.fanout.remove_namespace(self.path, remove_if_empty=True)

    def presence(self) -> List[Dict[str, Any]]:
        """Members on every process: ``clientId``, ``username``, ``connectedAt``, ``info``."""
        self._require_presence()
        return self.state.presence.members(self.path)

    def presence_stats(self) -> Dict[str, Any]:
        """``{"clients": n, "users": m}`` across every process (distinct usernames)."""
        self._require_presence()
        return self.state.presence.stats(self.path)

    def _require_presence(self) -> None:
        if not self.template.has_presence:
            raise ValueError(f"{self.path} has no presence: declare it with presence=True")

    # --- membership
    def add(self, conn: Connection) -> None:
        self.clients[conn.client_id] = conn
        self.state.registry.empty_since.pop(self.path, None)
        self.stats.connections += 1

    def discard(self, conn: Connection) -> bool:
        """Remove ``conn`` if it is still the holder of its id (a 4409 may have replaced it)."""
        if self.clients.get(conn.client_id) is conn:
            del self.clients[conn.client_id]
            if not self.clients and self.dynamic and not self.removed and not self.joining:
                self.state.registry.empty_since[self.path] = time.monotonic()
            return True
        return False

    def close_all(self, code: int, reason: str) -> None:
        for conn in tuple(self.clients.values()):
            conn.close(code, reason)


class Registry:
    """Templates and live namespaces of one app; path lookup and the namespace cap."""

    def __init__(self, state: AppServices) -> None:
        self.state = state
        self.literals: Dict[str, NamespaceTemplate] = {}
        self.patterns: List[NamespaceTemplate] = []
        self.live: Dict[str, Namespace] = {}
        #: Dynamic namespaces without clients -> since when (monotonic), oldest first.
        self.empty_since: Dict[str, float] = {}

    def add_template(self, template: NamespaceTemplate) -> None:
        if template.path in self.literals or any(p.path == template.path
                                                 for p in self.patterns):
            raise ValueError(f"Namespace {template.path} is already registered")
        if template.pattern is None:
            self.literals[template.path] = template
            self.live[template.path] = Namespace(self.state, template, template.path, {})
        else:
            self.patterns.append(template)

    def match_raw(self, raw_path: str) -> Optional[Tuple[NamespaceTemplate, str, Dict[str, str]]]:
        """(template, concrete decoded path, params) for a raw request path."""
        decoded = decode_path(raw_path)
        if decoded is not None and decoded in self.literals:
            return self.literals[decoded], decoded, {}
        for template in self.patterns:
            assert template.pattern is not None
            params = template.pattern.match(raw_path)
            if params is not None:
                return template, template.pattern.concrete(params), params
        return None

    def match_concrete(self, path: str) -> Optional[Tuple[NamespaceTemplate, Dict[str, str]]]:
        """Template for an already-decoded concrete path (server-side calls)."""
        if path in self.literals:
            return self.literals[path], {}
        for template in self.patterns:
            assert template.pattern is not None
            params = template.pattern.match(_encode_segments(path))
            if params is not None:
                return template, params
        return None

    def get_or_create(self, template: NamespaceTemplate, path: str,
                      params: Dict[str, str]) -> Optional[Namespace]:
        """The live namespace for ``path``; ``None`` when the cap is reached."""
        ns = self.live.get(path)
        if ns is not None:
            return ns
        if len(self.live) >= self.state.settings.max_namespaces:
            # The oldest empty room makes way at once, so a flood of room paths
            # cannot lock everyone out for the grace period.
            if not self.empty_since:
                return None
            self.remove(next(iter(self.empty_since)))
        ns = Namespace(self.state, template, path, params)
        self.live[path] = ns
        self.empty_since[path] = time.monotonic()  # until its first client arrives
        return ns

    def begin_join(self, ns: Namespace) -> None:
        """A handshake is joining ``ns`` (it may wait on Redis before it is added): until
        :meth:`end_join`, ``ns`` is neither evicted at the cap nor swept, so no socket
        joins a namespace that nobody can reach."""
        ns.joining += 1
        self.empty_since.pop(ns.path, None)

    def end_join(self, ns: Namespace) -> None:
        """That handshake has ended (joined or refused): an empty room counts as empty
        again from now."""
        ns.joining -= 1
        if not ns.joining and not ns.clients and ns.dynamic and not ns.removed and \
                self.live.get(ns.path) is ns:
            self.empty_since[ns.path] = time.monotonic()

    def remove(self, path: str) -> Optional[Namespace]:
        self.empty_since.pop(path, None)
        ns = self.live.pop(path, None)
        if ns is not None:
            ns.removed = True
        return ns

    def sweep_empty(self, now_mono: float, grace: float) -> List[str]:
        """Remove dynamic namespaces that have been empty for ``grace`` seconds."""
        gone = []
        for path, since in self.empty_since.items():  # oldest first
            if now_mono - since < grace:
                break
            gone.append(path)
        for path in gone:
            self.remove(path)
        return gone

    def connections(self) -> Iterable[Connection]:
        for ns in tuple(self.live.values()):
            yield from tuple(ns.clients.values())


def _encode_segments(path: str) -> str:
    # A decoded concrete path back to raw form, segment by segment, for pattern matching.
    return "/".join(quote(seg, safe="!$&'()*+,;=:@~-._") for seg in path.split("/"))


def close_code_for(result: Any) -> Optional[int]:
    """What an ``on_create`` result means: None accept; else the close code."""
    if result is None:
        return CloseCode.NOT_FOUND
    if isinstance(result, bool) or not isinstance(result, int):
        return None
    return result if 4000 <= result <= 4999 else CloseCode.SERVER_ERROR


