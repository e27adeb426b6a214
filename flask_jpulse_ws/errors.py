"""Exceptions, close codes and error codes shared by the server and the clients."""

from __future__ import annotations

from typing import Any, Optional, Union

__all__ = ["WSError", "CloseCode", "ErrorCode"]


class CloseCode:
    """WebSocket close codes the server sends (protocol.md section 3)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007  # text frame that is not UTF-8
    POLICY_VIOLATION = 1008  # repeated abuse
    TOO_BIG = 1009  # frame over JPULSE_WS_MAX_FRAME_SIZE
    SERVER_ERROR = 1011
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    REPLACED = 4409
    SLOW_CONSUMER = 4503
    TOO_MANY = 4529


class ErrorCode:
    """``code`` values of error frames (protocol.md section 4)."""

    INVALID = 400
    INTERNAL = 500
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    RESERVED_TYPE = "RESERVED_TYPE"
    NO_REPLY = "NO_REPLY"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    NOT_CONNECTED = "NOT_CONNECTED"
    CONNECTION_LOST = "CONNECTION_LOST"


class WSError(Exception):
    """Raise in a handler to answer the client with this message and code.

    The connection stays open. Any other exception answers "Internal server error"
    (code 500) and logs the traceback, so internal details never reach clients.

    :param message: a human sentence sent as ``error``.
    :param code: sent as ``code``; a number or an UPPER_CASE string.
    :param details: optional JSON-able dict sent as ``details``.
    """

    def __init__(self, message: str, code: Union[int, str] = 400,
                 details: Optional[Any] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details
