"""A sans-I/O WebSocket (RFC 6455) codec: handshake, frame encoding, decoding (pure).

Why our own and not simple-websocket/wsproto: simple-websocket 1.1.0 ignores the
return value of ``sock.send()`` and corrupts frames under gevent, and wsproto's
per-connection encoder would encode a broadcast once per recipient. Server frames
are unmasked, so one encoded frame serves every recipient. Compression
(permessage-deflate) is not negotiated; see docs/performance.md for why.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import os
import struct
from typing import Any, List, Mapping, Optional, Tuple, Union

from ..config import MAX_FRAGMENTS

__all__ = [
    "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
    "ProtocolError", "accept_key", "handshake_response", "encode_frame",
    "text_frame", "close_frame", "parse_close", "FrameDecoder", "Event",
]

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: (opcode, payload); for OP_CLOSE the payload is the raw close body.
Event = Tuple[int, bytes]


#: Bytes each fragment of a message counts against the message size cap besides its
#: payload: empty or one-byte fragments would otherwise cost CPU and memory for nothing.
FRAGMENT_COST = 16


class ProtocolError(Exception):
    """The peer broke the protocol; close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        #: Whole events decoded from the same bytes before the bad frame (to deliver).
        self.events: List[Tuple[int, bytes]] = []
        #: The opcode of the bad frame, when a decoder raised: after a bad close frame
        #: the peer sends no other, so the closing handshake ends with ours.
        self.opcode: Optional[int] = None


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_client_key(key: Optional[str]) -> bool:
    """A key must be base64 of 16 bytes."""
    if not key:
        return False
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


def handshake_response(key: str) -> bytes:
    """The ``101 Switching Protocols`` response, without extensions."""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key).encode("ascii") + b"\r\n\r\n")


def client_key() -> str:
    """A fresh ``Sec-WebSocket-Key`` (base64 of 16 random bytes)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def upgrade_request(host: str, port: int, target: str, key: str,
                    headers: Optional[Mapping[str, str]] = None) -> bytes:
    """The client's upgrade request for ``target`` (path and query) on ``host:port``."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upgrade_response(head: bytes, key: str) -> Tuple[int, bool]:
    """(HTTP status, whether ``Sec-WebSocket-Accept`` answers ``key``) of a response head
    (the bytes before its blank line); status 0 when the status line is unreadable."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    try:
        status = int(parts[1]) if len(parts) >= 2 else 0
    except ValueError:
        status = 0
    expected = accept_key(key).encode("ascii")
    accepted = any(name.strip().lower() == b"sec-websocket-accept" and value.strip() == expected
                   for name, _, value in (line.partition(b":") for line in lines[1:]))
    return status, accepted


def _mask_in_python(data: bytes, key: bytes) -> bytes:
    # XOR as one big integer: C speed for any length, no per-byte Python loop.
    n = len(data)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little")


try:
    # websockets' C helper: 0.19 against 1.1 us for a 100-byte frame, 1.8 against 150 us
    # for 64 KiB (measured here); every frame a client sends is masked.
    from websockets.speedups import apply_mask as _mask
except ImportError:  # pragma: no cover - a platform without its compiled wheel
    _mask = _mask_in_python  # type: ignore[assignment]  # narrower argument types


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = False) -> bytes:
    """One frame; ``mask=True`` for frames a client sends."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mbit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mbit | 127, n)
    if mask:
        key = os.urandom(4)
        return header + key + _mask(payload, key)
    return header + payload


def text_frame(payload: bytes) -> bytes:
    """An unmasked text frame (server to client) around UTF-8 JSON bytes."""
    return encode_frame(OP_TEXT, payload)


def close_body(code: int, reason: str = "") -> bytes:
    body = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    return body


def close_frame(code: int, reason: str = "", mask: bool = False) -> bytes:
    return encode_frame(OP_CLOSE, close_body(code, reason), mask=mask)


def _valid_close_code(code: int) -> bool:
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


