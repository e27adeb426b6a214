"""Collaborative todo, pattern A: REST for create/toggle/delete, WebSocket for sync.

The REST handler validates, stores, answers, and only then broadcasts
``todo-created`` / ``todo-updated`` / ``todo-deleted`` on ``/api/1/ws/hello-todo``.
Browsers apply those broadcasts, and refetch the list after a reconnect
(``onResync``), since messages sent while they were away are not replayed.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from flask import Blueprint, Flask, request
from flask_login import current_user

from flask_jpulse_ws import JPulseWS

from .models import Todo, _now_iso, db

__all__ = ["PATH", "API", "TITLE_MAX", "TODOS_MAX", "init_app"]

PATH = "/api/1/ws/hello-todo"
API = "/api/1/hello-todo"
#: Longest title accepted (characters).
TITLE_MAX = 200
#: Todos kept at most; more are refused with 409.
TODOS_MAX = 500


def _error(status: int, code: str, message: str) -> Tuple[Dict[str, Any], int]:
    return {"success": False, "error": message, "code": code}, status


def _username() -> str:
    return str(getattr(current_user, "username", "") or "guest")


def init_app(app: Flask, ws: JPulseWS) -> None:
    ns = ws.namespace(PATH)
    bp = Blueprint("hello_todo", __name__)

    @ns.on_connect
    def connected(conn: Any) -> None:
        conn.send({"type": "welcome", "data": {"userCount": len(conn.namespace.clients)}})

    def notify(kind: str, data: Dict[str, Any]) -> None:
        # ctx of the HTTP caller: only its username reaches the other clients.
        ws.broadcast(PATH, {"type": kind, "data": data}, ws.broadcast_context())

    def load(todo_id: str) -> Any:
        if not todo_id.isdigit() or len(todo_id) > 12:
            return _error(400, "INVALID_TODO_ID", "A todo id is a positive number")
        todo = db.session.get(Todo, int(todo_id))
        if todo is None:
            return _error(404, "TODO_NOT_FOUND", f"No todo with id {todo_id}")
        return todo

    @bp.get(API)
    def list_todos() -> Any:
        todos = db.session.scalars(db.select(Todo).order_by(Todo.id.desc())).all()
        return {"success": True, "data": [t.to_dict() for t in todos]}

    @bp.post(API)
    def create() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "VALIDATION_ERROR", "Send a JSON object: {\"title\": \"...\"}")
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            return _error(400, "VALIDATION_ERROR", "The title must not be empty")
        title = title.strip()
        if len(title) > TITLE_MAX:
            return _error(400, "VALIDATION_ERROR",
                          f"The title is limited to {TITLE_MAX} characters")
        if db.session.scalar(db.select(db.func.count(Todo.id))) >= TODOS_MAX:
            return _error(409, "TOO_MANY_TODOS", f"The list is full ({TODOS_MAX} todos)")
        todo = Todo(title=title, username=_username())
        db.session.add(todo)
        db.session.commit()
        data = todo.to_dict()
        notify("todo-created", {"todo": data, "username": _username()})
        return {"success": True, "data": data}, 201

    @bp.put(f"{API}/<todo_id>/toggle")
    def toggle(todo_id: str) -> Any:
        todo = load(todo_id)
        if isinstance(todo, tuple):
            return todo
        # One UPDATE flips the stored value: two users toggling at once both count.
        db.session.execute(db.update(Todo).where(Todo.id == todo.id).values(
            completed=~Todo.completed, updated_at=_now_iso()))
        db.session.commit()
        db.session.refresh(todo)
        data = todo.to_dict()
        notify("todo-updated", {"todo": data, "username": _username()})
        return {"success": True, "data": data}

    @bp.delete(f"{API}/<todo_id>")
    def delete(todo_id: str) -> Any:
        todo = load(todo_id)
        if isinstance(todo, tuple):
            return todo
        db.session.delete(todo)
        db.session.commit()
        notify("todo-deleted", {"todoId": int(todo_id), "username": _username()})
        return {"success": True, "data": {"id": int(todo_id)}}

    app.register_blueprint(bp)
