"""Asyncio load generator for the flask-jpulse-ws benchmarks.

One process holds thousands of WebSocket connections through a small hand-rolled client
(an ``asyncio.Protocol`` that masks its frames, answers pings, and optionally offers
permessage-deflate as browsers do). Three dialects ride on it:

- ``jpulse``    ours: ``ws://HOST:PORT/api/1/ws/bench``, JSON frames, a welcome frame
  first, broadcasts as ``{"success": true, "data": {"type": "tick", "data": P, ...}}``,
  replies as ``{"success": true, "data": D, "requestId": id}``.
- ``socketio``  Flask-SocketIO: Engine.IO v4 / Socket.IO v5 over a plain WebSocket
  (``/socket.io/?EIO=4&transport=websocket``; ``40`` connect, ``42[...]`` events,
  ``42<id>[...]``/``43<id>[...]`` acks, engine.io ping ``2`` answered with ``3``).
- ``flasksock`` a plain flask-sock app: ``/ws``, JSON frames ``{"type": ..., "data": ...}``.

Scenarios (each returns a flat dict of metrics): ``idle``, ``fanout`` (closed loop),
``burst``, ``reqrep``, ``slow`` (one slow consumer), ``storm`` (every client dropped at
once, then reconnecting with the browser client's backoff). Every wait has a timeout and every
loop is bounded in count and time. Only loopback addresses are accepted as targets.

It can be used as a library (benchmarks/run.py) or from the command line against a server
that is already running::

    python benchmarks/loadgen.py --peer socketio --port 5000 fanout --n 1000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import ipaddress
import itertools
import json
import os
import random
import re
import socket
import struct
import sys
import time
import uuid
import zlib
from typing import Any, Callable

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in benchmarks/requirements.txt
    uvloop = None

try:
    from picows import WSCloseCode, WSListener, WSMsgType, ws_connect
except ImportError:  # pragma: no cover - picows is in benchmarks/requirements.txt
    WSListener = WSMsgType = WSCloseCode = ws_connect = None

try:
    import orjson

    _loads = orjson.loads
    _dumps = orjson.dumps
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    _loads = json.loads

    def _dumps(obj):
        return json.dumps(obj, separators=(",", ":")).encode()


now = time.perf_counter

DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"  # what Chrome/Firefox send
_TAIL = b"\x00\x00\xff\xff"


def run(coro):
    """asyncio.run on uvloop (when installed): the load generator's event loop in C."""
    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def check_loopback(host: str) -> None:
    """Refuse any target that is not on this machine's loopback range."""
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot resolve target host {host!r}: {exc}") from None
    if not addr.is_loopback:
        raise SystemExit(f"refusing to load {host} ({addr}): only loopback targets are allowed")


