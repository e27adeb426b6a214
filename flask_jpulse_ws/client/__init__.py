"""The Python client: the browser client's semantics for scripts, workers and tests.

One reader (a thread, or a greenlet when ``socket`` is monkey-patched by gevent)
per connection does everything that is not a call from the application: the
handshake, reading frames, the ``_ping``/``_pong`` heartbeat, the backoff between
attempts. Writes from any thread go through one lock and ``sendall``, so frames
never interleave. ``wss://`` runs TLS in memory (``_tls.py``), so the reader and the
writers never share an OpenSSL call. Statuses and close codes follow protocol.md
sections 3 and 6::

    from flask_jpulse_ws.client import connect

    chat = connect("ws://127.0.0.1:5000/api/1/ws/chat", cookies={"session": "..."})
    chat.on_status_change(lambda new, old: print(old, "->", new))
    chat.on_message(lambda frame: print(frame["data"]))
    chat.wait_connected(5)
    chat.send({"type": "say", "text": "hi"})            # True / False
    reply = chat.request({"type": "get-state"})         # never raises
    chat.disconnect()
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

from .. import concurrency
from ..core import frames
from ._tls import TLSSocket

__all__ = [
    "connect", "get_connections", "WSClient", "close_action", "apply_presence",
    "CONNECTING", "CONNECTED", "RECONNECTING", "DISCONNECTED", "AUTH_REQUIRED",
]

log = logging.getLogger("flask_jpulse_ws.client")

CONNECTING = "connecting"
CONNECTED = "connected"
RECONNECTING = "reconnecting"
DISCONNECTED = "disconnected"
AUTH_REQUIRED = "auth-required"

#: Delays land in (0.8 d, d]: clients dropped together come back spread out, never later
#: than the documented backoff (the browser client's rule).
JITTER = 0.2
#: A handshake that has not produced the welcome within max(this, ping + pong) fails.
HANDSHAKE_FLOOR = 10.0
#: Timed-out request ids remembered, so a late reply is dropped, not taken for a request.
EXPIRED_MEMORY = 64
#: Largest inbound message; the server's own frame cap is 1 MiB by default.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: Fragments one inbound message may have (each costs a header's work whatever it carries).
MAX_FRAGMENTS = frames.MAX_FRAGMENTS
#: Seconds the client waits for the server to close TCP after the closing handshake.
CLOSE_TIMEOUT = 2.0
#: Identifies this client in server logs; also half of the anonymous identity (IP, UA).
USER_AGENT = "flask-jpulse-ws-python"

StatusCallback = Callable[[str, str], Any]
MessageCallback = Callable[[Dict[str, Any]], Any]
ResyncCallback = Callable[[Dict[str, Any]], Any]
PresenceCallback = Callable[[Dict[str, Any]], Any]

_registry: List[WSClient] = []
_registry_lock = concurrency.Lock()


def close_action(code: int) -> str:
    """What a close code asks of the client (protocol.md section 3).

    ``auth`` (stop, auth-required), ``replaced`` (new id, reconnect now), ``full``
    (backoff at the maximum delay), ``stop`` (disconnected) or ``retry`` (backoff).
    """
    if code in (4401, 4403):
        return "auth"
    if code == 4409:
        return "replaced"
    if code == 4529:
        return "full"
    if 4000 <= code <= 4499:
        return "stop"  # 4404 and application refusals
    return "retry"  # 1000/1005 we did not ask for, 1001, 1006, 1008, 1009, 1011, 4503, 45xx


def _failure(code: str, error: str, **extra: Any) -> Dict[str, Any]:
    return {"success": False, "code": code, "error": error, **extra}


def _members_of(value: Any) -> List[Dict[str, Any]]:
    return [m for m in value if isinstance(m, dict) and isinstance(m.get("clientId"), str)] \
        if isinstance(value, list) else []


def apply_presence(members: Dict[str, Dict[str, Any]], batch: Mapping[str, Any]) -> None:
    """Apply a ``_presence`` batch to a member map (client id -> member): ``left``, then
    ``joined``, then ``updated``. The map keeps the newest connection of a client id, and
    a ``left`` removes only the very connection that left (the browser client's rule)."""
    for m in _members_of(batch.get("left")):
        held = members.get(m["clientId"])
        if held is not None and held.get("connectedAt") == m.get("connectedAt"):
            del members[m["clientId"]]
    for m in _members_of(batch.get("joined")) + _members_of(batch.get("updated")):
        held = members.get(m["clientId"])
        if held is None or not str(held.get("connectedAt")) > str(m.get("connectedAt")):
            members[m["clientId"]] = m


def _frame_type(frame: Dict[str, Any]) -> Any:
    data = frame.get("data") if frame.get("success") is True else None
    return data.get("type") if isinstance(data, dict) else None


class _SocketEndedError(Exception):
    """The current socket is over; ``code`` decides what happens next."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class WSClient:
    """One logical connection to a namespace, reconnecting as the browser client does.

    Create it with :func:`connect`. Callbacks run on the reader thread/greenlet: keep them
    short, and do not call :meth:`request` from one (its reply is read by that same
    reader); :meth:`send` and :meth:`reply` are fine anywhere.
    """

    #: Fragments one message may have (the conformance harness raises it for 9.x).
    _max_fragments = MAX_FRAGMENTS

    def __init__(self, url: str, *, headers: Optional[Mapping[str, str]] = None,
                 cookies: Optional[Union[Mapping[str, str], str]] = None,
                 reconnect_base_interval: float = 5.0, reconnect_max_interval: float = 30.0,
                 max_reconnect_attempts: int = 10, ping_interval: float = 30.0,
                 pong_timeout: float = 5.0, request_timeout: float = 10.0,
                 client_id: Optional[str] = None, resume_token: Optional[str] = None,
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"connect() takes a ws:// or wss:// URL, got {url!r}")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError("ssl_context must be an ssl.SSLContext")
        self.url = url
        self._parts = parts
        self._ssl_context = ssl_context  # None: the default, made on first use
        self._headers = dict(headers or {})
        if cookies:
            cookie = cookies if isinstance(cookies, str) else "; ".join(
                f"{k}={v}" for k, v in cookies.items())
            self._headers["Cookie"] = cookie
        self._headers.setdefault("User-Agent", USER_AGENT)
        self.reconnect_base_interval = reconnect_base_interval
        self.reconnect_max_interval = reconnect_max_interval
        self.max_reconnect_attempts = max_reconnect_attempts
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.request_timeout = request_timeout
        self._client_id = client_id or str(uuid.uuid4())
        # The secret that keeps the id across sockets (the welcome's ``resumeToken``).
        self._resume_token = resume_token if client_id else None
        self._limits: Optional[Dict[str, Any]] = None
        self._status = CONNECTING  # set before any callback exists, so never announced
        self._message_callbacks: List[MessageCallback] = []
        self._status_callbacks: List[StatusCallback] = []
        self._resync_callbacks: List[ResyncCallback] = []
        self._presence_callbacks: List[PresenceCallback] = []
        # Presence: the member map, loaded after each welcome that announces presence;
        # batches arriving while it loads wait in the buffer (all on the reader).
        self._members: Dict[str, Dict[str, Any]] = {}
        self._presence_rid: Optional[str] = None
        self._presence_buffer: List[Dict[str, Any]] = []
        self._presence_on = False
        self._pending: Dict[str, concurrency.AsyncResult] = {}
        self._expired: Dict[str, None] = {}  # insertion-ordered set
        self._lock = concurrency.Lock()  # state: status, socket, generation, pending
        self._write_lock = concurrency.Lock()  # one frame on the wire at a time
        self._generation = 0  # bumped by disconnect()/reconnect(): older readers stop
        self._wake = concurrency.Event()  # cuts a backoff wait short
        self._sock: Any = None
        self._writer: Any = None
        self._attempts = 0
        self._welcomed_before = False
        self._welcomed_this_socket = False
        self._resync_reason: Optional[str] = None
        self._connected_event = concurrency.Event()
        # Missed-message recovery: the (epoch, offset) of the last frame delivered here.
        self._resume: Optional[Tuple[str, int]] = None
        self._welcome_position: Optional[Tuple[str, int]] = None
        self._sent_since = False

    # ------------------------------------------------------------------ callbacks
    def on_message(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(frame)`` for each app frame (also usable as a decorator)."""
        self._message_callbacks.append(self._check_callable(callback))
        return callback

    def on_status_change(self, callback: StatusCallback) -> StatusCallback:
        """Call ``callback(new_status, old_status)`` on every status change."""
        self._status_callbacks.append(self._check_callable(callback))
        return callback

    def on_resync(self, callback: ResyncCallback) -> ResyncCallback:
        """Call ``callback({"reason": r})`` after a reconnect and on ``_resync``."""
        self._resync_callbacks.append(self._check_callable(callback))
        return callback

    def on_presence(self, callback: PresenceCallback) -> PresenceCallback:
        """Call ``callback({"joined", "left", "updated", "members"})`` for each presence
        batch (``members``: the local map after it), and with ``"snapshot": True`` when
        the member list was (re)loaded after a welcome or a resync."""
        self._presence_callbacks.append(self._check_callable(callback))
        return callback

    @staticmethod
    def _check_callable(callback: Any) -> Any:
        if not callable(callback):
            raise TypeError("flask_jpulse_ws.client: callback must be callable")
        return callback

    @staticmethod
    def _call_each(callbacks: List[Any], *args: Any) -> None:
        for cb in list(callbacks):
            try:
                cb(*args)
            except Exception:  # one broken callback must not starve the others
                log.exception("flask_jpulse_ws.client callback %r failed", cb)

    # ------------------------------------------------------------------ state
    def get_status(self) -> str:
        return self._status

    def is_connected(self) -> bool:
        return self._status == CONNECTED

    def get_client_id(self) -> str:
        """The id this connection uses; after a welcome, the one the server confirmed."""
        return self._client_id

    def get_resume_token(self) -> Optional[str]:
        """The secret that lets a later connection keep :meth:`get_client_id` (from the
        last welcome): pass both to :func:`connect` (``client_id=``, ``resume_token=``)
        to come back as the same client. Keep it as private as a session cookie."""
        return self._resume_token

    def get_presence(self) -> List[Dict[str, Any]]:
        """The members of a presence namespace as this client knows them (kept in step)."""
        with self._lock:
            return list(self._members.values())

    def get_limits(self) -> Optional[Dict[str, Any]]:
        """The welcome's ``limits`` (``maxSize``, ``interval``, ``maxMessages``)."""
        return self._limits

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Block until the status is ``connected``; False after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_connected():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._connected_event.wait(0.05 if remaining is None else min(remaining, 0.05))
        return True

    def _set_status(self, new: str, generation: int) -> bool:
        with self._lock:
            if generation != self._generation or new == self._status:
                return generation == self._generation
            old, self._status = self._status, new
        if new == CONNECTED:
            self._connected_event.set()
        else:
            self._connected_event.clear()
        self._call_each(self._status_callbacks, new, old)
        return True

    def _end(self, status: str, generation: int) -> None:
        """Stop for good (until reconnect()): a dead handle leaves the registry."""
        if generation != self._generation:
            return
        self._unregister()  # first, so a status callback can connect() afresh
        self._set_status(status, generation)

    def _register(self) -> None:
        with _registry_lock:
            if self not in _registry:
                _registry.append(self)

    def _unregister(self) -> None:
        with _registry_lock:
            if self in _registry:
                _registry.remove(self)

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> WSClient:
        self._register()
        concurrency.spawn(self._run, self._generation)
        return self

    def disconnect(self) -> None:
        """Close for good: status ``disconnected``, no reconnect, out of ``get_connections``."""
        with self._lock:
            self._generation += 1
            generation = self._generation
        self._wake.set()
        self._abandon(1000, "Client disconnected")
        self._fail_pending("CONNECTION_LOST", "The connection closed before the reply arrived.")
        self._unregister()
        self._set_status(DISCONNECTED, generation)

    def reconnect(self) -> None:
        """Start over from attempt 0, also after ``disconnected`` or ``auth-required``."""
        with self._lock:
            self._generation += 1
            generation = self._generation
        self._wake.set()
        self._abandon(1000, "Client reconnecting")
        self._fail_pending("CONNECTION_LOST", "The connection closed before the reply arrived.")
        self._attempts = 0
        self._register()
        self._set_status(RECONNECTING if self._welcomed_before else CONNECTING, generation)
        concurrency.spawn(self._run, generation)

    def _run(self, generation: int) -> None:
        """The reader: one socket after another until a final status."""
        while generation == self._generation:
            code, had_welcome = self._one_socket(generation)
            self._fail_pending("CONNECTION_LOST", "The connection closed before the reply arrived.")
            if generation != self._generation:
                return
            action = close_action(code)
            if action == "auth":
                return self._end(AUTH_REQUIRED, generation)
            if action == "stop":
                return self._end(DISCONNECTED, generation)
            if action == "replaced" and had_welcome:
                # A newer socket of this identity took our id: take a new one, at once.
                self._client_id, self._resume_token = str(uuid.uuid4()), None
                self._resync_reason = "replaced"
                self._set_status(RECONNECTING, generation)
                continue
            if self._attempts >= self.max_reconnect_attempts:
                return self._end(DISCONNECTED, generation)
            self._attempts += 1
            if action == "full":
                delay = self.reconnect_max_interval
            else:
                delay = min(self.reconnect_base_interval * self._attempts,
                            self.reconnect_max_interval)
            delay *= 1 - JITTER * random.random()
            self._set_status(RECONNECTING, generation)
            self._wake.clear()
            if generation != self._generation:
                return
            self._wake.wait(delay)
        return None

    # ------------------------------------------------------------------ one socket
    def _socket_url(self) -> Tuple[str, int, str, bool]:
        p = self._parts
        secure = p.scheme == "wss"
        query = [(k, v) for k, v in parse_qsl(p.query, keep_blank_values=True)
                 if k not in ("uuid", "resume", "since")]
        query.append(("uuid", self._client_id))
        if self._resume_token:  # without it the server gives a fresh id
            query.append(("resume", self._resume_token))
        self._sent_since = self._resume is not None
        if self._resume is not None:  # ask for a replay of what was missed
            query.append(("since", f"{self._resume[0]}:{self._resume[1]}"))
        target = (p.path or "/") + "?" + urlencode(query)
        return p.hostname or "127.0.0.1", p.port or (443 if secure else 80), target, secure

    def _one_socket(self, generation: int) -> Tuple[int, bool]:
        """Open, handshake, read until the socket ends; return (close code, had welcome)."""
        handshake_timeout = max(HANDSHAKE_FLOOR, self.ping_interval + self.pong_timeout)
        deadline = time.monotonic() + handshake_timeout
        self._welcomed_this_socket = False
        sock: Any = None
        try:
            host, port, target, secure = self._socket_url()
            sock = socket.create_connection((host, port), timeout=handshake_timeout)
            if secure:
                sock = TLSSocket(sock, self._tls_context(), server_hostname=host)
            with self._lock:
                if generation != self._generation:
                    sock.close()
                    return 1000, False
                self._sock = sock  # from here disconnect() can cut a slow handshake short
            if secure:
                sock.do_handshake(deadline)
            rest = self._handshake(sock, host, port, target, deadline)
            # The writer is a second handle on the same socket with its own timeout, so
            # the reader's short waits never cut a sendall in the middle of a frame.
            writer = sock.dup()
            writer.settimeout(max(HANDSHAKE_FLOOR, self.pong_timeout * 2))
            with self._lock:
                if generation != self._generation:
                    raise _SocketEndedError(1000, "superseded")
                self._writer = writer
            self._read_loop(sock, rest, deadline, generation)
            code = 1006  # not reached: the loop only ends by raising
        except _SocketEndedError as end:
            code = end.code
        except ssl.SSLError as exc:
            # An untrusted certificate, a wrong host name, not TLS at all: retried like
            # 1006, as a browser does, but the log says why.
            log.warning("TLS with %s failed: %s", self.url, exc)
            code = 1006
        except (OSError, ValueError, frames.ProtocolError) as exc:
            log.debug("socket to %s ended: %r", self.url, exc)
            code = 1006
        self._drop_socket(sock)
        return code, self._welcomed_this_socket

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # Kept for later attempts: loading the system's CA store is not free.
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _drop_socket(self, sock: Any) -> None:
        with self._lock:
            writer = self._writer
            if self._sock is sock:
                self._sock = None
                self._writer = None
            else:
                writer = None
        for s in (writer, sock):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    def _handshake(self, sock: Any, host: str, port: int, target: str,
                   deadline: float) -> bytes:
        key = frames.client_key()
        sock.sendall(frames.upgrade_request(host, port, target, key, self._headers))
        buf = b""
        while b"\r\n\r\n" not in buf:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                raise _SocketEndedError(1006, "handshake timeout") from None
            if not chunk or len(buf) > 65536:
                raise _SocketEndedError(1006, "no handshake response")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status, accepted = frames.upgrade_response(head, key)
        if status != 101:
            # An HTTP refusal (403 origin, 400...) looks like 1006 to a browser: retry.
            log.warning("WebSocket upgrade to %s refused: %s", self.url,
                        head.split(b"\r\n", 1)[0].decode("latin-1", "replace"))
            raise _SocketEndedError(1006, "upgrade refused")
        if not accepted:
            raise _SocketEndedError(1006, "bad Sec-WebSocket-Accept")
        return rest

    def _read_loop(self, sock: Any, rest: bytes, handshake_deadline: float,
                   generation: int) -> None:
        decoder = frames.FrameDecoder(MAX_MESSAGE_SIZE, expect_mask=False,
                                      max_fragments=self._max_fragments)
        events, failure = self._decode(decoder, rest)
        welcomed = False
        next_ping: Optional[float] = None
        pong_deadline: Optional[float] = None
        while True:
            for opcode, payload in events:
                if opcode == frames.OP_TEXT or opcode == frames.OP_BINARY:
                    frame = self._data_message(opcode, payload)
                    if frame is None:
                        continue
                    ftype = _frame_type(frame)
                    if ftype == "connected" and not welcomed:
                        welcomed = True
                        if self.ping_interval > 0:
                            next_ping = time.monotonic() + self.ping_interval
                        self._handle_welcome(frame, generation)
                    elif ftype == "_pong":
                        if pong_deadline is not None:  # unsolicited: keep the ping on time
                            pong_deadline = None
                            next_ping = time.monotonic() + self.ping_interval
                    else:
                        self._route(frame)
                elif opcode == frames.OP_PING:
                    self._write(frames.encode_frame(frames.OP_PONG, payload, mask=True))
                elif opcode == frames.OP_CLOSE:
                    try:
                        code, reason = frames.parse_close(payload)
                    except frames.ProtocolError as exc:  # a malformed close: 1002 or 1007
                        code, reason = exc.code, exc.reason
                    try:
                        self._write(frames.close_frame(1000 if code == 1005 else code,
                                                       mask=True))
                    except OSError:
                        raise _SocketEndedError(code, reason) from None
                    self._await_server_close(sock)
                    raise _SocketEndedError(code, reason)
            if failure is not None:  # the messages before the bad frame went out first
                self._fail(sock, failure)
            events = []
            if generation != self._generation:
                raise _SocketEndedError(1000, "superseded")
            now = time.monotonic()
            if not welcomed:
                wake_at = handshake_deadline
            elif pong_deadline is not None:
                wake_at = pong_deadline
            else:
                wake_at = next_ping if next_ping is not None else now + 3600
            if now >= wake_at:
                if not welcomed:
                    raise _SocketEndedError(1006, "no welcome in time")
                if pong_deadline is not None:
                    # A frozen server never completes a close handshake: let go at once.
                    raise _SocketEndedError(1006, "pong timeout")
                ping = orjson.dumps({"type": "_ping", "t": int(time.time() * 1000)})
                self._write(frames.encode_frame(frames.OP_TEXT, ping, mask=True))
                pong_deadline = time.monotonic() + self.pong_timeout
                continue
            sock.settimeout(max(0.001, wake_at - now))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise _SocketEndedError(1006, "connection closed without a close frame")
            events, failure = self._decode(decoder, data)

    @staticmethod
    def _decode(decoder: frames.FrameDecoder, data: bytes
                ) -> Tuple[List[frames.Event], Optional[frames.ProtocolError]]:
        """The events in ``data``, and the protocol error after them, if any: the
        messages decoded before a bad frame are still delivered."""
        if not data:
            return [], None
        try:
            return decoder.feed(data), None
        except frames.ProtocolError as exc:
            return exc.events, exc

    def _fail(self, sock: Any, exc: frames.ProtocolError) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame with the code, then the
        server's answer; raises the end of this socket."""
        log.warning("closing %s %d: the server broke the protocol (%s)", self.url, exc.code,
                    exc.reason)
        try:
            self._write(frames.close_frame(exc.code, exc.reason, mask=True))
        except OSError:
            raise _SocketEndedError(exc.code, exc.reason) from None
        self._await_server_close(sock)
        raise _SocketEndedError(exc.code, exc.reason)

    @staticmethod
    def _await_server_close(sock: Any) -> None:
        """After both close frames, the server closes TCP first (RFC 6455 7.1.1): read
        and drop what is left until it does, or for ``CLOSE_TIMEOUT`` at most."""
        deadline = time.monotonic() + CLOSE_TIMEOUT
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                sock.settimeout(remaining)
                if not sock.recv(65536):
                    return
        except OSError:  # a timeout, a reset, or disconnect() shutting the socket down
            return

    def _data_message(self, opcode: int, payload: bytes) -> Optional[Dict[str, Any]]:
        """The protocol frame a data message carries; ``None`` for anything else (binary
        messages, text that is not a JSON object). The conformance harness's echo client
        overrides it."""
        return self._parse(payload) if opcode == frames.OP_TEXT else None

    @staticmethod
    def _parse(payload: bytes) -> Optional[Dict[str, Any]]:
        try:
            frame = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None  # not a frame of this protocol
        return frame if isinstance(frame, dict) else None

    def _handle_welcome(self, frame: Dict[str, Any], generation: int) -> None:
        info = frame["data"].get("data") or {}
        if isinstance(info.get("clientId"), str) and info["clientId"]:
            self._client_id = info["clientId"]
            token = info.get("resumeToken")
            self._resume_token = token if isinstance(token, str) and token else None
        limits = info.get("limits")
        self._limits = limits if isinstance(limits, dict) else None
        self._attempts = 0
        self._welcomed_this_socket = True
        epoch, offset = info.get("epoch"), info.get("offset")
        self._welcome_position = (epoch, offset) if isinstance(epoch, str) and \
            isinstance(offset, int) else None
        replaying = self._sent_since and self._welcome_position is not None
        if not replaying:
            self._resume = self._welcome_position
        # With history a replay was asked for: _recovered says whether to resync.
        resync = None if replaying else \
            self._resync_reason or ("reconnect" if self._welcomed_before else None)
        self._resync_reason = None
        self._welcomed_before = True
        self._set_status(CONNECTED, generation)
        if resync and generation == self._generation:
            self._call_each(self._resync_callbacks, {"reason": resync})
        self._presence_on = info.get("presence") is True
        if self._presence_on and generation == self._generation:
            self._load_presence()

    # ------------------------------------------------------------------ presence
    def _load_presence(self) -> None:
        """Ask for the member list without waiting: the reader routes the reply here."""
        rid = f"presence-{uuid.uuid4()}"
        with self._lock:
            self._presence_rid, self._presence_buffer = rid, []
        if not self._transmit(orjson.dumps({"type": "_presence", "requestId": rid})):
            self._presence_loaded(rid, None)

    def _presence_loaded(self, rid: str, frame: Optional[Dict[str, Any]]) -> None:
        with self._lock:
            if rid != self._presence_rid:
                return
            self._presence_rid = None
            buffer, self._presence_buffer = self._presence_buffer, []
            data = frame.get("data") if frame and frame.get("success") is True else None
            if isinstance(data, dict):
                self._members = {}
                apply_presence(self._members, {"joined": data.get("members")})
                for batch in buffer:
                    apply_presence(self._members, batch)
                buffer = []
                members = list(self._members.values())
        if isinstance(data, dict):
            self._call_each(self._presence_callbacks, {"joined": [], "left": [], "updated": [],
                                                       "members": members, "snapshot": True})
        for batch in buffer:  # no list: keep the events at least
            self._handle_presence(batch)

    def _handle_presence(self, batch: Any) -> None:
        if not isinstance(batch, dict):
            return
        with self._lock:
            if self._presence_rid is not None:
                self._presence_buffer.append(batch)
                return
            apply_presence(self._members, batch)
            members = list(self._members.values())
        self._call_each(self._presence_callbacks, {
            "joined": _members_of(batch.get("joined")), "left": _members_of(batch.get("left")),
            "updated": _members_of(batch.get("updated")), "members": members})

    def presence(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Ask the server who is here: the reply frame, ``{"success": True, "data":
        {"members", "stats", ["partial"]}}``, or a failure as :meth:`request` returns."""
        return self.request({"type": "_presence"}, timeout)

    def _route(self, frame: Dict[str, Any]) -> None:
        rid = frame.get("requestId")
        if isinstance(rid, str) and rid == self._presence_rid:
            return self._presence_loaded(rid, frame)
        if isinstance(rid, str):
            with self._lock:
                waiter = self._pending.pop(rid, None)
            if waiter is not None:
                waiter.set(frame)
                return
            if rid in self._expired:
                return  # too late: its request() already returned
        if frame.get("success") is False and frame.get("code") == "SESSION_EXPIRED":
            return  # close 4401 follows
        ftype = _frame_type(frame)
        if ftype == "_presence":
            return self._handle_presence(frame["data"].get("data"))
        if ftype == "_resync":
            if self._presence_on:
                self._load_presence()  # presence batches may have been missed too
            reason = (frame["data"].get("data") or {}).get("reason")
            self._call_each(self._resync_callbacks, {"reason": reason})
            return
        if ftype == "_recovered":
            if (frame["data"].get("data") or {}).get("recovered") is not True:
                self._resume = self._welcome_position  # start from the current position
                self._call_each(self._resync_callbacks, {"reason": "recovery-failed"})
            return
        if isinstance(ftype, str) and ftype.startswith("_"):
            return  # the framework's (_presence...): not for the app
        offset, epoch = frame.get("offset"), frame.get("epoch")
        if isinstance(offset, int) and isinstance(epoch, str):
            last = self._resume
            if last is not None and last[0] == epoch and offset <= last[1]:
                return  # a replay already delivered it
            self._resume = (epoch, offset)
        self._call_each(self._message_callbacks, frame)

    # ------------------------------------------------------------------ outbound
    def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None:
            raise OSError("not connected")
        with self._write_lock:
            try:
                writer.sendall(data)
            except OSError:
                self._abandon()  # a cut frame would corrupt the stream: drop the socket
                raise

    def _transmit(self, payload: bytes) -> bool:
        if self._status != CONNECTED or self._writer is None:
            return False
        try:
            self._write(frames.encode_frame(frames.OP_TEXT, payload, mask=True))
        except OSError:
            return False
        return True

    def _too_large(self, payload: bytes) -> Optional[Dict[str, int]]:
        limit = (self._limits or {}).get("maxSize")
        if isinstance(limit, int) and limit > 0 and len(payload) > limit:
            return {"size": len(payload), "limit": limit}
        return None

    def send(self, data: Any) -> bool:
        """Send ``data`` as JSON; False (with a warning) when not connected or too large.

        :raises TypeError: ``data`` cannot be encoded as JSON.
        """
        payload = orjson.dumps(data)
        over = self._too_large(payload)
        if over:
            log.warning("message not sent, %d bytes > maxSize %d (%s)", over["size"],
                        over["limit"], self.url)
            return False
        if self._transmit(payload):
            return True
        log.warning("message not sent, not connected (%s)", self.url)
        return False

    def request(self, data: Mapping[str, Any], timeout: Optional[float] = None
                ) -> Dict[str, Any]:
        """Send with a fresh ``requestId`` and wait for the reply frame; never raises.

        :returns: the reply frame (which does not also reach ``on_message``), or
            ``{"success": False, "code": ...}`` with ``REQUEST_TIMEOUT``,
            ``CONNECTION_LOST``, ``NOT_CONNECTED``, ``MESSAGE_TOO_LARGE`` or
            ``INVALID_MESSAGE``.
        """
        timeout = self.request_timeout if timeout is None else timeout
        if self._status != CONNECTED:
            return _failure("NOT_CONNECTED", "Not connected: the request was not sent.")
        rid = str(uuid.uuid4())
        try:
            payload = orjson.dumps({**data, "requestId": rid})
        except TypeError as exc:
            return _failure("INVALID_MESSAGE", f"The request cannot be encoded as JSON: {exc}",
                            requestId=rid)
        over = self._too_large(payload)
        if over:
            return _failure("MESSAGE_TOO_LARGE", f"The request is {over['size']} bytes, over "
                            f"the limit of {over['limit']}.", requestId=rid, details=over)
        waiter = concurrency.AsyncResult()
        with self._lock:
            self._pending[rid] = waiter
        if not self._transmit(payload):
            with self._lock:
                self._pending.pop(rid, None)
            return _failure("NOT_CONNECTED", "Not connected: the request was not sent.",
                            requestId=rid)
        if waiter.wait(timeout):
            return waiter.value
        with self._lock:
            self._pending.pop(rid, None)
            self._expired[rid] = None
            while len(self._expired) > EXPIRED_MEMORY:
                del self._expired[next(iter(self._expired))]
        if waiter.wait(0):  # the reply won the race after all
            return waiter.value
        return _failure("REQUEST_TIMEOUT", f"No reply within {timeout:g} s.", requestId=rid)

    def _fail_pending(self, code: str, error: str) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for rid, waiter in pending.items():
            waiter.set(_failure(code, error, requestId=rid))

    def reply(self, message: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
        """Answer a server request (a frame carrying ``requestId``) with ``data``."""
        rid = message.get("requestId") if message else None
        if not isinstance(rid, str):
            return False
        return self.send({**data, "requestId": rid})

    def reply_error(self, message: Mapping[str, Any], error: str,
                    code: Union[str, int] = "ERROR") -> bool:
        """Answer a server request with an error."""
        rid = message.get("requestId") if message else None
        if not isinstance(rid, str):
            return False
        return self.send({"success": False, "error": str(error), "code": code,
                          "requestId": rid})

    def _abandon(self, code: Optional[int] = None, reason: str = "") -> None:
        """Let go of the socket without waiting for its close handshake."""
        with self._lock:
            sock, writer = self._sock, self._writer
            self._sock = self._writer = None
        if sock is None:
            return
        if code is not None and writer is not None:
            try:
                with self._write_lock:
                    writer.sendall(frames.close_frame(code, reason, mask=True))
            except OSError:
                pass
        for s in (writer, sock):
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv()
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> WSClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        return f"<WSClient {self.url} {self._status} {self._client_id}>"


def connect(url: str, *, headers: Optional[Mapping[str, str]] = None,
            cookies: Optional[Union[Mapping[str, str], str]] = None,
            reconnect_base_interval: float = 5.0, reconnect_max_interval: float = 30.0,
            max_reconnect_attempts: int = 10, ping_interval: float = 30.0,
            pong_timeout: float = 5.0, request_timeout: float = 10.0,
            client_id: Optional[str] = None, resume_token: Optional[str] = None,
            ssl_context: Optional[ssl.SSLContext] = None,
            on_status_change: Optional[StatusCallback] = None,
            on_message: Optional[MessageCallback] = None,
            on_resync: Optional[ResyncCallback] = None,
            on_presence: Optional[PresenceCallback] = None) -> WSClient:
    """Open a reconnecting connection to a namespace; returns at once (status ``connecting``).

    :param url: ``ws://host:port/api/1/ws/...`` (or ``wss://``); ``?uuid=`` (and
        ``?resume=`` once the client has a token) is added.
    :param headers: extra request headers (``Authorization``, ``Origin``...).
    :param cookies: a mapping or a ``Cookie`` header value (the Flask session cookie).
    :param reconnect_base_interval: seconds before the first retry; attempt k waits
        ``min(base * k, max)`` shortened by up to 20 % jitter.
    :param reconnect_max_interval: the cap on that delay (also the delay after 4529).
    :param max_reconnect_attempts: failed attempts in a row before ``disconnected``.
    :param ping_interval: seconds between ``_ping`` frames while connected; 0 turns it off.
    :param pong_timeout: a ``_pong`` must follow each ``_ping`` within this.
    :param request_timeout: default :meth:`WSClient.request` timeout.
    :param client_id: the id to come back as, with its ``resume_token`` (both from
        :meth:`WSClient.get_client_id` and :meth:`WSClient.get_resume_token` of an
        earlier connection); without a valid token the server gives a fresh id.
    :param resume_token: the secret that proves ``client_id`` is ours.
    :param ssl_context: for ``wss://``: the :class:`ssl.SSLContext` that checks the
        server (a private CA, a client certificate); default
        :func:`ssl.create_default_context`, which verifies the certificate and host name.
    :param on_status_change: registered before the reader starts, so it sees every
        status; callbacks added later with the methods see what happens from then on
        (the reader runs concurrently, unlike a page's single thread).
    :param on_message: likewise, for app frames.
    :param on_resync: likewise, for resyncs.
    :param on_presence: likewise, for presence batches (see :meth:`WSClient.on_presence`).

    Example::

        chat = connect("ws://127.0.0.1:5000/api/1/ws/chat")
        if chat.wait_connected(5):
            chat.send({"type": "say", "text": "hi"})
    """
    client = WSClient(url, headers=headers, cookies=cookies,
                      reconnect_base_interval=reconnect_base_interval,
                      reconnect_max_interval=reconnect_max_interval,
                      max_reconnect_attempts=max_reconnect_attempts,
                      ping_interval=ping_interval, pong_timeout=pong_timeout,
                      request_timeout=request_timeout, client_id=client_id,
                      resume_token=resume_token, ssl_context=ssl_context)
    if on_status_change is not None:
        client.on_status_change(on_status_change)
    if on_message is not None:
        client.on_message(on_message)
    if on_resync is not None:
        client.on_resync(on_resync)
    if on_presence is not None:
        client.on_presence(on_presence)
    return client._start()


def get_connections() -> List[WSClient]:
    """The live clients of this process (those not ended by a final status)."""
    with _registry_lock:
        return list(_registry)
