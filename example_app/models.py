"""Stored data of the demos: todos (pattern A) and sticky notes (pattern B, without Redis)."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any, Dict

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

__all__ = ["db", "Todo", "Note", "init_db"]

log = logging.getLogger("example_app")

db = SQLAlchemy()


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Todo(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "hello_todo"

    id = db.Column(db.Integer, primary_key=True)
    title = db.Column(db.String(200), nullable=False)
    completed = db.Column(db.Boolean, nullable=False, default=False)
    username = db.Column(db.String(80), nullable=False, default="guest")
    created_at = db.Column(db.String(32), nullable=False, default=_now_iso)
    updated_at = db.Column(db.String(32), nullable=False, default=_now_iso)

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "title": self.title, "completed": bool(self.completed),
                "username": self.username, "createdAt": self.created_at,
                "updatedAt": self.updated_at}


class Note(db.Model):  # type: ignore[name-defined,misc]
    """One row per note: an edit touches its own row only (no list read-modify-write)."""

    __tablename__ = "hello_note"

    id = db.Column(db.String(36), primary_key=True)
    x = db.Column(db.Float, nullable=False, default=20)
    y = db.Column(db.Float, nullable=False, default=20)
    text = db.Column(db.Text, nullable=False, default="")
    color = db.Column(db.String(20), nullable=False)
    created_by = db.Column(db.String(80), nullable=False, default="guest")
    created_at = db.Column(db.BigInteger, nullable=False)
    updated_at = db.Column(db.BigInteger, nullable=False)
    updated_by = db.Column(db.String(80), nullable=False, default="guest")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
    cur.execute("PRAGMA busy_timeout=10000")  # several workers may write at once
    cur.close()


def init_db(app: Flask) -> None:
    """Bind the database and create the tables (several workers may race to do it)."""
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 10}})
    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas)
        for attempt in range(5):
            try:
                db.create_all()
                break
            except OperationalError as exc:  # "table already exists": a sibling won
                log.info("create_all raced another worker (%s); retrying", exc)
                time.sleep(0.1 * (attempt + 1))