def pct(values, q: float) -> float | None:
    """The q-th percentile (0..100) of values, nearest-rank; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def _ms(x):
    return None if x is None else round(x * 1000.0, 3)


def _mask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


# --------------------------------------------------------------------------------------
# The raw WebSocket client
# --------------------------------------------------------------------------------------

class WSConn(asyncio.Protocol):
    """A minimal RFC 6455 client connection. Subclasses parse the application dialect."""

    PATH = "/"

    def __init__(self, host: str, port: int, sink: Any, deflate: bool = False,
                 path: str | None = None):
        loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.path = path or self.PATH
        self.sink = sink
        self.offer_deflate = deflate
        self.deflate = False  # negotiated
        self._inflater = None
        self._inflate_reset = False
        self._deflater = None
        self._deflate_reset = False
        self._deflate_wbits = 15
        self.transport = None
        self.handshaken = False
        self.ready = loop.create_future()  # app-level connected (welcome / 40 / 101)
        self.closed = loop.create_future()
        self.close_code = None
        self.buf = b""
        self._frag = None
        self._frag_rsv1 = False
        self.received = 0
        self.errors = 0
        self.bad = 0  # frames that could not be parsed (corrupted stream)
        self.last_error = None
        self.tag = None  # free slot for scenarios
        self.t_upgraded = None  # when the 101 arrived

    # -- lifecycle --------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            "User-Agent: jpulse-bench",
        ]
        if self.offer_deflate:
            lines.append(f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc):
        if not self.ready.done():
            if not self.handshaken:  # as the picows client reports it (see open_conn)
                self.ready.set_exception(ConnectionResetError(
                    "server closed the connection before the upgrade response"))
            else:
                why = f"connection lost before ready ({self.close_code})"
                self.ready.set_exception(ConnectionError(why))
        if not self.closed.done():
            self.closed.set_result(self.close_code)
        self.transport = None

    def abort(self):
        """Drop the TCP connection without a close frame (a vanished client)."""
        if self.transport is not None:
            self.transport.abort()

    def close(self, code: int = 1000):
        if self.transport is not None and not self.transport.is_closing():
            self._send_frame(0x8, struct.pack("!H", code), compress=False)
            self.transport.close()

    # -- handshake --------------------------------------------------------------------
    def _handshake(self, data: bytes) -> bytes | None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self._fail("handshake response too large")
            return None
        head, rest = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
        self.buf = b""
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[1] != "101":
            self._fail(f"handshake refused: {lines[0]!r}")
            return None
        ext = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                ext = value.strip()
        if ext and self.offer_deflate and ext.lower().startswith("permessage-deflate"):
            params = [p.strip().lower() for p in ext.split(";")[1:]]
            self.deflate = True
            self._inflate_reset = "server_no_context_takeover" in params
            self._deflate_reset = "client_no_context_takeover" in params
            for p in params:
                if p.startswith("client_max_window_bits="):
                    self._deflate_wbits = int(p.split("=", 1)[1].strip('"'))
            self._inflater = zlib.decompressobj(-15)
            self._deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED,
                                              -max(9, self._deflate_wbits))
        self.handshaken = True
        self.t_upgraded = now()
        self.on_open()
        return rest

    def _fail(self, why: str):
        self.last_error = why
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    # -- frames in ----------------------------------------------------------------------
    def data_received(self, data: bytes):
        if not self.handshaken:
            data = self._handshake(data)
            if not data:
                return
        t = now()
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            ln = b1 & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hl = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hl = 10
            if b1 & 0x80:  # servers must not mask; tolerate it anyway
                hl += 4
            end = pos + hl + ln
            if end > n:
                break
            payload = buf[pos + hl:end]
            if b1 & 0x80:
                payload = _mask(payload, buf[pos + hl - 4:pos + hl])
            pos = end
            opcode = b0 & 0x0F
            if opcode not in (0, 1, 2, 8, 9, 10) or (b0 & 0x30):
                self.bad += 1
                self.last_error = f"bad frame header {b0:#x}"
                self.transport.abort()
                return
            if opcode & 0x8:
                self._control(opcode, payload)
                if self.transport is None:
                    return
                continue
            if opcode == 0:
                if self._frag is None:
                    continue
                self._frag.append(payload)
                if not b0 & 0x80:
                    continue
                payload = b"".join(self._frag)
                rsv1 = self._frag_rsv1
                self._frag = None
            else:
                rsv1 = b0 & 0x40
                if not b0 & 0x80:
                    self._frag = [payload]
                    self._frag_rsv1 = rsv1
                    continue
            if rsv1 and self._inflater is not None:
                payload = self._inflater.decompress(payload + _TAIL)
                if self._inflate_reset:
                    self._inflater = zlib.decompressobj(-15)
            self.received += 1
            try:
                self.on_text(payload, t)
            except Exception as exc:  # noqa: BLE001 - a corrupted or unexpected frame
                self.bad += 1
                self.last_error = f"bad frame: {type(exc).__name__}: {exc}"
        self.buf = buf[pos:] if pos < n else b""

    def _control(self, opcode, payload):
        if opcode == 0x9:  # ping
            self._send_frame(0xA, payload, compress=False)
        elif opcode == 0x8:  # close
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if self.transport is not None and not self.transport.is_closing():
                self._send_frame(0x8, payload[:2], compress=False)
                self.transport.close()

    # -- frames out ---------------------------------------------------------------------
    def _send_frame(self, opcode: int, payload: bytes, compress: bool = True):
        tr = self.transport
        if tr is None or tr.is_closing():
            return False
        b0 = 0x80 | opcode
        if compress and self._deflater is not None:
            payload = self._deflater.compress(payload) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
            if payload.endswith(_TAIL):
                payload = payload[:-4]
            if self._deflate_reset:
                self._deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED,
                                                  -max(9, self._deflate_wbits))
            b0 |= 0x40
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", b0, 0x80 | 127, n)
        key = os.urandom(4)
        tr.write(head + key + _mask(payload, key))
        return True

    def send_text(self, payload: bytes):
        return self._send_frame(0x1, payload)

    # -- dialect hooks ------------------------------------------------------------------
    def on_open(self):
        pass

    def on_text(self, payload: bytes, t: float):
        pass

    def _error_frame(self, msg):
        self.errors += 1
        self.last_error = msg
        cb = getattr(self.sink, "on_error", None)
        if cb is not None:
            cb(self, msg)

    # Each dialect implements: trigger(payload), burst(k, seq, t, pad), echo(rid, data)


class JPulseDialect:
    """ours: JSON envelopes, a welcome frame first, replies carry the requestId."""

    PATH = "/api/1/ws/bench"
    client_id = None  # from the welcome (a browser stores it and reconnects with ?uuid=)
    resume_token = None  # ... and its token (?resume=), without which the id is not kept

    def on_text(self, payload, t):
        d = _loads(payload)
        if not isinstance(d, dict):
            return
        rid = d.get("requestId")
        if rid is not None and d.get("success", True) and "error" not in d:
            self.sink.on_reply(self, rid, d.get("data"), t)
            return
        if not d.get("success", False):
            self._error_frame(d)
            if rid is not None:
                self.sink.on_reply(self, rid, None, t)
            return
        inner = d.get("data") or {}
        kind = inner.get("type")
        if kind == "tick":
            self.sink.on_tick(self, inner.get("data"), t)
        elif kind == "connected":
            welcome = inner.get("data")
            if isinstance(welcome, dict):
                self.client_id = welcome.get("clientId")
                self.resume_token = welcome.get("resumeToken")
            if not self.ready.done():
                self.ready.set_result(True)

    def trigger(self, payload):
        return self.send_text(_dumps({"type": "bcast", "data": payload}))

    def burst(self, k, seq, t, pad):
        req = {"k": k, "seq": seq, "t": t, "pad": pad}
        return self.send_text(_dumps({"type": "burst", "data": req}))

    def echo(self, rid, data):
        return self.send_text(_dumps({"type": "echo", "requestId": rid, "data": data}))


class PlainDialect:
    """plain flask-sock app and the picows reference: bare JSON frames."""

    PATH = "/ws"

    def on_open(self):
        if not self.ready.done():
            self.ready.set_result(True)

    def on_text(self, payload, t):
        d = _loads(payload)
        kind = d.get("type")
        if kind == "tick":
            self.sink.on_tick(self, d.get("data"), t)
        elif kind == "echo":
            self.sink.on_reply(self, d.get("requestId"), d.get("data"), t)

    def trigger(self, payload):
        return self.send_text(_dumps({"type": "bcast", "data": payload}))

    def burst(self, k, seq, t, pad):
        req = {"k": k, "seq": seq, "t": t, "pad": pad}
        return self.send_text(_dumps({"type": "burst", "data": req}))

    def echo(self, rid, data):
        return self.send_text(_dumps({"type": "echo", "requestId": rid, "data": data}))


class SocketIODialect:
    """Flask-SocketIO: Engine.IO v4 / Socket.IO v5 packets in text frames."""

    PATH = "/socket.io/?EIO=4&transport=websocket"

    def on_text(self, payload, t):
        c = payload[:1]
        if c == b"4":  # engine.io message -> socket.io packet
            s = payload[1:2]
            if s == b"2":  # EVENT
                body = payload[2:]
                if body[:1] != b"[":  # 42<id>[...] from the server (not used here)
                    body = body[body.index(b"["):]
                ev = _loads(body)
                if ev[0] == "tick":
                    self.sink.on_tick(self, ev[1], t)
            elif s == b"3":  # ACK 43<id>[args]
                i = payload.index(b"[", 2)
                rid = int(payload[2:i])
                args = _loads(payload[i:])
                self.sink.on_reply(self, rid, args[0] if args else None, t)
            elif s == b"0":  # CONNECT ack 40{"sid": ...}
                if not self.ready.done():
                    self.ready.set_result(True)
            elif s == b"4":  # CONNECT_ERROR
                self._error_frame(payload.decode("utf-8", "replace"))
                self._fail("socket.io connect error")
        elif c == b"2":  # engine.io ping
            self.send_text(b"3" + payload[1:])
        elif c == b"0":  # engine.io open -> connect the default namespace
            self.send_text(b"40")
        elif c == b"1":  # engine.io close
            self._fail("engine.io close")

    def trigger(self, payload):
        return self.send_text(b'42["bcast",' + _dumps(payload) + b"]")

    def burst(self, k, seq, t, pad):
        req = {"k": k, "seq": seq, "t": t, "pad": pad}
        return self.send_text(b'42["burst",' + _dumps(req) + b"]")

    def echo(self, rid, data):
        return self.send_text(b"42" + str(rid).encode() + b'["echo",' + _dumps(data) + b"]")


class JPulseConn(JPulseDialect, WSConn):
    pass


class PlainConn(PlainDialect, WSConn):
    pass


class SocketIOConn(SocketIODialect, WSConn):
    pass


# the hand-rolled client, per peer (always used for permessage-deflate and socket options)
DIALECTS: dict[str, type[WSConn]] = {
    "jpulse": JPulseConn,
    "socketio": SocketIOConn,
    "flasksock": PlainConn,
    "picows": PlainConn,
}


# --------------------------------------------------------------------------------------
# The picows client (C frame parsing and masking): the default where the dialect allows
# --------------------------------------------------------------------------------------

if WSListener is not None:
    _TEXT = WSMsgType.TEXT
    _CONT = WSMsgType.CONTINUATION
    _CLOSE = WSMsgType.CLOSE

    class PicowsConn(WSListener):
        """The same surface as WSConn (ready/closed futures, counters, send_text, abort,
        close) on a picows WSListener: frames are parsed and masked in C, pings answered
        by picows. permessage-deflate (which picows lacks) is done here for what the
        client receives; what it sends goes uncompressed (RSV1 clear), which RFC 7692
        allows, so a deflate case costs the load generator only the inflating."""

        deflate = False
        _inflater = None
        _inflate_reset = False

        def negotiate(self, response) -> None:
            """Take the server's permessage-deflate answer (if any) from the 101."""
            ext = response.headers.get("Sec-WebSocket-Extensions", "") if response else ""
            if ext.lower().startswith("permessage-deflate"):
                params = [p.strip().lower() for p in ext.split(";")[1:]]
                self.deflate = True
                self._inflate_reset = "server_no_context_takeover" in params
                self._inflater = zlib.decompressobj(-15)

        def __init__(self, sink: Any):
            loop = asyncio.get_running_loop()
            self.sink = sink
            self.ready = loop.create_future()
            self.closed = loop.create_future()
            self.close_code = None
            self.wst = None  # picows WSTransport
            self._frag = None
            self.received = 0
            self.errors = 0
            self.bad = 0
            self.last_error = None
            self.tag = None
            self.t_upgraded = now()  # the listener is made when the 101 has arrived

        def on_ws_connected(self, transport):
            self.wst = transport
            self.on_open()

        def on_ws_disconnected(self, transport):
            if not self.ready.done():
                why = f"connection lost before ready ({self.close_code})"
                self.ready.set_exception(ConnectionError(why))
            if not self.closed.done():
                self.closed.set_result(self.close_code)

        def on_ws_frame(self, transport, frame):
            t = now()
            mt = frame.msg_type
            if mt is _TEXT:
                if frame.fin:
                    payload = frame.get_payload_as_bytes()
                    if frame.rsv1 and self._inflater is not None:
                        payload = self._inflate(payload)
                else:
                    self._frag = [frame.get_payload_as_bytes()]
                    self._frag_rsv1 = frame.rsv1
                    return
            elif mt is _CONT:
                if self._frag is None:
                    return
                self._frag.append(frame.get_payload_as_bytes())
                if not frame.fin:
                    return
                payload = b"".join(self._frag)
                self._frag = None
                if self._frag_rsv1 and self._inflater is not None:
                    payload = self._inflate(payload)
            elif mt is _CLOSE:
                code = frame.get_close_code()
                self.close_code = getattr(code, "value", code)
                transport.send_close(code)
                transport.disconnect()
                return
            else:  # pings are answered by picows; pongs and binary are ignored
                return
            self.received += 1
            try:
                self.on_text(payload, t)
            except Exception as exc:  # noqa: BLE001 - a corrupted or unexpected frame
                self.bad += 1
                self.last_error = f"bad frame: {type(exc).__name__}: {exc}"

        def _inflate(self, payload: bytes) -> bytes:
            out = self._inflater.decompress(payload + _TAIL)
            if self._inflate_reset:
                self._inflater = zlib.decompressobj(-15)
            return out

        def send_text(self, payload: bytes):
            w = self.wst
            if w is None or w.is_disconnected or w.is_close_frame_sent:
                return False
            w.send(_TEXT, payload)
            return True

        def abort(self):
            """Drop the TCP connection without a close frame (a vanished client)."""
            if self.wst is not None:
                self.wst.disconnect(graceful=False)

        def close(self, code: int = 1000):
            w = self.wst
            if w is not None and not w.is_disconnected:
                if not w.is_close_frame_sent:
                    w.send_close(WSCloseCode(code))
                w.disconnect()

        def _fail(self, why: str):
            self.last_error = why
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(why))
            self.abort()

        def _error_frame(self, msg):
            self.errors += 1
            self.last_error = msg
            cb = getattr(self.sink, "on_error", None)
            if cb is not None:
                cb(self, msg)

        def on_open(self):
            pass

        def on_text(self, payload: bytes, t: float):
            pass

    class PicowsJPulseConn(JPulseDialect, PicowsConn):
        pass

    class PicowsPlainConn(PlainDialect, PicowsConn):
        pass

    PICOWS_DIALECTS: dict[str, type] = {
        "jpulse": PicowsJPulseConn,
        "flasksock": PicowsPlainConn,
        "picows": PicowsPlainConn,
    }
