"""Sticky notes, pattern B: create/move/edit/delete over the WebSocket.

The handler validates, stores, broadcasts the outcome (``note-created``,
``note-updated``, ``note-deleted``) and replies to the sender's ``request()``.
Storage is per note, so concurrent edits of different notes never overwrite each
other: one Redis hash per note (with Lua scripts for the cap and the existence
check) when Redis is configured, else one database row per note changed by single
UPDATE statements.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from typing import Any, Dict, List, Optional

import redis
from flask import Flask
from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.exc import OperationalError

from flask_jpulse_ws import JPulseWS, WSError

from .models import Note, db

log = logging.getLogger("example_app")

#: Failures of the store itself (not of the request): answered 503, not 500.
STORE_ERRORS = (redis.RedisError, OSError, OperationalError)

__all__ = ["PATH", "PALETTE", "TEXT_MAX", "SqlNotesStore", "RedisNotesStore", "init_app",
           "clean_fields"]

PATH = "/api/1/ws/hello-notes"
#: Longest note text (characters).
TEXT_MAX = 500
#: The board is this many pixels wide and high; positions are clamped to it.
BOARD_W, BOARD_H = 1200, 800
#: The note colours offered; others are refused.
PALETTE = ("#fff9c4", "#c8e6c9", "#bbdefb", "#f8bbd0", "#ffe0b2")
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _number(value: Any, name: str, top: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise WSError(f"{name} must be a number", 400)
    return round(min(top, max(0.0, float(value))), 1)


def clean_fields(data: Any, creating: bool) -> Dict[str, Any]:
    """The note fields of a message, checked; raises :class:`WSError` (400)."""
    if not isinstance(data, dict):
        raise WSError("data must be an object", 400)
    out: Dict[str, Any] = {}
    if "x" in data or creating:
        out["x"] = _number(data.get("x", 20), "x", BOARD_W - 40)
    if "y" in data or creating:
        out["y"] = _number(data.get("y", 20), "y", BOARD_H - 40)
    if "text" in data or creating:
        text = data.get("text", "")
        if not isinstance(text, str):
            raise WSError("text must be a string", 400)
        if len(text) > TEXT_MAX:
            raise WSError(f"A note holds at most {TEXT_MAX} characters", 400,
                          {"limit": TEXT_MAX, "length": len(text)})
        out["text"] = text
    if "color" in data or creating:
        color = data.get("color", PALETTE[0])
        if color not in PALETTE:
            raise WSError("Pick one of the offered colours", 400)
        out["color"] = color
    return out


def note_id(data: Any) -> str:
    value = data.get("id") if isinstance(data, dict) else None
    if not isinstance(value, str) or not _ID.match(value):
        raise WSError("id must be a note id", 400)
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)


class SqlNotesStore:
    """One row per note; every change is one statement on one row."""

    def __init__(self, engine: Any, max_notes: int) -> None:
        self.engine = engine
        self.max_notes = max_notes
        self.table = Note.__table__

    @staticmethod
    def _row(row: Any) -> Dict[str, Any]:
        return {"id": row.id, "x": row.x, "y": row.y, "text": row.text, "color": row.color,
                "createdBy": row.created_by, "createdAt": row.created_at,
                "updatedAt": row.updated_at, "updatedBy": row.updated_by}

    def list(self) -> List[Dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(select(self.table).order_by(self.table.c.created_at)).all()
        return [self._row(r) for r in rows]

    def create(self, fields: Dict[str, Any], username: str) -> Optional[Dict[str, Any]]:
        """The new note, or ``None`` when the board is full (checked in the INSERT)."""
        t = self.table
        now = _now_ms()
        values = {"id": str(uuid.uuid4()), **fields, "created_by": username,
                  "created_at": now, "updated_at": now, "updated_by": username}
        cols = list(values)
        # INSERT ... SELECT ... WHERE count < max: the cap holds under concurrent creates.
        count = select(func.count()).select_from(t).scalar_subquery()
        source = select(*[literal(values[c], t.c[c].type) for c in cols]).where(
            count < self.max_notes)
        with self.engine.begin() as c:
            done = c.execute(insert(t).from_select(cols, source)).rowcount
            row = c.execute(select(t).where(t.c.id == values["id"])).first() if done else None
        return self._row(row) if row is not None else None

    def update(self, nid: str, fields: Dict[str, Any], username: str
               ) -> Optional[Dict[str, Any]]:
        t = self.table
        with self.engine.begin() as c:
            done = c.execute(update(t).where(t.c.id == nid).values(
                **fields, updated_at=_now_ms(), updated_by=username)).rowcount
            row = c.execute(select(t).where(t.c.id == nid)).first() if done else None
        return self._row(row) if row is not None else None

    def delete(self, nid: str) -> bool:
        t = self.table
        with self.engine.begin() as c:
            return bool(c.execute(t.delete().where(t.c.id == nid)).rowcount)


_CREATE = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return 1
"""
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], unpack(ARGV))
return redis.call('HGETALL', KEYS[1])
"""
_DELETE = """
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return n
"""


class RedisNotesStore:
    """A hash per note plus a sorted set index; scripts keep each step atomic."""

    def __init__(self, client: Any, prefix: str, max_notes: int) -> None:
        self.r = client
        self.index = f"{prefix}:notes:index"
        self.prefix = f"{prefix}:notes:n:"
        self.max_notes = max_notes
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)
        self._delete = client.register_script(_DELETE)

    @staticmethod
    def _decode(nid: str, raw: Any) -> Optional[Dict[str, Any]]:
        if not raw:
            return None
        if isinstance(raw, list):  # HGETALL from a script: flat [k, v, k, v]
            raw = dict(zip(raw[::2], raw[1::2]))
        h = {(k.decode() if isinstance(k, bytes) else k):
             (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        return {"id": nid, "x": float(h.get("x", 0)), "y": float(h.get("y", 0)),
                "text": h.get("text", ""), "color": h.get("color", PALETTE[0]),
                "createdBy": h.get("createdBy", ""), "createdAt": int(h.get("createdAt", 0)),
                "updatedAt": int(h.get("updatedAt", 0)), "updatedBy": h.get("updatedBy", "")}

    @staticmethod
    def _flat(fields: Dict[str, Any]) -> List[Any]:
        out: List[Any] = []
        for k, v in fields.items():
            out += [k, v]
        return out

    def list(self) -> List[Dict[str, Any]]:
        ids = [i.decode() if isinstance(i, bytes) else i for i in self.r.zrange(self.index, 0, -1)]
        pipe = self.r.pipeline(transaction=False)
        for nid in ids:
            pipe.hgetall(self.prefix + nid)
        notes = [self._decode(nid, raw) for nid, raw in zip(ids, pipe.execute())]
        return [n for n in notes if n is not None]

    def create(self, fields: Dict[str, Any], username: str) -> Optional[Dict[str, Any]]:
        nid = str(uuid.uuid4())
        now = _now_ms()
        note = {**fields, "createdBy": username, "createdAt": now, "updatedAt": now,
                "updatedBy": username}
        ok = self._create(keys=[self.index, self.prefix + nid],
                          args=[self.max_notes, now, nid, *self._flat(note)])
        return self._decode(nid, note) if ok else None

    def update(self, nid: str, fields: Dict[str, Any], username: str
               ) -> Optional[Dict[str, Any]]:
        raw = self._update(keys=[self.prefix + nid],
                           args=self._flat({**fields, "updatedAt": _now_ms(),
                                            "updatedBy": username}))
        return self._decode(nid, raw)

    def delete(self, nid: str) -> bool:
        return bool(self._delete(keys=[self.index, self.prefix + nid], args=[nid]))


def make_store(app: Flask) -> Any:
    max_notes = int(app.config["HELLO_NOTES_MAX"])
    url = app.config.get("JPULSE_WS_REDIS_URL")
    if url:
        from flask_jpulse_ws import redis_client  # the same URL forms, Sentinel too
        client = redis_client(url, socket_timeout=5, socket_connect_timeout=5)
        return RedisNotesStore(client, app.config["HELLO_REDIS_PREFIX"], max_notes)
    with app.app_context():
        return SqlNotesStore(db.engine, max_notes)


def _answer(conn: Any, data: Dict[str, Any]) -> None:
    """Reply to a ``request()``; a plain ``send()`` gets the broadcast only."""
    if conn.message.get("requestId") is not None:
        conn.reply(data)


def init_app(app: Flask, ws: JPulseWS) -> None:
    ns = ws.namespace(PATH, message_limits={"maxSize": 4096})
    store = make_store(app)
    app.extensions["hello_notes_store"] = store

    @ns.on_connect
    def connected(conn: Any) -> None:
        conn.send({"type": "notes-init", "data": {"notes": store.list(),
                                                  "max": store.max_notes}})

    @ns.on_message
    def message(conn: Any) -> None:
        try:
            handle(conn)
        except STORE_ERRORS as exc:  # the store is away: say so, without a traceback
            log.warning("notes store unavailable: %s", exc)
            raise WSError("Notes are unavailable right now; try again shortly", 503) from None

    def handle(conn: Any) -> None:
        msg = conn.message
        kind, data = msg["type"], msg.get("data")
        username = conn.ctx.username or "guest"
        if kind == "note-create":
            note = store.create(clean_fields(data, creating=True), username)
            if note is None:
                raise WSError(f"The board is full ({store.max_notes} notes)", "BOARD_FULL")
            ns.broadcast({"type": "note-created", "data": {"note": note,
                                                           "username": username}}, conn.ctx)
            _answer(conn, {"note": note})
        elif kind == "note-update":
            nid = note_id(data)
            fields = clean_fields(data, creating=False)
            if not fields:
                raise WSError("Nothing to change: send x, y, text or color", 400)
            note = store.update(nid, fields, username)
            if note is None:
                raise WSError("This note no longer exists", 404)
            # Only the fields that changed travel: a move never carries stale text.
            ns.broadcast({"type": "note-updated",
                          "data": {"note": note, "changed": sorted(fields),
                                   "username": username}}, conn.ctx)
            _answer(conn, {"note": note})
        elif kind == "note-delete":
            nid = note_id(data)
            if not store.delete(nid):
                raise WSError("This note no longer exists", 404)
            ns.broadcast({"type": "note-deleted", "data": {"noteId": nid,
                                                           "username": username}}, conn.ctx)
            _answer(conn, {"noteId": nid})
        else:
            raise WSError(f"Unknown message type {kind!r}", 400)
