"""Emoji cursors: ephemeral real-time tracking, nothing stored (the seed's Pattern 1).

The browser sends ``cursor-move`` at most every 50 ms; the server checks the values
and broadcasts ``cursor``. Each connection gets an opaque cursor id, so other
clients never learn its client id. ``cursor-left`` removes a cursor when its owner
leaves.
"""

from __future__ import annotations

import math
import secrets
from typing import Any, Dict

from flask import Flask

from flask_jpulse_ws import JPulseWS, WSError

__all__ = ["EMOJIS", "PATH", "init_app"]

PATH = "/api/1/ws/hello-emoji"
#: The emojis a cursor may wear; anything else is refused.
EMOJIS = ("👆", "🐱", "🐶", "🦊", "🐸", "🚀", "⭐", "❤️")
#: 20 moves a second is the client's throttle; the limit leaves room for bursts.
LIMITS = {"maxSize": 512, "interval": 1000, "maxMessages": 40}


def _percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise WSError("x and y must be numbers (percent of the area)", 400)
    return round(min(100.0, max(0.0, float(value))), 1)


def init_app(app: Flask, ws: JPulseWS) -> None:
    ns = ws.namespace(PATH, message_limits=LIMITS)
    cursor_ids: Dict[Any, str] = {}  # connection -> public cursor id, this process

    @ns.on_connect
    def connected(conn: Any) -> None:
        cursor_ids[conn] = secrets.token_hex(6)
        conn.send({"type": "welcome",
                   "data": {"cursorId": cursor_ids[conn],
                            "userCount": len(conn.namespace.clients)}})

    @ns.on_message
    def message(conn: Any) -> None:
        msg = conn.message
        if msg["type"] != "cursor-move":
            raise WSError(f"Unknown message type {msg['type']!r}", 400)
        emoji = msg.get("emoji")
        if emoji not in EMOJIS:
            raise WSError("Pick one of the offered emojis", 400)
        ns.broadcast({"type": "cursor",
                      "data": {"id": cursor_ids.get(conn, ""),
                               "username": conn.ctx.username or "guest",
                               "emoji": emoji, "x": _percent(msg.get("x")),
                               "y": _percent(msg.get("y"))}}, conn.ctx)

    @ns.on_disconnect
    def left(conn: Any) -> None:
        cursor_id = cursor_ids.pop(conn, None)
        if cursor_id:
            ns.broadcast({"type": "cursor-left",
                          "data": {"id": cursor_id, "username": conn.ctx.username or "guest",
                                   "userCount": len(conn.namespace.clients)}}, conn.ctx)