else:  # pragma: no cover - picows is in benchmarks/requirements.txt
    PICOWS_DIALECTS = {}


# --------------------------------------------------------------------------------------
# Target, monitor and helpers
# --------------------------------------------------------------------------------------

class Target:
    """Where to connect and how to speak. ``monitor`` (optional) reads server metrics."""

    def __init__(self, peer: str, host: str = "127.0.0.1", port: int = 5000, monitor=None,
                 count_port: int | None = None, client: str = "auto"):
        check_loopback(host)
        self.peer = peer
        self.cls = DIALECTS[peer]
        # "picows": the C client where the dialect allows (all but socketio), "raw": the
        # hand-rolled one everywhere; "auto" = picows when installed
        if client == "auto":
            client = "picows" if peer in PICOWS_DIALECTS else "raw"
        if client == "picows" and peer not in PICOWS_DIALECTS:
            raise ValueError(f"no picows client for peer {peer!r} (picows installed?)")
        self.client = client
        self.fast_cls = PICOWS_DIALECTS.get(peer) if client == "picows" else None
        self.host = host
        self.port = port
        self.monitor = monitor
        self.count_port = count_port or port


class NullSink:
    def on_tick(self, conn, data, t):
        pass

    def on_reply(self, conn, rid, data, t):
        pass


async def http_get_json(host: str, port: int, path: str, timeout: float = 5.0):
    """A tiny HTTP/1.0 GET returning parsed JSON (used for ``/count``)."""
    async def _go():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         "Connection: close\r\n\r\n".encode())
            raw = await reader.read(-1)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"GET {path}: {head[:80]!r}")
        return json.loads(body)
    return await asyncio.wait_for(_go(), timeout)


async def server_count(target: Target, timeout: float = 5.0) -> int | None:
    try:
        data = await http_get_json(target.host, target.count_port, "/count", timeout)
        return int(data["count"])
    except Exception:
        return None


async def wait_count(target: Target, pred: Callable[[int], bool], timeout: float,
                     interval: float = 0.05):
    """Poll /count until pred(count) holds; returns (count, seconds waited, ok)."""
    t0 = now()
    c = None
    while now() - t0 < timeout:
        c = await server_count(target, timeout=max(0.5, min(5.0, timeout)))
        if c is not None and pred(c):
            return c, now() - t0, True
        await asyncio.sleep(interval)
    return c, now() - t0, False


async def open_conn(target: Target, sink, deflate=False, rcvbuf: int | None = None,
                    timeout: float = 20.0, path: str | None = None,
                    mss: int | None = None) -> WSConn:
    """One connection, ready at the application level.

    ``rcvbuf`` and ``mss`` make a client that behaves like one on a slow link: on loopback
    the MSS is 64 KiB and the kernel would otherwise buffer ~3 MB towards a client that
    stops reading, hiding the server's behaviour for minutes."""
    loop = asyncio.get_running_loop()
    if target.fast_cls is not None and not (rcvbuf or mss):
        fast_cls = target.fast_cls
        url = f"ws://{target.host}:{target.port}{path or fast_cls.PATH}"
        headers = {"Sec-WebSocket-Extensions": DEFLATE_OFFER} if deflate else None

        def listener_factory(request=None, response=None):
            listener = fast_cls(sink)
            if deflate:
                listener.negotiate(response)
            return listener

        async def _fast():
            _, proto = await ws_connect(listener_factory, url, extra_headers=headers,
                                        websocket_handshake_timeout=timeout,
                                        read_buffer_init_size=4096, max_redirects=0)
            if proto is None:  # picows: the server hung up before any upgrade response
                raise ConnectionResetError("server closed the connection before the upgrade "
                                           "response")
            return await _ready(proto)

        return await asyncio.wait_for(_fast(), timeout)

    def factory():
        return target.cls(target.host, target.port, sink, deflate=deflate, path=path)

    async def _go():
        if rcvbuf or mss:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if mss:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (target.host, target.port))
            except BaseException:
                sock.close()
                raise
            _, proto = await loop.create_connection(factory, sock=sock)
        else:
            _, proto = await loop.create_connection(factory, target.host, target.port)
        return await _ready(proto)

    return await asyncio.wait_for(_go(), timeout)


async def _ready(proto):
    """``proto`` once its WebSocket handshake is done; aborted if it fails or is cancelled."""
    try:
        await proto.ready
    except BaseException:
        proto.abort()
        raise
    return proto


