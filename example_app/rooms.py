"""Dynamic rooms: one namespace per room, ``/api/1/ws/hello-rooms/:roomName``.

``on_create`` accepts only the three demo rooms (exact, case-sensitive: the path is).
The user count is derived, never counted up and down: each process knows its own
live connections; with Redis, each process also writes its count to a key that
expires unless refreshed, so a process that dies drops out of the total within
seconds and the survivors broadcast the corrected ``room-stats``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from typing import Any, Dict, Optional

from flask import Flask

from flask_jpulse_ws import JPulseWS, WSError, concurrency

__all__ = ["ROOMS", "PATTERN", "CHAT_MAX", "RoomCounter", "init_app", "room_path"]

log = logging.getLogger("example_app")

PATTERN = "/api/1/ws/hello-rooms/:roomName"
#: The rooms that exist; any other name is refused by on_create (close 4404).
ROOMS = ("amsterdam", "berlin", "cairo")
#: Longest chat message (characters).
CHAT_MAX = 500


def room_path(room: str) -> str:
    return f"/api/1/ws/hello-rooms/{room}"


class RoomCounter:
    """Connections per room: this process's live count, plus the other processes'.

    Redis layout: ``<prefix>:rooms:<room>:w:<worker>`` = that worker's count, with a
    TTL of three heartbeats; ``<prefix>:rooms:<room>:workers`` = the set of worker
    ids, pruned of those whose key expired.
    """

    def __init__(self, app: Flask, ws: JPulseWS, redis_url: Optional[str], prefix: str,
                 heartbeat: float) -> None:
        self.app = app
        self.ws = ws
        self.prefix = prefix
        self.heartbeat = heartbeat
        self.ttl_ms = max(1000, int(heartbeat * 3000))
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.last: Dict[str, int] = {}
        self._ticker: Any = None
        self.r: Any = None
        if redis_url:
            import redis
            self.r = redis.Redis.from_url(redis_url, socket_timeout=5,
                                          socket_connect_timeout=5)

    def local(self, room: str) -> int:
        ns = self.ws.get_namespace(room_path(room))
        return len(ns.clients) if ns is not None else 0

    def total(self, room: str) -> int:
        """The room's connections over all processes (this one's is always exact)."""
        mine = self.local(room)
        if self.r is None:
            return mine
        base = f"{self.prefix}:rooms:{room}"
        try:
            pipe = self.r.pipeline(transaction=False)
            if mine:
                pipe.set(f"{base}:w:{self.worker}", mine, px=self.ttl_ms)
                pipe.sadd(f"{base}:workers", self.worker)
            else:
                pipe.delete(f"{base}:w:{self.worker}")
                pipe.srem(f"{base}:workers", self.worker)
            pipe.smembers(f"{base}:workers")
            members = [m.decode() for m in pipe.execute()[-1]]
            others = [m for m in members if m != self.worker]
            values = self.r.mget([f"{base}:w:{m}" for m in others]) if others else []
            gone = [m for m, v in zip(others, values) if v is None]
            if gone:
                self.r.srem(f"{base}:workers", *gone)  # expired: that process is gone
            return mine + sum(int(v) for v in values if v is not None)
        except Exception as exc:  # Redis down: this process's view is still right for it
            log.warning("room count from Redis failed (%s); using local count", exc)
            return mine

    def announce(self, room: str) -> int:
        """Broadcast ``room-stats`` with the current total; returns it."""
        count = self.total(room)
        self.last[room] = count
        self.ws.broadcast(room_path(room), {"type": "room-stats",
                                            "data": {"roomName": room, "userCount": count}})
        return count

    def ensure_ticker(self) -> None:
        if self.r is not None and self._ticker is None:
            self._ticker = concurrency.spawn(self._tick)

    def _tick(self) -> None:
        # One greenlet per process: refresh our keys, and re-announce a room whose
        # total moved without a join or leave here (another process died).
        while True:
            concurrency.sleep(self.heartbeat)
            for room in ROOMS:
                try:
                    with self.app.app_context():
                        if self.local(room) or room in self.last:
                            count = self.total(room)
                            if self.local(room) and count != self.last.get(room):
                                self.announce(room)
                            elif not self.local(room):
                                self.last.pop(room, None)
                except Exception:  # keep ticking whatever happens
                    log.exception("room heartbeat failed for %s", room)


def init_app(app: Flask, ws: JPulseWS) -> None:
    def on_create(_request: Any, ctx: Any) -> Any:
        return ctx if ctx.params.get("roomName") in ROOMS else None  # None: close 4404

    ns = ws.namespace(PATTERN, on_create=on_create)
    counter = RoomCounter(app, ws, app.config.get("JPULSE_WS_REDIS_URL"),
                          app.config["HELLO_REDIS_PREFIX"],
                          float(app.config["HELLO_ROOMS_HEARTBEAT"]))
    app.extensions["hello_rooms_counter"] = counter

    @ns.on_connect
    def joined(conn: Any) -> None:
        counter.ensure_ticker()
        room = conn.ctx.params["roomName"]
        conn.send({"type": "welcome", "data": {"roomName": room, "pid": os.getpid()}})
        counter.announce(room)

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
        elif msg["type"] == "room-info":  # a request(): which process serves me
            conn.reply({"roomName": room, "pid": os.getpid(),
                        "userCount": counter.total(room)})
        else:
            raise WSError(f"Unknown message type {msg['type']!r}", 400)

    @ns.on_disconnect
    def left(conn: Any) -> None:
        room = conn.ctx.params["roomName"]
        count = counter.total(room)
        counter.last[room] = count
        ws.broadcast(room_path(room), {"type": "user-left",
                                       "data": {"roomName": room,
                                                "username": conn.ctx.username or "guest",
                                                "userCount": count}})
