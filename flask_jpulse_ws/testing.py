"""Helpers for test suites: a blocking WebSocket test client with ``receive(type=...)``.

Plain sockets and threads; no gevent needed in the test process::

    with WSTestClient("ws://127.0.0.1:5000/api/1/ws/chat") as c:
        welcome = c.receive(type="connected")
        c.send({"type": "chat", "data": {"text": "hi"}})
        echo = c.receive(type="chat", timeout=2)
"""

from __future__ import annotations

import base64
import os
import socket
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import orjson

from . import frames

__all__ = ["WSTestClient", "HandshakeRefused", "ConnectionClosedError"]


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class ConnectionClosedError(Exception):
    """The connection closed while waiting; ``code``/``reason`` from the close frame."""

    def __init__(self, code: Optional[int], reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class WSTestClient:
    """A small blocking client that speaks our frames exactly, for tests.

    :param url: ``ws://host:port/path?query``.
    :param headers: extra request headers (``Origin``, ``Cookie``...).
    :param answer_pings: reply to protocol pings while receiving (a test can turn
        it off to play a dead peer).
    """

    def __init__(self, url: str, headers: Optional[Mapping[str, str]] = None,
                 timeout: float = 5.0, answer_pings: bool = True,
                 max_message_size: int = 64 * 1024 * 1024) -> None:
        parts = urlsplit(url)
        self.url = url
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.answer_pings = answer_pings
        self.timeout = timeout
        self.close_code: Optional[int] = None
        self.close_reason = ""
        self.pings_received = 0
        self._decoder = frames.FrameDecoder(max_message_size, expect_mask=False)
        self._events: List[Tuple[int, bytes]] = []
        self._closed = False
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        self._handshake(dict(headers or {}))

    def _handshake(self, headers: Dict[str, str]) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise HandshakeRefused(0, buf)
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            body = rest
            try:
                self.sock.settimeout(0.5)
                while True:
                    more = self.sock.recv(4096)
                    if not more:
                        break
                    body += more
            except OSError:
                pass
            self.sock.close()
            raise HandshakeRefused(status, body)
        expected = frames.accept_key(key).encode()
        if expected not in head:
            raise HandshakeRefused(status, b"bad Sec-WebSocket-Accept")
        if rest:
            self._events.extend(self._decoder.feed(rest))

    # --------------------------------------------------------------- sending
    def send(self, message: Any) -> None:
        """Send a JSON text frame."""
        self.send_text(orjson.dumps(message))

    def send_text(self, payload: bytes) -> None:
        self.send_frame(frames.OP_TEXT, payload)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(frames.encode_frame(opcode, payload, fin=fin, mask=True))

    def request(self, message: Dict[str, Any], timeout: Optional[float] = None
                ) -> Dict[str, Any]:
        """Send with a fresh ``requestId`` and wait for the frame carrying it."""
        rid = base64.b32encode(os.urandom(10)).decode().lower()
        self.send({**message, "requestId": rid})
        return self.receive(match=lambda m: m.get("requestId") == rid, timeout=timeout)

    # --------------------------------------------------------------- receiving
    def _next_event(self, deadline: float) -> Tuple[int, bytes]:
        while not self._events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("nothing received in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("nothing received in time") from None
            except OSError:
                data = b""
            if not data:
                self._closed = True
                raise ConnectionClosedError(self.close_code or 1006, self.close_reason)
            self._events.extend(self._decoder.feed(data))
        return self._events.pop(0)

    def receive_frame(self, timeout: Optional[float] = None) -> Tuple[int, bytes]:
        """The next data frame as (opcode, payload); control frames are handled."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            opcode, payload = self._next_event(deadline)
            if opcode == frames.OP_PING:
                self.pings_received += 1
                if self.answer_pings:
                    self.send_frame(frames.OP_PONG, payload)
                continue
            if opcode == frames.OP_PONG:
                continue
            if opcode == frames.OP_CLOSE:
                self.close_code, self.close_reason = frames.parse_close(payload)
                if not self._closed:
                    try:
                        self.sock.sendall(frames.close_frame(self.close_code
                                                             if self.close_code != 1005
                                                             else 1000, mask=True))
                    except OSError:
                        pass
                    self._closed = True
                raise ConnectionClosedError(self.close_code, self.close_reason)
            return opcode, payload

    def receive(self, type: Optional[str] = None, timeout: Optional[float] = None,
                match: Any = None) -> Dict[str, Any]:
        """The next JSON frame, or the next one of app ``type`` (others are skipped).

        :raises TimeoutError: nothing matching in time.
        :raises ConnectionClosedError: the server closed; see ``close_code``.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            _, payload = self.receive_frame(max(0.0, deadline - time.monotonic()))
            message = orjson.loads(payload)
            if match is not None and not match(message):
                continue
            if type is not None:
                data = message.get("data")
                if not isinstance(data, dict) or data.get("type") != type:
                    continue
            return message  # type: ignore[no-any-return]

    def receive_all(self, timeout: float = 0.3) -> List[Dict[str, Any]]:
        """Everything that arrives within ``timeout`` seconds."""
        out = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                out.append(self.receive(timeout=max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            return out

    def wait_closed(self, timeout: Optional[float] = None) -> int:
        """Read until the server closes; return the close code (1006 without a frame)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                self.receive_frame(max(0.0, deadline - time.monotonic()))
        except ConnectionClosedError as exc:
            return exc.code or 1006

    # --------------------------------------------------------------- closing
    def close(self, code: int = 1000) -> None:
        if not self._closed:
            try:
                self.sock.sendall(frames.close_frame(code, mask=True))
            except OSError:
                pass
            self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "WSTestClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


