"""The wire format: decode inbound frames, encode outbound envelopes (pure).

Every outbound frame is built here, once; a broadcast encodes its bytes once for
all recipients. Nothing here imports Flask, gevent or redis.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Union

import orjson

from ..errors import ErrorCode

__all__ = [
    "Inbound", "InboundError", "decode_inbound", "check_type", "request_id_of",
    "encode_success", "encode_error", "encode_reply", "encode_framework", "encode_json",
    "decode_json", "wire_ctx", "SYSTEM_CTX", "RESERVED_PREFIX",
]

#: Types starting with this are the framework's; clients may not send them.
RESERVED_PREFIX = "_"
#: Reserved types a client may send: the heartbeat and the presence query.
CLIENT_FRAMEWORK_TYPES = frozenset({"_ping", "_presence"})
#: The wire context of messages the server sends on its own behalf.
SYSTEM_CTX: Dict[str, Any] = {"username": ""}

Inbound = Dict[str, Any]


class InboundError(Exception):
    """An inbound frame the pipeline rejects; carries the error frame's fields."""

    def __init__(self, reason: str, message: str, code: Union[int, str],
                 details: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.reason = reason  # key of the ``dropped`` counter
        self.message = message
        self.code = code
        self.details = details


def decode_inbound(payload: Union[bytes, str], max_size: int) -> Inbound:
    """Check size, parse JSON, require an object; return the message dict.

    The ``type`` check comes later (after replies to server requests, which
    may be error objects without a type). Raises :class:`InboundError`.
    """
    size = len(payload.encode("utf-8") if isinstance(payload, str) else payload)
    if size > max_size:
        raise InboundError("oversize", f"Message too large: {size} > {max_size} bytes",
                           ErrorCode.MESSAGE_TOO_LARGE, {"size": size, "limit": max_size})
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InboundError("invalid", "Invalid message format: not JSON",
                           ErrorCode.INVALID) from None
    if not isinstance(message, dict):
        raise InboundError("invalid", "Invalid message format: expected a JSON object",
                           ErrorCode.INVALID)
    return message


def check_type(message: Inbound) -> str:
    """Return the message's ``type``, or raise for a missing or reserved one."""
    msg_type = message.get("type")
    if not isinstance(msg_type, str) or not msg_type:
        raise InboundError("invalid", "Invalid message format: 'type' must be a string",
                           ErrorCode.INVALID)
    if msg_type.startswith(RESERVED_PREFIX) and msg_type not in CLIENT_FRAMEWORK_TYPES:
        raise InboundError("reserved", f"Type {msg_type!r} is reserved for the framework",
                           ErrorCode.RESERVED_TYPE)
    return msg_type


def request_id_of(message: Mapping[str, Any]) -> Optional[str]:
    """The message's ``requestId`` if it is a usable one (string or number)."""
    rid = message.get("requestId")
    if isinstance(rid, bool) or not isinstance(rid, (str, int, float)):
        return None
    return rid if isinstance(rid, str) else str(rid)


def wire_ctx(ctx: Any, fields: Iterable[str]) -> Dict[str, Any]:
    """The part of a context that may leave the server (``None`` -> system)."""
    if ctx is None:
        return SYSTEM_CTX
    to_wire = getattr(ctx, "to_wire", None)
    if to_wire is not None:
        return to_wire(fields)
    if isinstance(ctx, Mapping):
        return {f: ctx.get(f, "") for f in fields}
    return {f: getattr(ctx, f, "") for f in fields}


def _dumps(obj: Any) -> bytes:
    # Non-JSON values (datetimes are native; sets, Decimals...) become strings
    # rather than failing a broadcast half way.
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)


def encode_success(data: Mapping[str, Any], ctx_wire: Mapping[str, Any],
                   extra: Optional[Mapping[str, Any]] = None) -> bytes:
    """``{"success": true, "data": {...data, "ctx": ctx}}`` plus top-level extras."""
    if not isinstance(data, Mapping):
        raise TypeError(f"message data must be a dict with a 'type', got {type(data).__name__}")
    payload = dict(data)
    payload["ctx"] = ctx_wire
    frame: Dict[str, Any] = {"success": True, "data": payload}
    if extra:
        frame.update(extra)
    return _dumps(frame)


def encode_reply(data: Any, request_id: Optional[str]) -> bytes:
    """A reply to a client request: ``{"success": true, "data": d, "requestId": id}``."""
    frame: Dict[str, Any] = {"success": True, "data": data}
    if request_id is not None:
        frame["requestId"] = request_id
    return _dumps(frame)


def encode_error(message: str, code: Union[int, str], details: Any = None,
                 request_id: Optional[str] = None) -> bytes:
    """``{"success": false, "error": message, "code": code}`` plus what applies."""
    frame: Dict[str, Any] = {"success": False, "error": message, "code": code}
    if details is not None:
        frame["details"] = details
    if request_id is not None:
        frame["requestId"] = request_id
    return _dumps(frame)


def encode_framework(msg_type: str, data: Any) -> bytes:
    """A framework frame such as ``_pong`` or ``_resync`` (no ctx)."""
    return _dumps({"success": True, "data": {"type": msg_type, "data": data}})


def encode_json(obj: Any) -> bytes:
    """Plain JSON for relay messages and stats."""
    return _dumps(obj)


def decode_json(raw: Union[bytes, str]) -> Any:
    return orjson.loads(raw)
