"""Dynamic rooms: one namespace per room, ``/api/1/ws/hello-rooms/:roomName``.

``on_create`` accepts only the three demo rooms (exact, case-sensitive: the path is).
Who is in a room comes from presence (``presence=True``): every process knows its own
members, Redis holds everyone's with an expiry, and a process that dies drops out
within ``JPULSE_WS_PRESENCE_TTL`` (see ``docs/presence.md``). The page renders the
member list and its count from ``onPresence``; nothing here counts up and down.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask

from flask_jpulse_ws import JPulseWS, WSError

__all__ = ["ROOMS", "PATTERN", "CHAT_MAX", "init_app", "room_path"]

PATTERN = "/api/1/ws/hello-rooms/:roomName"
#: The rooms that exist; any other name is refused by on_create (close 4404).
ROOMS = ("amsterdam", "berlin", "cairo")
#: Longest chat message (characters).
CHAT_MAX = 500


def room_path(room: str) -> str:
    return f"/api/1/ws/hello-rooms/{room}"


def init_app(app: Flask, ws: JPulseWS) -> None:
    def on_create(_request: Any, ctx: Any) -> Any:
        return ctx if ctx.params.get("roomName") in ROOMS else None  # None: close 4404

    ns = ws.namespace(PATTERN, on_create=on_create, presence=True)

    @ns.on_connect
    def joined(conn: Any) -> None:
        room = conn.ctx.params["roomName"]
        # Shown beside each member in the page's list: a display name, the serving process.
        name = f"{conn.ctx.first_name} {conn.ctx.last_name}".strip()
        conn.set_presence_info({"name": name or conn.ctx.username or "guest",
                                "pid": os.getpid()})
        conn.send({"type": "welcome", "data": {"roomName": room, "pid": os.getpid()}})

    @ns.on_message
    def message(conn: Any) -> None:
        msg = conn.message
        room = conn.ctx.params["roomName"]
        if msg["type"] == "chat":
            data = msg.get("data")
            text = data.get("text") if isinstance(data, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise WSError("A chat message needs some text", 400)
            if len(text) > CHAT_MAX:
                raise WSError(f"A chat message holds at most {CHAT_MAX} characters", 400)
            ns.broadcast({"type": "chat",
                          "data": {"username": conn.ctx.username or "guest",
                                   "text": text.strip(), "roomName": room,
                                   "timestamp": int(time.time() * 1000)}}, conn.ctx)
        elif msg["type"] == "room-info":  # a request(): which process serves me, who is here
            conn.reply({"roomName": room, "pid": os.getpid(),
                        **ns.presence_stats(conn.ctx)})  # {"clients": n, "users": m}
        else:
            raise WSError(f"Unknown message type {msg['type']!r}", 400)
