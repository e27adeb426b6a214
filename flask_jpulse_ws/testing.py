"""Helpers for test suites: a real server for your app, and a blocking WebSocket
test client with ``receive(type=...)``.

Plain sockets and threads; no gevent needed in the test process::

    with live_server(create_app(), login=("/login", {"username": "ann"})) as server:
        with server.client("/api/1/ws/chat") as c:   # a WSTestClient, logged in
            welcome = c.receive(type="connected")
            c.send({"type": "chat", "data": {"text": "hi"}})
            echo = c.receive(type="chat", timeout=2)
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from http.cookiejar import CookieJar
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

import orjson

from .core import frames

__all__ = ["WSTestClient", "HandshakeRefused", "ConnectionClosedError", "live_server",
           "LiveServer", "LiveSession", "HTTPSession", "HTTPResponse"]


class HandshakeRefused(Exception):  # noqa: N818 - public name, kept
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int, body: bytes,
                 headers: Union[None, Mapping[str, str], Message] = None) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body
        #: The response headers, looked up case-insensitively (``Retry-After`` of a 429).
        self.headers: Union[Mapping[str, str], Message] = headers if headers is not None \
            else {}


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
    :param source_address: ``(host, port)`` to connect from, e.g. ``("127.0.0.2", 0)``
        to be another client address on the loopback network.
    """

    def __init__(self, url: str, headers: Optional[Mapping[str, str]] = None,
                 timeout: float = 5.0, answer_pings: bool = True,
                 max_message_size: int = 64 * 1024 * 1024,
                 source_address: Optional[Tuple[str, int]] = None) -> None:
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
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout,
                                             source_address=source_address)
        self._handshake(dict(headers or {}))

    def _handshake(self, headers: Dict[str, str]) -> None:
        key = frames.client_key()
        self.sock.sendall(frames.upgrade_request(self.host, self.port, self.path, key, headers))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise HandshakeRefused(0, buf)
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status, accepted = frames.upgrade_response(head, key)
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
            header_lines = head.split(b"\r\n", 1)[1] if b"\r\n" in head else b""
            raise HandshakeRefused(status, body, http.client.parse_headers(
                io.BytesIO(header_lines + b"\r\n\r\n")))
        if not accepted:
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
            return message

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

    def __enter__(self) -> WSTestClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------ live server

class HTTPResponse:
    """What :class:`HTTPSession` returns: ``status``, ``headers``, ``body`` and ``json()``."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = dict(headers)
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HTTPResponse {self.status} {self.body[:60]!r}>"


class HTTPSession:
    """A small cookie-keeping HTTP client (one browser session), stdlib only.

    Redirects are followed; an HTTP error status is returned, not raised.
    """

    def __init__(self, base_url: str, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        """:param ssl_context: for ``https://`` with a private CA (tests, ``trustme``)."""
        self.base_url = base_url.rstrip("/")
        self.jar = CookieJar()
        handlers: List[Any] = [urllib.request.HTTPCookieProcessor(self.jar)]
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self._opener = urllib.request.build_opener(*handlers)

    def request(self, method: str, path: str, *, data: Optional[Mapping[str, Any]] = None,
                json_body: Any = None, headers: Optional[Mapping[str, str]] = None,
                timeout: float = 10.0) -> HTTPResponse:
        """``data`` is sent as a form, ``json_body`` as JSON."""
        body: Optional[bytes] = None
        hdrs = dict(headers or {})
        if data is not None:
            body = urllib.parse.urlencode(data).encode()
            hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        url = path if "://" in path else self.base_url + path
        req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return HTTPResponse(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as err:
            return HTTPResponse(err.code, dict(err.headers.items()), err.read())

    def get(self, path: str, **kwargs: Any) -> HTTPResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> HTTPResponse:
        return self.request("POST", path, **kwargs)

    @property
    def cookies(self) -> Dict[str, str]:
        """The session's cookies by name (pass to ``client.connect(cookies=...)``)."""
        return {c.name: c.value for c in self.jar if c.value is not None}


class LiveSession:
    """One browser session against a :func:`live_server`: its own cookies, its own
    logins, its own WebSocket clients. ``server.session()`` makes more of them, so a test
    can have two users::

        with live_server(create_app()) as server:
            ann = server.session(login=("/login", {"username": "ann"}))
            bob = server.session(login=("/login", {"username": "bob"}))
            with ann.client("/api/1/ws/chat") as a, bob.client("/api/1/ws/chat") as b:
                ...
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        #: ``http://127.0.0.1:<port>``
        self.url = f"http://{host}:{port}"
        #: A cookie-keeping HTTP session; after ``login=`` it is logged in.
        self.http = HTTPSession(self.url)

    def ws_url(self, path: str) -> str:
        """``ws://127.0.0.1:<port><path>``."""
        return f"ws://{self.host}:{self.port}{path}"

    @property
    def cookies(self) -> Dict[str, str]:
        """The HTTP session's cookies, for ``flask_jpulse_ws.client.connect(cookies=...)``."""
        return self.http.cookies

    @property
    def headers(self) -> Dict[str, str]:
        """Request headers carrying the HTTP session's cookies, for :class:`WSTestClient`."""
        cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        return {"Cookie": cookie} if cookie else {}

    def login(self, path: str, form: Mapping[str, Any]) -> HTTPResponse:
        """POST ``form`` to the app's own login route with the session's cookies.

        :raises AssertionError: the app answered with an error status.
        """
        resp = self.http.post(path, data=form)
        if resp.status >= 400:
            raise AssertionError(f"login through POST {path} failed: {resp!r}")
        return resp

    def client(self, path: str, **kwargs: Any) -> WSTestClient:
        """A :class:`WSTestClient` on ``path`` with the session's cookies."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return WSTestClient(self.ws_url(path), headers=headers, **kwargs)


class LiveServer(LiveSession):
    """What :func:`live_server` yields: the running app's addresses and a first browser
    session (``server.http``, ``server.client(path)``...); :meth:`session` makes more."""

    def session(self, login: Optional[Tuple[str, Mapping[str, Any]]] = None
                ) -> LiveSession:
        """Another browser session (cookies of its own), logged in through the app's
        own login route when ``login=(path, form)`` is given."""
        session = LiveSession(self.host, self.port)
        if login is not None:
            session.login(*login)
        return session


@contextlib.contextmanager
def live_server(app: Any, port: Optional[int] = None,
                login: Optional[Tuple[str, Mapping[str, Any]]] = None
                ) -> Iterator[LiveServer]:
    """Serve ``app`` on a real socket for the ``with`` block; yield a :class:`LiveServer`.

    A threaded werkzeug server in a background thread (the one ``flask run`` uses), so
    any app object works and the test process needs no gevent.

    :param app: a Flask app with ``JPulseWS`` initialised.
    :param port: default: a free port chosen by the OS.
    :param login: ``(path, form)``: log in through the app's own login route first; the
        session cookie then reaches WebSocket clients through ``server.headers``,
        ``server.cookies`` and ``server.client(path)``.

    Example::

        with live_server(create_app(), login=("/login", {"username": "ann"})) as server:
            with server.client("/api/1/ws/chat") as c:
                assert c.receive(type="connected")["data"]["data"]["clientId"]
    """
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port or 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"live_server:{server.server_port}", daemon=True)
    thread.start()
    try:
        live = LiveServer("127.0.0.1", server.server_port)
        if login is not None:
            live.login(*login)
        yield live
    finally:
        server.shutdown()  # stops accepting; open WebSocket threads end with their sockets
        server.server_close()
        thread.join(5)
