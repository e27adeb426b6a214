"""Demo users through flask-login: an admin and two ordinary users.

Passwords are shown on the login page (it is a demo) and kept only as werkzeug hashes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from flask import Blueprint, Flask, redirect, render_template, request, url_for
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from werkzeug.security import check_password_hash, generate_password_hash

__all__ = ["User", "DEMO_USERS", "init_app", "find_user"]

#: (username, password, roles, first name, last name): shown on the login page.
DEMO_USERS: List[Tuple[str, str, Tuple[str, ...], str, str]] = [
    ("admin", "admin-demo", ("admin",), "Ada", "Admin"),
    ("alice", "alice-demo", ("user",), "Alice", "Anders"),
    ("bob", "bob-demo", ("user",), "Bob", "Berg"),
]


class User(UserMixin):
    """What flask-login and flask-jpulse-ws read: id, username, roles, names."""

    def __init__(self, username: str, password_hash: str, roles: Tuple[str, ...],
                 first_name: str, last_name: str) -> None:
        self.id = username
        self.username = username
        self.password_hash = password_hash
        self.roles = roles
        self.first_name = first_name
        self.last_name = last_name

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


_users: Dict[str, User] = {}


def _load_users() -> None:
    if not _users:  # pbkdf2 rather than scrypt: quick enough to hash at every start
        for name, password, roles, first, last in DEMO_USERS:
            _users[name] = User(name, generate_password_hash(password, "pbkdf2:sha256:50000"),
                                roles, first, last)


def find_user(username: str) -> Optional[User]:
    _load_users()
    return _users.get(username)


bp = Blueprint("users", __name__)


def _safe_next(target: Optional[str]) -> str:
    # Only same-site paths: "/x" yes; "//evil.example" and "https://..." no.
    if target and target.startswith("/") and not target.startswith("//") \
            and "\\" not in target:
        return target
    return url_for("hello_websocket")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = ""
    if request.method == "POST":
        user = find_user(request.form.get("username", "").strip())
        if user is not None and user.check_password(request.form.get("password", "")):
            login_user(user)
            return redirect(_safe_next(request.form.get("next")))
        error = "Unknown user or wrong password."
    status = 401 if error else 200
    return render_template("login.html", error=error, demo_users=DEMO_USERS,
                           next=request.values.get("next", "")), status


@bp.post("/logout")
def logout() -> Any:
    logout_user()
    return redirect(url_for("home"))


@bp.get("/api/1/auth/status")
def auth_status() -> Any:
    if current_user.is_authenticated:
        return {"success": True, "data": {"authenticated": True,
                                          "username": current_user.username,
                                          "roles": list(current_user.roles)}}
    return {"success": True, "data": {"authenticated": False}}


def init_app(app: Flask) -> None:
    _load_users()
    manager = LoginManager(app)
    manager.login_view = "users.login"

    @manager.user_loader
    def load(user_id: str) -> Optional[User]:
        return find_user(user_id)

    app.register_blueprint(bp)