async def connect_many(target: Target, n: int, sink, deflate=False, concurrency=200,
                       timeout: float = 120.0, per_conn_timeout: float = 30.0):
    """Open n connections (at most ``concurrency`` handshakes in flight).

    Returns (conns, failures, seconds). Bounded by ``timeout`` overall."""
    sem = asyncio.Semaphore(concurrency)
    conns: list[WSConn] = []
    failures: list[str] = []

    async def one():
        async with sem:
            try:
                c = await open_conn(target, sink, deflate=deflate, timeout=per_conn_timeout)
                conns.append(c)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failures.append(f"{type(exc).__name__}: {exc}")

    t0 = now()
    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for p in pending:
        p.cancel()
        failures.append("timeout")
    if pending:
        await asyncio.wait(pending, timeout=5)
    return conns, failures, now() - t0


def close_all(conns, abrupt=True):
    for c in conns:
        if abrupt:
            c.abort()
        else:
            c.close()


def _busy_cpu_seconds() -> float | None:
    """Machine-wide busy CPU seconds (all cores), or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class Meter:
    """CPU use of the server (via target.monitor), of this process, and of everything else
    on the machine (``other_cpu_pct``: background load that disturbs the measurement)."""

    def __init__(self, target: Target):
        self.mon = target.monitor

    def start(self):
        self.t0 = now()
        self.p0 = time.process_time()
        self.s0 = self.mon.cpu_seconds() if self.mon else None
        self.b0 = _busy_cpu_seconds()
        return self

    def stop(self) -> dict:
        wall = max(1e-9, now() - self.t0)
        mine = time.process_time() - self.p0
        out = {"loadgen_cpu_pct": round(100.0 * mine / wall, 1)}
        server = 0.0
        if self.mon:
            server = self.mon.cpu_seconds() - self.s0
            out["server_cpu_pct"] = round(100.0 * server / wall, 1)
        b1 = _busy_cpu_seconds()
        if self.mon and self.b0 is not None and b1 is not None:
            out["other_cpu_pct"] = round(max(0.0, 100.0 * (b1 - self.b0 - mine - server) / wall), 1)
        return out


async def drain_server(target: Target, timeout: float = 60.0) -> dict:
    """After aborting clients: wait until the server reports 0 connections."""
    c, waited, ok = await wait_count(target, lambda x: x == 0, timeout)
    return {"drained": ok, "drain_s": round(waited, 3), "left": c}


def _pad(size: int) -> str:
    return "x" * max(0, size)


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------

class FanoutSink:
    """Counts deliveries of the current broadcast (or burst) and records latencies."""

    def __init__(self):
        self.lo = -1  # accepted seq range [lo, hi)
        self.hi = -1
        self.remaining = 0
        self.done: asyncio.Future | None = None
        self.lat: list[float] = []
        self.stale = 0
        self.errors = 0
        self.record = True
        self.ignore = None  # a connection whose deliveries are not awaited

    def arm(self, lo, hi, expected):
        self.lo, self.hi = lo, hi
        self.remaining = expected
        self.done = asyncio.get_running_loop().create_future()

    def on_tick(self, conn, data, t):
        seq = data["seq"]
        if conn is self.ignore:
            return
        if self.lo <= seq < self.hi:
            if self.record:
                self.lat.append(t - data["t"])
            self.remaining -= 1
            if self.remaining <= 0 and self.done is not None and not self.done.done():
                self.done.set_result(t)
        else:
            self.stale += 1

    def on_reply(self, conn, rid, data, t):
        pass

    def on_error(self, conn, msg):
        self.errors += 1


async def _closed_loop(conns, sink: FanoutSink, sender, expected, max_broadcasts, duration,
                       pad, warmup, per_timeout, seq0=0):
    """Run the closed loop; returns (broadcasts, elapsed, timeouts)."""
    seq = seq0
    # warm-up (not recorded)
    sink.record = False
    for _ in range(warmup):
        sink.arm(seq, seq + 1, expected)
        sender.trigger({"seq": seq, "t": now(), "pad": pad})
        seq += 1
        try:
            await asyncio.wait_for(sink.done, per_timeout)
        except asyncio.TimeoutError:
            return 0, 0.0, 1, seq
    sink.record = True
    timeouts = 0
    count = 0
    t0 = now()
    while count < max_broadcasts and now() - t0 < duration:
        sink.arm(seq, seq + 1, expected)
        sender.trigger({"seq": seq, "t": now(), "pad": pad})
        seq += 1
        try:
            await asyncio.wait_for(sink.done, per_timeout)
        except asyncio.TimeoutError:
            timeouts += 1
            break
        count += 1
    return count, now() - t0, timeouts, seq


async def worker_counts(target: Target, probes: int = 12) -> dict:
    """Connections per server worker: /count answers from whichever worker accepts."""
    seen: dict = {}
    for _ in range(probes):
        try:
            d = await http_get_json(target.host, target.count_port, "/count", 2.0)
            seen[str(d.get("pid"))] = d.get("count")
        except Exception:  # noqa: BLE001 - informational only
            pass
    return seen


async def scenario_fanout(target: Target, n: int, duration=10.0, max_broadcasts=5000, pad_size=64,
                          warmup=3, deflate=False, per_timeout=15.0, probe_workers=False,
                          workers: int = 1) -> dict:
    """Closed-loop fan-out. ``alive``: clients that got the last broadcast sent (n when
    every broadcast reached everyone; fewer when the loop stopped on a timeout)."""
    sink = FanoutSink()
    conns, fails, conn_s = await connect_many(target, n, sink, deflate=deflate)
    try:
        if len(conns) < n:
            return {"error": f"only {len(conns)}/{n} connected: {fails[:3]}",
                    "n": n, "alive": len(conns)}
        await asyncio.sleep(0.2)
        per_worker = (await worker_counts(target, probes=max(12, 8 * workers))
                      if probe_workers else None)
        m = Meter(target).start()
        count, elapsed, timeouts, _ = await _closed_loop(
            conns, sink, conns[0], n, max_broadcasts, duration, _pad(pad_size), warmup, per_timeout)
        cpu = m.stop()
        cpu["alive"] = n - max(0, sink.remaining)
        if per_worker is not None:
            cpu["per_worker_connections"] = per_worker
        if count == 0:
            return {"error": f"no broadcast completed (timeouts={timeouts}, stale={sink.stale}, "
                             f"{n - sink.remaining}/{n} got the first one)", "n": n, **cpu}
        res = {
            "n": n,
            "broadcasts": count,
            "elapsed_s": round(elapsed, 3),
            "deliveries_per_s": round(n * count / elapsed, 1),
            "p50_ms": _ms(pct(sink.lat, 50)),
            "p99_ms": _ms(pct(sink.lat, 99)),
            "max_ms": _ms(max(sink.lat)),
            "timeouts": timeouts,
            "deflate": bool(conns[0].deflate),
            "connect_s": round(conn_s, 3),
            **cpu,
        }
        if sink.errors:
            res["error_frames"] = sink.errors
        return res
    finally:
        close_all(conns)


async def scenario_burst(target: Target, n: int, k=50, rounds=5, duration=15.0, pad_size=64,
                         per_timeout=60.0) -> dict:
    sink = FanoutSink()
    conns, fails, _ = await connect_many(target, n, sink)
    try:
        if len(conns) < n:
            return {"error": f"only {len(conns)}/{n} connected: {fails[:3]}"}
        await asyncio.sleep(0.2)
        pad = _pad(pad_size)
        # warm-up round with k=1
        sink.record = False
        sink.arm(0, 1, n)
        conns[0].burst(1, 0, now(), pad)
        await asyncio.wait_for(sink.done, per_timeout)
        sink.record = True
        seq = 1
        total_time = 0.0
        done_rounds = 0
        timeouts = 0
        m = Meter(target).start()
        t_start = now()
        while done_rounds < rounds and now() - t_start < duration:
            sink.arm(seq, seq + k, n * k)
            t0 = now()
            conns[0].burst(k, seq, t0, pad)
            seq += k
            try:
                await asyncio.wait_for(sink.done, per_timeout)
            except asyncio.TimeoutError:
                timeouts += 1
                break
            total_time += now() - t0
            done_rounds += 1
        cpu = m.stop()
        if not done_rounds:
            return {"error": "no burst completed", **cpu}
        return {
            "n": n,
            "k": k,
            "rounds": done_rounds,
            "deliveries_per_s": round(n * k * done_rounds / total_time, 1),
            "p50_ms": _ms(pct(sink.lat, 50)),
            "p99_ms": _ms(pct(sink.lat, 99)),
            "round_ms": round(1000 * total_time / done_rounds, 1),
            "timeouts": timeouts,
            **cpu,
        }
    finally:
        close_all(conns)


class ReqRepSink:
    """Callback-driven closed loops: a reply sends that client's next request at once
    (no coroutine, future or timer per request: the load generator's cost per reply is a
    frame parse and a frame send). Stalls are found by a periodic sweep instead."""

    def __init__(self, target: Target):
        self.numeric = target.peer == "socketio"
        self.pending: dict[Any, float] = {}  # (id(conn), rid) -> send time
        self.out: dict[int, tuple[Any, float]] = {}  # id(conn) -> (key, send time)
        self.lat: list[float] = []
        self.errors = 0
        self.counter = itertools.count(1)
        self.replies = 0
        self.measuring = False
        self.stop_at = 0.0
        self.max_requests = 10**6
        self.active = 0
        self.done: asyncio.Future | None = None

    def start(self, conns, stop_at: float, measuring: bool):
        self.stop_at = stop_at
        self.measuring = measuring
        self.done = asyncio.get_running_loop().create_future()
        self.active = len(conns)
        for c in conns:
            self.fire(c)

    def fire(self, c):
        n = next(self.counter)
        rid = n if self.numeric else f"r{n}"
        t0 = now()
        key = (id(c), rid)
        self.pending[key] = t0
        self.out[id(c)] = (key, t0)
        c.echo(rid, {"n": n, "t": t0})

    def retire(self, c=None):
        if c is not None:
            self.out.pop(id(c), None)
        self.active -= 1
        if self.active <= 0 and self.done is not None and not self.done.done():
            self.done.set_result(True)

    def on_tick(self, conn, data, t):
        pass

    def on_reply(self, conn, rid, data, t):
        t0 = self.pending.pop((id(conn), rid), None)
        if t0 is None:
            return
        if self.measuring:
            self.lat.append(t - t0)
            self.replies += 1
        if t < self.stop_at and self.replies < self.max_requests:
            self.fire(conn)
        else:
            self.retire(conn)

    def sweep(self, per_timeout: float) -> int:
        """Give up on requests older than per_timeout; returns how many."""
        limit = now() - per_timeout
        stale = [(cid, key) for cid, (key, t0) in self.out.items() if t0 < limit]
        for cid, key in stale:
            self.pending.pop(key, None)
            self.out.pop(cid, None)
            self.retire()
        return len(stale)

    def on_error(self, conn, msg):
        self.errors += 1


async def scenario_reqrep(target: Target, clients: int, duration=5.0, max_requests=10**6,
                          per_timeout=10.0, warmup=1.0) -> dict:
    sink = ReqRepSink(target)
    sink.max_requests = max_requests
    conns, fails, _ = await connect_many(target, clients, sink)
    timeouts = 0

    async def phase(length: float, measuring: bool):
        nonlocal timeouts
        sink.start(conns, now() + length, measuring)
        deadline = now() + length + per_timeout + 5
        while not sink.done.done() and now() < deadline:
            await asyncio.wait([sink.done], timeout=0.25)
            timeouts += sink.sweep(per_timeout)
        if not sink.done.done():
            timeouts += sink.sweep(0.0)

    try:
        if len(conns) < clients:
            return {"error": f"only {len(conns)}/{clients} connected: {fails[:3]}"}
        await phase(warmup, False)  # warm-up
        timeouts = 0
        sink.lat.clear()
        m = Meter(target).start()
        t0 = now()
        await phase(duration, True)
        elapsed = now() - t0
        cpu = m.stop()
        replies = sink.replies
        return {
            "clients": clients,
            "replies": replies,
            "replies_per_s": round(replies / elapsed, 1),
            "p50_ms": _ms(pct(sink.lat, 50)),
            "p99_ms": _ms(pct(sink.lat, 99)),
            "timeouts": timeouts,
            **cpu,
        }
    finally:
        close_all(conns)


async def scenario_idle(target: Target, n: int, hold=10.0, cpu_window=10.0, cleanup_timeout=120.0,
                        settle_timeout=60.0, idle_cpu_threshold=5.0) -> dict:
    """Idle connections: connect rate, RSS per connection, idle CPU, cleanup after a mass
    abrupt disconnect. Needs target.monitor (RSS/CPU) and the /count endpoint."""
    mon = target.monitor
    sink = NullSink()
    # warm-up: a few connections so that lazily imported code paths are loaded
    warm, _, _ = await connect_many(target, 5, sink)
    close_all(warm, abrupt=False)
    await wait_count(target, lambda x: x == 0, 15.0)
    await asyncio.sleep(0.5)
    rss0 = mon.rss() if mon else None
    m = Meter(target).start()
    conns, fails, conn_s = await connect_many(target, n, sink, concurrency=200,
                                               timeout=max(60.0, n / 50.0))
    cpu_connect = m.stop()
    res: dict[str, Any] = {
        "n": n,
        "connected": len(conns),
        "connect_failures": len(fails),
        "connect_s": round(conn_s, 3),
        "connects_per_s": round(len(conns) / conn_s, 1) if conn_s > 0 else None,
        "connect_server_cpu_pct": cpu_connect.get("server_cpu_pct"),
        "connect_loadgen_cpu_pct": cpu_connect.get("loadgen_cpu_pct"),
    }
    if fails:
        res["first_failure"] = fails[0]
    try:
        c, waited, ok = await wait_count(target, lambda x: x >= len(conns), 30.0, 0.1)
        res["server_count"] = c
        await asyncio.sleep(hold)
        if mon:
            rss1 = mon.rss()
            res["rss_before_mb"] = round(rss0 / 2**20, 1)
            res["rss_after_mb"] = round(rss1 / 2**20, 1)
            if conns:
                res["kb_per_conn"] = round((rss1 - rss0) / 1024.0 / len(conns), 2)
        m = Meter(target).start()
        await asyncio.sleep(cpu_window)
        idle = m.stop()
        res["idle_server_cpu_pct"] = idle.get("server_cpu_pct")
        res["idle_loadgen_cpu_pct"] = idle.get("loadgen_cpu_pct")
        res["other_cpu_pct"] = idle.get("other_cpu_pct")
    finally:
        # the client side vanishes at once: no close frames
        t0 = now()
        cpu0 = mon.cpu_seconds() if mon else None
        close_all(conns, abrupt=True)
    c, waited, ok = await wait_count(target, lambda x: x == 0, cleanup_timeout, 0.05)
    res["cleanup_s"] = round(waited, 3) if ok else None
    res["cleanup_left"] = c
    if mon:
        # CPU back to idle: first 0.5 s window under the threshold
        settle = None
        while now() - t0 < cleanup_timeout + settle_timeout:
            a = mon.cpu_seconds()
            w0 = now()
            await asyncio.sleep(0.5)
            p = 100.0 * (mon.cpu_seconds() - a) / (now() - w0)
            if p < idle_cpu_threshold:
                settle = w0 - t0
                break
        res["cpu_settle_s"] = round(settle, 3) if settle is not None else None
        res["cleanup_cpu_s"] = round(mon.cpu_seconds() - cpu0, 3)
    return res


async def scenario_slow(target: Target, n: int = 1000, duration=5.0, pad_size=1024,
                        rcvbuf=4096, mss=1200, per_timeout=10.0, check_s=3.0,
                        max_slow_s: float | None = None) -> dict:
    """One of n clients stops reading; the others' latency must not move.

    Phase A: closed-loop fan-out, everyone reads. Phase B: the slow client (a small
    receive buffer and an internet-like MSS) stops reading; same loop, for ``duration``
    seconds, or longer (up to ``max_slow_s``) until the server drops the slow client.
    Completion is counted on the n-1 others. Afterwards the slow client reads what it was
    sent, to check that its stream is intact (or was closed cleanly)."""
    sink = FanoutSink()
    conns, fails, _ = await connect_many(target, n - 1, sink)
    slow = None
    try:
        if len(conns) < n - 1:
            return {"error": f"only {len(conns)}/{n - 1} connected: {fails[:3]}"}
        slow = await open_conn(target, sink, rcvbuf=rcvbuf, mss=mss)
        sink.ignore = slow
        await asyncio.sleep(0.2)
        pad = _pad(pad_size)
        expected = n - 1
        m = Meter(target).start()
        ca, ea, ta, seq = await _closed_loop(conns, sink, conns[0], expected, 10**6, duration,
                                             pad, 3, per_timeout)
        cpu_a = m.stop()
        lat_a = sink.lat
        sink.lat = []
        slow.transport.pause_reading()
        mon = target.monitor
        rss_b0 = mon.rss() if mon else None
        m = Meter(target).start()
        cb, eb, tb, seq = await _closed_loop(conns, sink, conns[0], expected, 10**6, duration,
                                             pad, 0, per_timeout, seq0=seq)
        extra_b = 0.0
        if max_slow_s and max_slow_s > duration and not tb:
            # go on (same loop) until the server drops the slow client, bounded in time
            t_x = now()
            while not tb and not slow.closed.done() and now() - t_x < max_slow_s - duration:
                c2, e2, tb, seq = await _closed_loop(conns, sink, conns[0], expected, 10**6, 1.0,
                                                     pad, 0, per_timeout, seq0=seq)
                cb += c2
                eb += e2
            extra_b = now() - t_x
        cpu_b = m.stop()
        rss_b1 = mon.rss() if mon else None
        lat_b = sink.lat
        # let the slow client read what it was sent: was its stream intact?
        before = slow.received
        sink.record = False
        if slow.transport is not None:
            slow.transport.resume_reading()
            t_end = now() + check_s
            while now() < t_end and slow.transport is not None:
                got = slow.received
                await asyncio.sleep(0.25)
                if slow.received == got and got > before:
                    break
        res = {
            "n": n,
            "pad_bytes": pad_size,
            "base_deliveries_per_s": round(expected * ca / ea, 1) if ca else None,
            "base_p50_ms": _ms(pct(lat_a, 50)),
            "base_p99_ms": _ms(pct(lat_a, 99)),
            "slow_deliveries_per_s": round(expected * cb / eb, 1) if cb else None,
            "slow_p50_ms": _ms(pct(lat_b, 50)),
            "slow_p99_ms": _ms(pct(lat_b, 99)),
            "slow_broadcasts": cb,
            "slow_phase_s": round(eb, 2),
            "slow_phase_extended_s": round(extra_b, 2),
            "server_rss_growth_mb": round((rss_b1 - rss_b0) / 2**20, 1) if mon else None,
            "slow_timeouts": tb,
            "slow_client_closed": slow.closed.done(),
            "slow_client_close_code": slow.close_code,
            "slow_client_frames": slow.received,
            "slow_client_bad_frames": slow.bad,
            "other_cpu_pct": cpu_b.get("other_cpu_pct"),
            "slow_client_expected_frames": seq + {"jpulse": 1, "socketio": 2}.get(target.peer, 0),
            "server_cpu_pct": cpu_b.get("server_cpu_pct"),
            "loadgen_cpu_pct": cpu_b.get("loadgen_cpu_pct"),
            "base_server_cpu_pct": cpu_a.get("server_cpu_pct"),
        }
        if res["base_p99_ms"] and res["slow_p99_ms"]:
            res["p99_ratio_slow_vs_base"] = round(res["slow_p99_ms"] / res["base_p99_ms"], 2)
        if tb:
            res["error"] = "the others stalled behind the slow consumer (broadcast timed out)"
        return res
    finally:
        close_all(conns)
        if slow is not None:
            slow.abort()


# --------------------------------------------------------------------------------------
# Reconnect storm
# --------------------------------------------------------------------------------------

_STATUS_RE = re.compile(r"HTTP/1\.[01] (\d{3})")
_CLOSED_RE = re.compile(r"before ready \((\d+)\)")

#: What the browser client (flask_jpulse_ws/static/jpulse-ws.js, ``closeAction``) does on
#: a close code; anything not listed is retried with the next backoff step.
_STOP_CODES = (4401, 4403)  # 'auth': the client ends
_FULL_CODE = 4529  # 'full': retry after the longest delay
_REPLACED_CODE = 4409  # 'replaced': after a welcome, reopen at once with a new id


def handshake_error_kind(exc: BaseException) -> tuple[str, int | None]:
    """A failed handshake as a short kind (``http_503``, ``timeout``, ``reset``,
    ``refused``, ``closed_4529``, ``closed_before_ready``, ``eaddrnotavail``, ...) and the
    close code when the server closed the socket before the app-level welcome."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", None
    status = getattr(getattr(exc, "response", None), "status", None)  # picows
    if status is not None and int(status) != 101:
        return f"http_{int(status)}", None
    msg = str(exc)
    m = _STATUS_RE.search(msg)  # the hand-rolled client: "handshake refused: 'HTTP/1.1 503 ..'"
    if m:
        return f"http_{m.group(1)}", None
    m = _CLOSED_RE.search(msg)
    if m:
        return f"closed_{m.group(1)}", int(m.group(1))
    if "before ready" in msg:
        return "closed_before_ready", None
    if "socket.io connect error" in msg:
        return "socketio_connect_error", None
    if "engine.io close" in msg:
        return "engineio_close", None
    if isinstance(exc, ConnectionRefusedError):
        return "refused", None
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset", None
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, f"errno_{exc.errno}").lower(), None
    return type(exc).__name__, None