def parse_close(body: bytes) -> Tuple[int, str]:
    """Code and reason of a close frame body; 1005 when it has none."""
    if not body:
        return 1005, ""
    if len(body) == 1:
        raise ProtocolError(1002, "close frame with a one-byte body")
    code = struct.unpack("!H", body[:2])[0]
    if not _valid_close_code(code):
        raise ProtocolError(1002, f"invalid close code {code}")
    try:
        reason = body[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(1007, "close reason is not UTF-8") from None
    return code, reason


class FrameDecoder:
    """Turns received bytes into whole messages and control frames.

    :param max_message_size: a message (all fragments) larger than this raises 1009
        as soon as its header says so, before the payload is buffered.
    :param expect_mask: servers require masked frames, clients unmasked ones.
    """

    def __init__(self, max_message_size: int, expect_mask: bool = True,
                 max_fragments: int = MAX_FRAGMENTS) -> None:
        self._max = max_message_size
        self._expect_mask = expect_mask
        self._max_fragments = max_fragments
        self._buf = bytearray()
        self._frag_op: Optional[int] = None
        self._frags = bytearray()  # one buffer: a fragment costs its bytes, nothing more
        self._frag_count = 0
        self._frag_len = 0  # counted size: payload plus FRAGMENT_COST per fragment
        self._utf8: Any = None  # incremental check of a fragmented text message
        self._checked = 0  # payload bytes of the incomplete head frame already checked
        self._opcode: Optional[int] = None  # of the frame being decoded
        self._skip = 0  # skim(): payload bytes of the current frame still to pass over

    def feed(self, data: Union[bytes, bytearray]) -> List[Event]:
        """Add received bytes; return the complete events, in order.

        :raises ProtocolError: the events decoded before the bad frame are on the
            exception (``events``): a valid message is never lost to a later error.
        """
        if not self._buf and self._frag_op is None and self._expect_mask:
            whole = self._lone_text_frame(data)
            if whole is not None:
                return [(OP_TEXT, whole)]
        events: List[Event] = []
        try:
            return self._feed(data, events)
        except ProtocolError as exc:
            exc.events = events
            exc.opcode = self._opcode
            raise

    def _lone_text_frame(self, data: Union[bytes, bytearray]) -> Optional[bytes]:
        """The payload when ``data`` is exactly one whole, final, masked text frame of
        under 64 KiB with valid UTF-8 (what a client sends nearly every time), else None:
        then the general path decodes it, errors included. Nothing is buffered."""
        n = len(data)
        if n < 6 or data[0] != 0x81:  # FIN + text, no reserved bits
            return None
        length = data[1] ^ 0x80  # the mask bit must be set: it leaves 0-127
        if length < 126:
            hdr = 6
        elif length == 126 and n >= 8:
            length = (data[2] << 8) | data[3]
            hdr = 8
        else:
            return None  # unmasked (>= 128 here), a 64-bit length, or too short
        if n != hdr + length or length > self._max:
            return None
        payload = _mask(bytes(data[hdr:]), bytes(data[hdr - 4:hdr]))
        if not payload.isascii():  # ASCII (most JSON) is valid UTF-8: no str to build
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return payload

    def _feed(self, data: Union[bytes, bytearray], events: List[Event]) -> List[Event]:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                fin = b0 & 0x80
                self._opcode = opcode = b0 & 0x0F  # named on a ProtocolError
                if b0 & 0x70:
                    raise ProtocolError(1002, "reserved bits set (no extension negotiated)")
                masked = b1 & 0x80
                if bool(masked) != self._expect_mask:
                    raise ProtocolError(1002, "client frames must be masked" if self._expect_mask
                                        else "server frames must not be masked")
                length = b1 & 0x7F
                hdr = 2
                if length == 126:
                    if end - pos < 4:
                        break
                    length = struct.unpack_from("!H", buf, pos + 2)[0]
                    hdr = 4
                elif length == 127:
                    if end - pos < 10:
                        break
                    length = struct.unpack_from("!Q", buf, pos + 2)[0]
                    hdr = 10
                if opcode in _CONTROL:
                    if not fin or length > 125:
                        raise ProtocolError(1002, "control frames must be whole and <= 125 bytes")
                elif opcode == OP_CONT:
                    if self._frag_op is None:
                        raise ProtocolError(1002, "continuation frame without a message")
                elif opcode in (OP_TEXT, OP_BINARY):
                    if self._frag_op is not None:
                        raise ProtocolError(1002, "new message before the last one ended")
                else:
                    raise ProtocolError(1002, f"unknown opcode {opcode}")
                if opcode not in _CONTROL and (
                        self._frag_len + length + (0 if fin and opcode != OP_CONT
                                                   else FRAGMENT_COST) > self._max):
                    raise ProtocolError(1009, f"message larger than {self._max} bytes")
                if masked:
                    hdr += 4
                if end - pos < hdr + length:
                    if opcode == OP_TEXT or (opcode == OP_CONT and self._frag_op == OP_TEXT):
                        self._check_partial(buf, pos + hdr, masked, min(end - pos - hdr, length))
                    break
                payload = bytes(buf[pos + hdr:pos + hdr + length])
                if masked:
                    payload = _mask(payload, bytes(buf[pos + hdr - 4:pos + hdr]))
                pos += hdr + length
                if opcode in _CONTROL:
                    events.append((opcode, payload))
                    if opcode == OP_CLOSE:
                        break  # nothing after a close frame counts
                    continue
                checked, self._checked = self._checked, 0
                if opcode != OP_CONT and fin:
                    if checked:  # its head was checked as it arrived: check only the rest
                        self._check_text(memoryview(payload)[checked:], True)
                        self._utf8 = None
                        events.append((opcode, payload))
                    else:
                        events.append(self._finish(opcode, payload))
                    continue
                if opcode != OP_CONT:
                    self._frag_op = opcode
                    if opcode == OP_TEXT and self._utf8 is None:
                        self._utf8 = codecs.getincrementaldecoder("utf-8")()
                self._frag_count += 1
                if self._frag_count > self._max_fragments:
                    raise ProtocolError(1009, f"message in more than {self._max_fragments} "
                                              f"fragments")
                if self._utf8 is not None:  # per fragment: bad text fails at once, not at the end
                    self._check_text(memoryview(payload)[checked:] if checked else payload,
                                     bool(fin))
                self._frags += payload
                self._frag_len += length + FRAGMENT_COST
                if fin:
                    op = self._frag_op or OP_TEXT  # set by the message's first frame
                    whole = bytes(self._frags)
                    self._frag_op, self._frags, self._frag_len = None, bytearray(), 0
                    self._frag_count, self._utf8 = 0, None
                    events.append((op, whole))  # text already checked, fragment by fragment
        except ProtocolError:
            if pos:  # the bad frame heads the buffer now: skim() goes on from it
                del buf[:pos]
            raise
        if pos:
            del buf[:pos]
        return events

    def skim(self, data: Union[bytes, bytearray]) -> Optional[bytes]:
        """After a :class:`ProtocolError`: read on by frame lengths alone, from the bad
        frame on, until the peer's close frame; returns its body (``None``: not yet).

        The connection has failed, so nothing is checked or kept but the framing: a
        peer that sends its close in pieces, or right after the rest of the bad frame,
        is still heard, and the closing handshake ends at once (RFC 6455 7.1.7).
        """
        buf = self._buf
        buf += data
        while True:
            if self._skip:
                n = min(self._skip, len(buf))
                del buf[:n]
                self._skip -= n
                if self._skip:
                    return None
            if len(buf) < 2:
                return None
            length = buf[1] & 0x7F
            hdr = 2
            if length == 126:
                if len(buf) < 4:
                    return None
                length = struct.unpack_from("!H", buf, 2)[0]
                hdr = 4
            elif length == 127:
                if len(buf) < 10:
                    return None
                length = struct.unpack_from("!Q", buf, 2)[0]
                hdr = 10
            masked = buf[1] & 0x80
            if masked:
                hdr += 4
            if len(buf) < hdr:
                return None
            if buf[0] & 0x0F == OP_CLOSE and length <= 125:
                if len(buf) < hdr + length:
                    return None
                body = bytes(buf[hdr:hdr + length])
                return _mask(body, bytes(buf[hdr - 4:hdr])) if masked else body
            del buf[:hdr]
            self._skip = length

    def _check_partial(self, buf: bytearray, start: int, masked: int, avail: int) -> None:
        """Check the UTF-8 of the part of a text frame received so far: a frame sent in
        pieces fails at its first invalid byte, not once it is whole (RFC 6455 8.1)."""
        done = self._checked
        if avail <= done:
            return
        chunk = bytes(buf[start + done:start + avail])
        if masked:
            key = bytes(buf[start - 4:start])
            turn = done % 4  # the mask goes on where the checked bytes left it
            chunk = _mask(chunk, key[turn:] + key[:turn])
        if self._utf8 is None:  # a whole-frame message, or a fragmented one's first frame
            self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._check_text(chunk, False)
        self._checked = avail

    def _check_text(self, data: Union[bytes, memoryview], final: bool) -> None:
        try:
            self._utf8.decode(data, final=final)
        except UnicodeDecodeError:
            raise ProtocolError(1007, "text message is not valid UTF-8") from None

    @staticmethod
    def _finish(opcode: int, payload: bytes) -> Event:
        if opcode == OP_TEXT:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(1007, "text message is not valid UTF-8") from None
        return opcode, payload
