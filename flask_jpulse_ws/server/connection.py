"""One accepted WebSocket as the app sees it: handler inbox, close handshake, reader.

Writing to the socket is :class:`~.outbound.Outbound`'s job; the connection decides
what to send and when to close. It needs no app to run: give it a socket, its
namespace, the settings and a drop counter, and it works over ``socket.socketpair()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple, Union

from .. import concurrency
from ..context import Context
from ..core import envelope, frames
from ..core.limits import AbuseCounter, PingBudget, RateWindow
from ..errors import CloseCode, ErrorCode
from .outbound import Outbound

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from .namespace import Namespace

__all__ = ["Connection"]

log = logging.getLogger("flask_jpulse_ws")

_NO_LOCK = contextlib.nullcontext()
_PING = frames.encode_frame(frames.OP_PING, b"")


def _ignore(conn: Connection, payload: bytes) -> None:
    """Message sink until ``run()`` installs the pipeline."""


def _no_recv() -> bytes:
    return b""


_RECV_BYTES = 65536
#: Seconds a failing connection waits for the handlers of the messages that came before
#: the bad frame (their replies go out before the close frame).
_FAIL_AFTER_HANDLERS = 2.0
#: History frames buffered for one connection while its replay is read.
_HOLD_MAX = 10000
#: Bytes of JSON an app may attach to a presence member.
_PRESENCE_INFO_MAX = 1024
#: Seconds the handler task waits for the next message before it ends.
_HANDLER_LINGER = 2.0
#: States of the handler task.
_NO_HANDLER, _RUNNING, _LINGERING = object(), object(), object()
#: A stand-in reader's end: reading goes back to the connection's own task, or is over.
_READER_BACK, _READER_DONE = object(), object()
#: Messages waiting for a busy handler before the reader stops reading.
_INBOX_MAX = 64


class Connection:
    """A client connection, as handlers see it (``conn``).

    :ivar client_id: the connection's id in its namespace (a UUID string).
    :ivar ctx: the :class:`Context` snapshot taken at the handshake.
    :ivar namespace: the concrete :class:`Namespace` the connection is in.
    :ivar message: the message being handled (``on_message`` only).
    """

    def __init__(self, sock: Any, namespace: Namespace, client_id: str, ctx: Context,
                 identity: tuple = (), session_token: Optional[str] = None, *,
                 settings: Optional[Settings] = None,
                 on_drop: Optional[Callable[[str], None]] = None,
                 upgrade: bytes = b"") -> None:
        """Take over an upgraded socket; nothing is read before :meth:`run`.

        :param settings: bounds and timers (queue, frame size, close timeout, pings,
            abuse); the namespace's app settings by default.
        :param on_drop: counts a connection cut for a reason (``"slowConsumer"``,
            ``"oversize"``, ``"invalid"``); ``namespace.drop`` by default.
        :param upgrade: the HTTP 101 answer not written yet: it goes out first, with the
            welcome (see ``Outbound``).
        """
        if settings is None:
            settings = namespace.state.settings
        self._settings = settings
        self._on_drop = namespace.drop if on_drop is None else on_drop
        self.sock = sock
        self.namespace = namespace
        self.client_id = client_id
        self.ctx = ctx
        self.identity = identity
        self.session_token = session_token
        self.message: Optional[Dict[str, Any]] = None
        self.connected_at = time.time()
        self.open = True
        self.presence_info: Dict[str, Any] = {}
        self.id_claim: Optional[str] = None  # cluster-wide claim on the id (id_claims)
        self.id_claimed_at = 0.0
        self.needs_claim = False  # admitted unclaimed (Redis away or slow): claim later
        self.following = False  # counted in its namespace's interest (backend.follow)
        self._out = Outbound(sock, settings.max_queue_bytes, settings.close_timeout,
                             self._on_drop, f"{client_id} on {namespace.path}", upgrade)
        #: Hand one encoded frame to the socket, never waiting: ``send_frame(frame,
        #: early=False)``, False once the connection takes no more data. The outbound's own
        #: method, so a broadcast to thousands of sockets pays no call in between.
        self.send_frame = self._out.send
        # Guards the handler inbox under threads; gevent cannot switch in between.
        self._lock: Any = _NO_LOCK if concurrency.using_gevent() else concurrency.Lock()
        # Health: the scheduler pings when due and cuts a peer whose pong is late.
        self.ping_sent_at: Optional[float] = None
        self.next_ping_at = concurrency.monotonic() + settings.ping_interval
        # Limits and request/reply state, created on first use to keep idle sockets small.
        self._rate: Optional[RateWindow] = None
        self._abuse: Optional[AbuseCounter] = None
        self._pings: Optional[PingBudget] = None
        self._pending: Optional[Dict[str, concurrency.AsyncResult]] = None
        self._request_id: Optional[str] = None
        self._replied = False
        # History: the last position sent, and frames held during a replay.
        self.history_position: Tuple[str, int] = ("", 0)
        self._held: Optional[List[Tuple[str, int, bytes]]] = None
        # Reader state, and the inbox of messages waiting for the app handler.
        self._decoder = frames.FrameDecoder(settings.max_frame_size,
                                            max_fragments=settings.max_fragments)
        self._on_message: Callable[[Connection, bytes], None] = _ignore
        self._on_binary: Callable[[Connection, bytes], None] = _ignore
        self._inbox: Deque[Any] = deque()
        self._handler: object = _NO_HANDLER
        self._wake = concurrency.Event()
        self._idle = concurrency.Event()
        self._idle.set()
        self._inbox_space = concurrency.Event()
        self._inbox_space.set()
        # Handlers inline (gevent): run in the reader when a read brings one message and
        # no handler is busy. ``_inline_ok`` is set per read; ``_stand_in`` is the task
        # that reads while an inline handler waits (then _READER_BACK or _READER_DONE).
        self._can_inline = concurrency.using_gevent()
        self._inline_ok = False
        self._stand_in: Any = None
        self._recv: Callable[[], Optional[bytes]] = _no_recv
        self._run_handler: Any = None
        self._handler_vars: Optional[contextvars.Context] = None
        #: The Flask app context the handlers run in (pipeline), pushed in _handler_vars.
        self.handler_app_ctx: Any = None

    def __repr__(self) -> str:
        return f"<Connection {self.client_id} {self.namespace.path} {self.ctx.username!r}>"

    # ------------------------------------------------------------------ sending

    def send(self, data: Dict[str, Any], ctx: Any = None) -> bool:
        """Send ``{type, data}`` to this client only (``ctx=None``: system)."""
        return self.namespace.send_to_client(self.client_id, data, ctx)

    # ---------------------------------------------------------------- history

    def hold(self) -> None:
        """Buffer history frames while a replay is read (see :meth:`release`)."""
        self._held = []

    def release(self, position: Optional[Tuple[str, int]]) -> None:
        """Send what was buffered, skipping what the client already has."""
        held, self._held = self._held or [], None
        if position is not None:
            self.history_position = position
        for epoch, offset, frame in held:
            self.deliver_history_frame(epoch, offset, frame)

    def deliver_history_frame(self, epoch: str, offset: int, frame: bytes) -> bool:
        """Send a frame with a position once: never one the client already has."""
        held = self._held
        if held is not None:
            if len(held) >= _HOLD_MAX:
                self.close(CloseCode.SLOW_CONSUMER, "Too many messages during recovery")
                return False
            held.append((epoch, offset, frame))
            return True
        last_epoch, last_offset = self.history_position
        if epoch == last_epoch and offset <= last_offset:
            return False  # a replay already carried it
        self.history_position = (epoch, offset)
        return self.send_frame(frame)

    def set_presence_info(self, info: Dict[str, Any]) -> None:
        """App fields shown with this member in ``presence()`` (JSON, at most 1 KiB).

        :raises ValueError: when the info is not a dict or too large.
        """
        if not isinstance(info, dict):
            raise ValueError("presence info must be a dict")
        if len(envelope.encode_json(info)) > _PRESENCE_INFO_MAX:
            raise ValueError(f"presence info is larger than {_PRESENCE_INFO_MAX} bytes")
        self.presence_info = dict(info)
        if self.namespace.template.has_presence and self.open:
            self.namespace.state.presence.updated(self)

    def send_raw_json(self, payload: bytes) -> bool:
        """Send already-encoded JSON bytes as one text frame."""
        return self.send_frame(frames.text_frame(payload))

    # ------------------------------------------------------------- replies

    def reply(self, data: Any) -> bool:
        """Answer the message being handled, once: ``{success, data, requestId}``."""
        if self._replied or not self.open:
            return False
        self._replied = True
        ok = self.send_raw_json(envelope.encode_reply(data, self._request_id))
        if ok:
            self.namespace.record_sent("reply", 1, self.ctx.username)
        return ok

    def reply_error(self, error: str, code: Union[int, str] = 500, details: Any = None) -> bool:
        """Answer the message being handled with an error frame, once."""
        if self._replied or not self.open:
            return False
        self._replied = True
        return self.send_raw_json(envelope.encode_error(error, code, details, self._request_id))

    def request(self, data: Dict[str, Any], timeout: float = 30.0, ctx: Any = None
                ) -> Dict[str, Any]:
        """Ask this client and wait (this greenlet only) for its reply frame.

        Always returns a dict: the reply, or an error with ``REQUEST_TIMEOUT``,
        ``NOT_CONNECTED`` or ``CONNECTION_LOST``.
        """
        if not self.open:
            return {"success": False, "error": "Client not connected",
                    "code": ErrorCode.NOT_CONNECTED}
        rid = str(uuid.uuid4())
        waiter = concurrency.AsyncResult()
        if self._pending is None:
            self._pending = {}
        self._pending[rid] = waiter
        wire = self.namespace.wire_ctx(ctx)
        if not self.send_raw_json(envelope.encode_success(data, wire, {"requestId": rid})):
            self._pending.pop(rid, None)
            return {"success": False, "error": "Client not connected",
                    "code": ErrorCode.NOT_CONNECTED, "requestId": rid}
        self.namespace.record_sent(data.get("type", ""), 1, self.ctx.username)
        if not waiter.wait(timeout):
            self._pending.pop(rid, None)
            return {"success": False, "error": f"No reply within {timeout} s",
                    "code": ErrorCode.REQUEST_TIMEOUT, "requestId": rid}
        return waiter.value  # type: ignore[no-any-return]

    def resolve_request(self, rid: str, message: Dict[str, Any]) -> bool:
        """Deliver a client's reply to the server request waiting on ``rid``."""
        waiter = self._pending.pop(rid, None) if self._pending else None
        if waiter is None:
            return False
        if message.get("success") is False:
            result = {"success": False, "error": str(message.get("error") or "Error"),
                      "code": message.get("code", "ERROR"), "requestId": rid}
            if "details" in message:
                result["details"] = message["details"]
        else:
            message["username"] = self.ctx.username
            result = {"success": True, "data": message, "requestId": rid}
        waiter.set(result)
        return True

    @property
    def awaits_answers(self) -> bool:
        """Whether a server request (:meth:`request`) waits for this client's answer."""
        return bool(self._pending)

    def begin_message(self, message: Dict[str, Any], request_id: Optional[str]) -> None:
        self.message = message
        self._request_id = request_id
        self._replied = False

    @property
    def replied(self) -> bool:
        return self._replied

    # ---------------------------------------------------------------- limits

    def rate(self) -> RateWindow:
        if self._rate is None:
            self._rate = RateWindow(self.namespace.limits)
        return self._rate

    def ping_allowed(self, now: float) -> bool:
        """A protocol ping or a ``_ping`` within the budget; past it, not answered, and
        counted as a dropped message and as abuse (1008 at the threshold)."""
        if self._pings is None:
            self._pings = PingBudget()
        if self._pings.allow(now):
            return True
        self._on_drop("rateLimit")
        if self.abuse(now):
            self.close(CloseCode.POLICY_VIOLATION, "Too many pings")
        return False

    def abuse(self, now: float) -> bool:
        """Count a violation; True once the connection should be closed 1008."""
        if self._abuse is None:
            s = self._settings
            self._abuse = AbuseCounter(s.abuse_threshold, s.abuse_window)
        return self._abuse.hit(now)

    # ----------------------------------------------------------------- close

    @property
    def close_code(self) -> Optional[int]:
        """The code of the first close frame: ours, or the peer's."""
        return self._out.close_code

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the close handshake; the socket is cut if the peer does not answer."""
        self._out.close(code, reason)

    def expire(self) -> None:
        """Tell the client its session is over, then close 4401 (logout, re-validation)."""
        self.send_raw_json(envelope.encode_error("Session expired", ErrorCode.SESSION_EXPIRED))
        self.close(CloseCode.UNAUTHORIZED, "Session expired")

    def take_upgrade(self) -> bytes:
        """The HTTP 101 if it is still unwritten, for a close written by the handshake."""
        return self._out.take_upgrade()

    def terminate(self, code: Optional[int] = CloseCode.SERVER_ERROR, reason: str = "") -> None:
        """Best-effort close frame (none for ``code=None``), then cut the TCP connection."""
        self._out.terminate(code, reason)

    def send_ping(self, now: float) -> None:
        self.ping_sent_at = now
        self.send_frame(_PING)

    def _peer_closed(self, body: bytes) -> None:
        try:
            code, _ = frames.parse_close(body)
            echo = 1000 if code == 1005 else code  # 1005 means "no code": answer 1000
        except frames.ProtocolError as exc:
            code, echo = exc.code, exc.code
        self._out.answer_close(code, echo)

    def _drain_until_closed(self) -> None:
        """After failing the connection (our close frame is out or queued): read on until
        the peer's close frame, then end at once (the close handshake is done), or until
        the close timeout cuts the socket. The decoder skims from the bad frame on by
        frame lengths, so a close sent in pieces, or after the rest of the bad frame,
        is found all the same."""
        try:
            while True:
                data = self.sock.recv(_RECV_BYTES)
                if not data:
                    return
                body = self._decoder.skim(data)
                if body is not None:
                    self._peer_closed(body)
                    return
        except OSError:
            pass

    # ----------------------------------------------------------------- inbound

    def run(self, on_message: Callable[[Connection, bytes], None],
            on_binary: Optional[Callable[[Connection, bytes], None]] = None) -> None:
        """Read until the connection ends, passing each message to ``on_message``.

        ``on_message`` runs here, in the reader: it does the cheap pipeline steps
        (limits, parsing, ``_ping``, replies to server requests) and hands app
        messages to :meth:`enqueue`, so a slow handler never delays a pong.

        :param on_binary: takes binary messages when given (the conformance harness's
            echo needs the opcode); by default they go to ``on_message`` too.
        """
        self._on_message = on_message
        self._on_binary = on_message if on_binary is None else on_binary
        self._recv = concurrency.receiver(self.sock, _RECV_BYTES)
        try:
            self._read(stand_in=False)
        finally:
            self.open = False
            self._out.finish()  # the server closes the socket when we return
            self._fail_pending()
            self._wake.set()  # a lingering handler task ends now

    def _read(self, stand_in: bool) -> bool:
        """Read and act on what arrives. False once the connection is over; True when a
        stand-in hands reading back to the connection's own task (:meth:`blocked`)."""
        recv = (concurrency.receiver(self.sock, _RECV_BYTES, idle=_HANDLER_LINGER)
                if stand_in else self._recv)
        try:
            while True:
                data = recv()
                if data is None:  # the stand-in read nothing for a while
                    if self._handler is _LINGERING and not self._inbox:
                        return True  # and the handler is free: no task stays for it
                    continue
                if not data or not self._process(data, inline=not stand_in):
                    return False
                if stand_in:
                    if self._handler is _RUNNING:
                        concurrency.sleep(0)  # let the handler run what was just queued
                    if self._handler is _LINGERING and not self._inbox:
                        return True  # the handler is free again: it reads on itself
                elif self._stand_in is not None and not self._serve_stand_in():
                    return False
        except OSError:
            return False

    def _process(self, data: bytes, inline: bool = False) -> bool:
        """Decode received bytes and act on them; False once the connection is over.

        :param inline: a lone app message may run its handler right here.
        """
        try:
            events = self._decoder.feed(data)
        except frames.ProtocolError as exc:
            self._inline_ok = False
            # What came whole before the bad frame is handled first, replies included
            # (RFC 6455: the connection fails at the bad frame, not before it).
            if self._handle(exc.events):
                if exc.events:
                    self.wait_handlers(_FAIL_AFTER_HANDLERS)
                self._on_drop("oversize" if exc.code == CloseCode.TOO_BIG else "invalid")
                if exc.opcode == frames.OP_CLOSE:
                    # The bad frame was the peer's close: it sends no other, so ours ends
                    # the closing handshake and TCP goes once it is written.
                    self._out.answer_close(exc.code, exc.code)
                else:
                    self.close(exc.code, exc.reason)
                    self._drain_until_closed()
            return False
        # One message in this read: its handler may run inline (nothing after it waits).
        self._inline_ok = inline and self._can_inline and len(events) == 1
        return self._handle(events)

    def _handle(self, events: List[Tuple[int, bytes]]) -> bool:
        """Act on decoded events; False once the peer's close frame came."""
        for opcode, payload in events:
            if opcode == frames.OP_TEXT:
                if not self._out.closed:  # after our close frame, data is ignored
                    self._on_message(self, payload)
            elif opcode == frames.OP_BINARY:
                if not self._out.closed:
                    self._on_binary(self, payload)
            elif opcode == frames.OP_PONG:
                self.ping_sent_at = None
            elif opcode == frames.OP_PING:
                if self.ping_allowed(concurrency.monotonic()):
                    self.send_frame(frames.encode_frame(frames.OP_PONG, payload))
            elif opcode == frames.OP_CLOSE:
                self._peer_closed(payload)
                return False
        return True

    # ------------------------------------------------------------- handlers

    def enqueue(self, message: Dict[str, Any], request_id: Optional[str],
                run: Callable[[Connection, Dict[str, Any], Optional[str]], None]) -> None:
        """Queue an accepted message for the app handler; messages run in order.

        The handler task exists only while messages flow: it lingers a moment
        after the inbox empties (waking it is half the cost of a new greenlet),
        then ends, so idle sockets hold no greenlet for it. A full inbox makes
        the reader wait, which pushes back on the client through TCP instead of
        growing memory.

        Under gevent, a message that came alone while no handler is busy skips the
        inbox: its handler runs in the reader (:meth:`_handle_inline`).
        """
        inline, self._inline_ok = self._inline_ok, False
        if inline and self._handler is _NO_HANDLER:
            self._handle_inline(message, request_id, run)
            return
        with self._lock:
            self._inbox.append((message, request_id))
            handler, self._handler = self._handler, _RUNNING
        if handler is _NO_HANDLER:
            self._idle.clear()
            concurrency.spawn(self._handle_inbox, run)
        elif handler is _LINGERING:
            self._idle.clear()
            self._wake.set()
        if len(self._inbox) >= _INBOX_MAX:
            self._inbox_space.clear()
            if len(self._inbox) >= _INBOX_MAX:
                self._inbox_space.wait()

    def _handle_inbox(self, run: Callable[[Connection, Dict[str, Any], Optional[str]], None]
                      ) -> None:
        while True:
            with self._lock:
                if self._inbox:
                    message, request_id = self._inbox.popleft()
                else:
                    message = None
                    self._handler = _LINGERING if self.open else _NO_HANDLER
                    self._wake.clear()
            if message is not None:
                self._inbox_space.set()
                self._run_apart(run, message, request_id)
                continue
            self._inbox_space.set()
            self._idle.set()
            if self.open:
                self._wake.wait(_HANDLER_LINGER)
            with self._lock:
                if self._inbox:
                    self._handler = _RUNNING
                    continue
                self._handler = _NO_HANDLER
                return

    def _handle_inline(self, message: Dict[str, Any], request_id: Optional[str],
                       run: Callable[[Connection, Dict[str, Any], Optional[str]], None]
                       ) -> None:
        """Run the handler here, in the reader: no task to wake, no switch. Most handlers
        end without waiting; one that waits (a database, ``conn.request()``) gets a
        stand-in reader within one turn of the loop (:meth:`blocked`), so pongs and
        rejections never wait for it."""
        self._handler = _RUNNING
        self._run_handler = run
        concurrency.watch_blocking(self)
        try:
            self._run_apart(run, message, request_id)
        finally:
            concurrency.unwatch_blocking(self)
            if self._stand_in is None:
                self._handler = _NO_HANDLER
            # else: _read goes on in _serve_stand_in, as the stand-in's handler task

    def _run_apart(self, run: Callable[[Connection, Dict[str, Any], Optional[str]], None],
                   message: Dict[str, Any], request_id: Optional[str]) -> None:
        """Run a handler with the connection's own context variables, wherever it runs
        (the reader, a handler task or thread): the app context stays there from one
        message to the next (pipeline), and the reader's variables, which hold the
        upgrade request (``flask.request``, ``current_user``), are never seen by a
        handler. Handlers of one connection never run at once, so one is enough."""
        if self._handler_vars is None:
            self._handler_vars = contextvars.Context()
        self._handler_vars.run(run, self, message, request_id)

    def end_handlers(self) -> None:
        """Pop the handlers' app context once none runs any more (before
        ``on_disconnect``): its teardown functions run, and the context, its token and
        the variables that hold it are freed at once, not left as a cycle for the
        garbage collector."""
        app_ctx, self.handler_app_ctx = self.handler_app_ctx, None
        if app_ctx is not None and self._handler_vars is not None and self._idle.is_set():
            try:
                self._handler_vars.run(app_ctx.pop, None)
            except (RuntimeError, AssertionError):  # a handler still runs in it, or left
                # a context of its own pushed: the garbage collector frees it then
                pass

    def blocked(self) -> None:
        """The handler running inline waits (called from the loop): read on in a
        stand-in task meanwhile; what it reads queues up behind that handler."""
        if self.open and self._stand_in is None:
            self._idle.clear()
            self._stand_in = concurrency.spawn(self._read_for_blocked_handler)

    def _read_for_blocked_handler(self) -> None:
        over = True
        try:
            over = not self._read(stand_in=True)
        finally:
            if over:
                self.open = False  # as the reader's own end does: handlers see it at once
                self._fail_pending()  # a handler waiting in request() hears it now
            self._stand_in = _READER_DONE if over else _READER_BACK
            self._wake.set()

    def _serve_stand_in(self) -> bool:
        """The reader's own task, its inline handler done while a stand-in reads: handle
        what the stand-in queues, in order, until it hands reading back (True) or the
        connection is over (False)."""
        run = self._run_handler
        while True:
            if self._inbox:
                message, request_id = self._inbox.popleft()
                self._inbox_space.set()
                self._handler = _RUNNING
                self._run_apart(run, message, request_id)
                continue
            ended = self._stand_in
            if ended is _READER_BACK or ended is _READER_DONE:
                self._stand_in = None
                self._handler = _NO_HANDLER
                self._idle.set()
                return ended is _READER_BACK
            self._handler = _LINGERING  # enqueue() wakes us; the stand-in may hand back
            self._idle.set()
            self._wake.clear()
            self._wake.wait()

    def wait_handlers(self, timeout: float) -> bool:
        """Wait until queued messages have been handled (before ``on_disconnect``)."""
        return bool(self._idle.wait(timeout))

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, None
        for rid, waiter in (pending or {}).items():
            waiter.set({"success": False, "error": "Connection lost",
                        "code": ErrorCode.CONNECTION_LOST, "requestId": rid})