async def total_count(target: Target, workers: int, timeout: float = 10.0):
    """The server's connection count summed over its ``workers`` processes: ``/count``
    answers from whichever worker accepts, so it is asked until every pid has answered.
    Returns (total or None when not every worker answered in time, {pid: count})."""
    seen: dict[str, int] = {}
    t0 = now()
    tries = 0
    while now() - t0 < timeout and tries < 40 * max(1, workers):
        tries += 1
        try:
            d = await http_get_json(target.host, target.count_port, "/count",
                                    max(0.5, min(5.0, timeout - (now() - t0))))
            seen[str(d.get("pid"))] = int(d.get("count"))
        except Exception:  # noqa: BLE001 - a busy server; try again
            await asyncio.sleep(0.05)
        if len(seen) >= workers:
            return sum(seen.values()), seen
    return None, seen


class StormSink:
    """Counts which connections received the current probe broadcast."""

    def __init__(self):
        self.seq = 10**6
        self.got: set[int] = set()
        self.expected = 0
        self.done: asyncio.Future | None = None
        self.errors = 0

    def arm(self, expected: int) -> int:
        self.seq += 1
        self.got = set()
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()
        return self.seq

    def on_tick(self, conn, data, t):
        if isinstance(data, dict) and data.get("seq") == self.seq and self.done is not None:
            self.got.add(id(conn))
            if len(self.got) >= self.expected and not self.done.done():
                self.done.set_result(t)

    def on_reply(self, conn, rid, data, t):
        pass

    def on_error(self, conn, msg):
        self.errors += 1


async def _probe_alive(conns: list, sink: StormSink, timeout: float) -> int:
    """One broadcast through the server (cross-worker when there are several): how many of
    the open connections receive it within ``timeout``. A second sender is tried when
    nobody got the first one (the sender itself may be the dead one)."""
    live = [c for c in conns if not c.closed.done()]
    if not live:
        return 0
    best = 0
    for sender in (live[0], live[len(live) // 2])[: 2 if len(live) > 1 else 1]:
        seq = sink.arm(len(live))
        sender.trigger({"seq": seq, "t": now(), "pad": ""})
        try:
            await asyncio.wait_for(asyncio.shield(sink.done), timeout)
        except asyncio.TimeoutError:
            pass
        best = max(best, len(sink.got))
        if best:
            break
    return best


class _LagMonitor:
    """The load generator's own event-loop lag: how late a 50 ms timer fires (it cannot
    keep up with the storm when this grows to hundreds of ms)."""

    def __init__(self, period: float = 0.05):
        self.period = period
        self.max_lag = 0.0
        self.lags: list[float] = []
        self.task = None

    async def _run(self):
        while True:
            t = now()
            await asyncio.sleep(self.period)
            lag = max(0.0, now() - t - self.period)
            self.lags.append(lag)
            self.max_lag = max(self.max_lag, lag)

    def start(self):
        self.task = asyncio.ensure_future(self._run())
        return self

    def stop(self) -> dict:
        if self.task is not None:
            self.task.cancel()
        return {"loadgen_max_lag_ms": _ms(self.max_lag),
                "loadgen_p99_lag_ms": _ms(pct(self.lags, 99))}


class _StormClient:
    __slots__ = ("cid", "token", "conn", "attempts", "tries", "timer", "task")

    def __init__(self, cid):
        self.cid = cid  # ours: the id sent as ?uuid= (the browser keeps it across sockets)
        self.token = None  # and its resume token, sent as ?resume=
        self.conn = None
        self.attempts = 0  # failed attempts in a row (the browser's counter)
        self.tries = 0  # handshakes started since the drop
        self.timer = None
        self.task = None


async def scenario_storm(target: Target, n: int = 10000, workers: int = 1, concurrency=250,
                         deadline=120.0, base_s=5.0, max_delay_s=30.0, jitter=0.2,
                         max_attempts=10, handshake_timeout=35.0, count_timeout=60.0,
                         probe_timeout=10.0, connect_timeout: float | None = None) -> dict:
    """Reconnect storm: open n sockets (``concurrency`` handshakes in flight), check the
    server counts n, drop every socket at once (TCP abort, no close frame), then let each
    client come back on its own as the browser client does (jpulse-ws.js
    ``retryAfterFailure``): attempt k after ``min(base_s * k, max_delay_s)`` seconds times
    ``(1 - jitter * random())``, so the first wave lands 4-5 s after the drop; a failed or
    timed-out handshake (``handshake_timeout``: the browser's max(10 s, ping 30 s + pong
    5 s)) moves to the next step; after ``max_attempts`` failures in a row a client gives
    up. Ours reconnects with ``?uuid=`` its previous client id and ``?resume=`` its token, as
    the browser does.
    Everything stops ``deadline`` seconds after the drop; then one broadcast checks which
    connections are really alive."""
    loop = asyncio.get_running_loop()
    rnd = random.Random()
    sink = StormSink()
    ours = target.peer == "jpulse"
    base_path = (target.fast_cls or target.cls).PATH

    def path_of(cl: _StormClient):
        if not ours:
            return None
        return f"{base_path}?uuid={cl.cid}" + (f"&resume={cl.token}" if cl.token else "")

    clients = [_StormClient(str(uuid.uuid4()) if ours else None) for _ in range(n)]
    res: dict[str, Any] = {"n": n, "workers": workers, "deadline_s": deadline}
    lat: list[float] = []
    failures: dict[str, int] = {}
    samples: dict[str, str] = {}
    closed_after: dict[str, int] = {}
    upgraded: list[float] = []  # attempt start -> the 101 (the rest is the welcome)
    st = {"up": 0, "attempts": 0, "inflight": 0, "peak": 0, "gave_up": 0, "stopped": 0,
          "stopping": False, "first_back": None, "first_try": None, "meter": None}
    all_back = loop.create_future()
    tasks: set = set()

    def adopt(cl, c):
        cl.conn = c
        cid = getattr(c, "client_id", None)
        if ours and cid:
            cl.cid, cl.token = cid, getattr(c, "resume_token", None)

    try:
        # -- 1. open all n --------------------------------------------------------------
        sem = asyncio.Semaphore(concurrency)
        first_fail: dict[str, int] = {}

        async def first(cl):
            async with sem:
                try:
                    c = await open_conn(target, sink, path=path_of(cl), timeout=30.0)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    kind = handshake_error_kind(exc)[0]
                    first_fail[kind] = first_fail.get(kind, 0) + 1
                    samples.setdefault(f"open:{kind}", f"{type(exc).__name__}: {exc}"[:200])
                else:
                    adopt(cl, c)

        t0 = now()
        opening = [asyncio.ensure_future(first(cl)) for cl in clients]
        _, pending = await asyncio.wait(opening, timeout=connect_timeout or max(60.0, n / 40.0))
        for p in pending:
            p.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
            first_fail["open_timeout"] = len(pending)
        connected = sum(1 for cl in clients if cl.conn is not None)
        res.update(connected=connected, connect_s=round(now() - t0, 2))
        if first_fail:
            res["connect_failures"] = first_fail
        if not connected:
            res["error"] = f"no connection opened: {first_fail} {list(samples.values())[:2]}"
            return res
        # -- 2. the server counts them (every worker) ------------------------------------
        t0 = now()
        count, per = None, {}
        while now() - t0 < count_timeout:
            count, per = await total_count(target, workers, timeout=10.0)
            if count is not None and count >= connected:
                break
            await asyncio.sleep(0.25)
        res["server_count_before"] = count
        res["per_worker_before"] = per
        opened = [cl.conn for cl in clients if cl.conn is not None]
        res["alive_before"] = await _probe_alive(opened, sink, probe_timeout)

        # -- 3. drop everything, reconnect with the browser's backoff --------------------
        def schedule(cl, fixed=None):
            if st["stopping"]:
                return
            if cl.attempts >= max_attempts:
                st["gave_up"] += 1
                return
            cl.attempts += 1
            d = fixed if fixed is not None else min(base_s * cl.attempts, max_delay_s)
            cl.timer = loop.call_later(d * (1.0 - jitter * rnd.random()), start, cl)

        def start(cl):
            cl.timer = None
            if st["stopping"]:
                return
            cl.task = asyncio.ensure_future(attempt(cl))
            tasks.add(cl.task)
            cl.task.add_done_callback(tasks.discard)

        def on_closed(cl, c):
            if cl.conn is not c:
                return
            cl.conn = None
            st["up"] -= 1
            if st["stopping"]:
                return
            code = c.close_code
            closed_after[str(code)] = closed_after.get(str(code), 0) + 1
            if code == _REPLACED_CODE and ours:
                cl.cid, cl.token = str(uuid.uuid4()), None  # reopenAsNewClient: a new id
                start(cl)
            elif code in _STOP_CODES or (code is not None and 4000 <= code <= 4499
                                         and code != _FULL_CODE):
                st["stopped"] += 1
            else:
                schedule(cl, max_delay_s if code == _FULL_CODE else None)

        async def attempt(cl):
            if st["meter"] is None:  # CPU over the reconnect window, not the quiet backoff
                st["first_try"] = now()
                st["meter"] = Meter(target).start()
            st["attempts"] += 1
            st["inflight"] += 1
            st["peak"] = max(st["peak"], st["inflight"])
            cl.tries += 1
            t_a = now()
            try:
                c = await open_conn(target, sink, path=path_of(cl), timeout=handshake_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed handshake: counted, retried
                kind, code = handshake_error_kind(exc)
                failures[kind] = failures.get(kind, 0) + 1
                samples.setdefault(kind, f"{type(exc).__name__}: {exc}"[:200])
                if code in _STOP_CODES or (code is not None and 4000 <= code <= 4499
                                           and code not in (_FULL_CODE, _REPLACED_CODE)):
                    st["stopped"] += 1
                else:
                    schedule(cl, max_delay_s if code == _FULL_CODE else None)
                return
            finally:
                st["inflight"] -= 1
            if st["stopping"]:
                c.abort()
                return
            t = now()
            lat.append(t - t_a)
            if c.t_upgraded is not None:
                upgraded.append(c.t_upgraded - t_a)
            adopt(cl, c)
            cl.attempts = 0
            st["up"] += 1
            if st["first_back"] is None:
                st["first_back"] = t
            if st["up"] >= n and not all_back.done():
                all_back.set_result(t)
            c.closed.add_done_callback(lambda _f, cl=cl, c=c: on_closed(cl, c))

        lagmon = _LagMonitor().start()
        t_drop = now()
        for cl in clients:
            if cl.conn is not None:
                cl.conn.abort()
                cl.conn = None
        for cl in clients:  # every client, also one that never got in: it comes back too
            schedule(cl)
        try:
            await asyncio.wait_for(asyncio.shield(all_back), deadline)
        except asyncio.TimeoutError:
            pass
        t_end = now()
        cpu = st["meter"].stop() if st["meter"] is not None else {}
        lag = lagmon.stop()
        back = st["up"]
        st["stopping"] = True
        pending_timers = sum(1 for cl in clients if cl.timer is not None)
        for cl in clients:
            if cl.timer is not None:
                cl.timer.cancel()
                cl.timer = None
        inflight = list(tasks)
        for tk in inflight:
            tk.cancel()
        if inflight:
            await asyncio.wait(inflight, timeout=10)
        tries = [cl.tries for cl in clients]
        res.update({
            "all_back_s": round(all_back.result() - t_drop, 3) if all_back.done() else None,
            "back": back,
            "not_back": n - back,
            "first_back_s": round(st["first_back"] - t_drop, 3) if st["first_back"] else None,
            "first_try_s": round(st["first_try"] - t_drop, 3) if st["first_try"] else None,
            "storm_s": round(t_end - t_drop, 3),
            "p50_ms": _ms(pct(lat, 50)),
            "p99_ms": _ms(pct(lat, 99)),
            "max_ms": _ms(max(lat)) if lat else None,
            "upgrade_p50_ms": _ms(pct(upgraded, 50)),
            "upgrade_p99_ms": _ms(pct(upgraded, 99)),
            "reconnect_attempts": st["attempts"],
            "failed_attempts": sum(failures.values()),
            "failures_by_kind": dict(sorted(failures.items(), key=lambda kv: -kv[1])),
            "clients_retried": sum(1 for k in tries if k > 1),
            "max_tries": max(tries) if tries else 0,
            "gave_up": st["gave_up"],
            "stopped_by_close_code": st["stopped"],
            "closed_after_welcome": closed_after,
            "waiting_at_deadline": pending_timers,
            "in_flight_at_deadline": len(inflight),
            "peak_in_flight": st["peak"],
            **cpu,
            **lag,
        })
        if samples:
            res["failure_samples"] = samples
        # -- 4. who is really alive -----------------------------------------------------
        await asyncio.sleep(1.0)
        live = [cl.conn for cl in clients if cl.conn is not None and not cl.conn.closed.done()]
        res["open_at_end"] = len(live)
        t0 = now()
        count, per = None, {}
        while now() - t0 < 15.0:  # the server may still be cleaning up the dropped sockets
            count, per = await total_count(target, workers, timeout=5.0)
            if count is not None and count <= len(live):
                break
            await asyncio.sleep(0.5)
        res["server_count_end"] = count
        res["per_worker_end"] = per
        res["alive"] = await _probe_alive(live, sink, probe_timeout)
        res["probe_error_frames"] = sink.errors
        notes = []
        if back < n:
            notes.append(f"{n - back}/{n} not back after {deadline:g} s")
        if res["alive"] < n:
            notes.append(f"{n - res['alive']}/{n} did not receive the final broadcast")
        if cpu.get("loadgen_cpu_pct", 0) >= 90 or (lag["loadgen_max_lag_ms"] or 0) >= 500:
            notes.append("the load generator was saturated during the storm "
                         "(handshake latencies include its own queueing)")
        if notes:
            res["warning"] = "; ".join(notes)
        return res
    finally:
        st["stopping"] = True
        for cl in clients:
            if cl.timer is not None:
                cl.timer.cancel()
        for tk in list(tasks):
            tk.cancel()
        close_all([cl.conn for cl in clients if cl.conn is not None])


SCENARIOS = {
    "fanout": scenario_fanout,
    "burst": scenario_burst,
    "reqrep": scenario_reqrep,
    "idle": scenario_idle,
    "slow": scenario_slow,
    "storm": scenario_storm,
}


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

class PidMonitor:
    """RSS and CPU seconds of a process and its children (psutil)."""

    def __init__(self, pid: int):
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self._procs: dict[int, Any] = {}

    def procs(self):
        ps = self._psutil
        try:
            current = [self.root] + self.root.children(recursive=True)
        except ps.NoSuchProcess:
            return []
        out = []
        for p in current:
            out.append(self._procs.setdefault(p.pid, p))
        return out

    def rss(self) -> int:
        total = 0
        for p in self.procs():
            try:
                total += p.memory_info().rss
            except self._psutil.Error:
                pass
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except self._psutil.Error:
                pass
        return total


def raise_nofile():
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", choices=sorted(DIALECTS), required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--server-pid", type=int, help="server (gunicorn master) pid for RSS/CPU")
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--n", type=int, default=1000,
                    help="connections (fanout/burst/idle/slow/storm)")
    ap.add_argument("--clients", type=int, default=50, help="reqrep clients")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--k", type=int, default=50, help="burst size")
    ap.add_argument("--deflate", action="store_true", help="offer permessage-deflate (fanout)")
    ap.add_argument("--client", choices=("auto", "picows", "raw"), default="auto",
                    help="WebSocket client: picows (C; not for socketio) or the hand-rolled one")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--workers", type=int, default=1,
                    help="server worker processes (storm: /count is summed over them)")
    ap.add_argument("--deadline", type=float, default=120.0,
                    help="storm: seconds after the drop until everything stops")
    args = ap.parse_args(argv)
    raise_nofile()
    mon = PidMonitor(args.server_pid) if args.server_pid else None
    target = Target(args.peer, args.host, args.port, monitor=mon, client=args.client)
    if args.scenario == "fanout":
        coro = scenario_fanout(target, args.n, duration=args.duration, deflate=args.deflate)
    elif args.scenario == "burst":
        coro = scenario_burst(target, args.n, k=args.k, duration=args.duration)
    elif args.scenario == "reqrep":
        coro = scenario_reqrep(target, args.clients, duration=args.duration)
    elif args.scenario == "idle":
        coro = scenario_idle(target, args.n, hold=args.duration, cpu_window=args.duration)
    elif args.scenario == "storm":
        coro = scenario_storm(target, args.n, workers=args.workers, deadline=args.deadline)
    else:
        coro = scenario_slow(target, args.n, duration=args.duration)
    res = run(coro) if args.loop == "uvloop" else asyncio.run(coro)
    res["client"] = target.client
    res["loop"] = args.loop if uvloop is not None else "asyncio"
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    sys.exit(main())
