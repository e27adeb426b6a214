"""The flask-jpulse-ws example app: the ``/hello-websocket/`` demos and the admin dashboard.

Run it with ``make run`` (one gevent worker, SQLite, the in-memory relay), or as a
cluster with ``REDIS_URL=redis://... gunicorn -k gevent -w 4 'example_app:create_app()'``.

Environment (all optional):

- ``SECRET_KEY``: the Flask secret; without it a development key is generated once and
  kept in ``instance/dev-secret-key`` so that every worker of this host shares it.
- ``REDIS_URL``: becomes ``JPULSE_WS_REDIS_URL`` (the relay across workers); sticky
  notes and the rooms' presence are then kept in Redis too.
- ``EXAMPLE_DB_URL``: the SQLAlchemy URL (default: ``instance/example.sqlite3``).
- ``JPULSE_WS_*`` and ``HELLO_*``: any setting, as a JSON value or a plain string.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from typing import Any, Mapping, Optional

from flask import Flask, render_template
from flask_login import current_user

from flask_jpulse_ws import JPulseWS
from flask_jpulse_ws.admin import JPulseWSAdmin

from . import cursors, notes, request_demo, rooms, todo, users
from .models import db, init_db

__all__ = ["create_app", "db"]

log = logging.getLogger("example_app")

#: Demo defaults; each may be overridden by an environment variable of the same name.
DEFAULTS = {
    "HELLO_NOTES_MAX": 200,  # sticky notes on the board at most
    # The rooms list who is here: a killed worker's members should vanish within seconds,
    # not the default half minute. Costs one Redis pipeline per worker every 5 s.
    "JPULSE_WS_PRESENCE_TTL": 15.0,
    "HELLO_REDIS_PREFIX": "hello-websocket",  # Redis keys of the demos start with this
    # Public access, when switched on (JPULSE_WS_PUBLIC_ACCESS=true), lets anyone watch
    # the demo namespaces on the dashboard; it is off by default.
    "JPULSE_WS_PUBLIC_WHITELIST": ["hello-*", "jpulse-ws-status"],
    "SESSION_COOKIE_SAMESITE": "Lax",
}


def create_app(config: Optional[Mapping[str, Any]] = None) -> Flask:
    """Build the example app; works with no environment at all.

    :param config: overrides applied last (tests).
    """
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    _configure(app, config)
    logging.basicConfig(level=logging.INFO)

    init_db(app)
    users.init_app(app)

    ws = JPulseWS(app)
    app.extensions["example_ws"] = ws
    cursors.init_app(app, ws)
    todo.init_app(app, ws)
    notes.init_app(app, ws)
    rooms.init_app(app, ws)
    request_demo.init_app(app, ws)
    JPulseWSAdmin(ws).init_app(app)

    @app.get("/")
    def home() -> str:
        return render_template("home.html")

    @app.get("/hello-websocket/")
    def hello_websocket() -> str:
        from .examples import code_examples
        return render_template("hello.html", examples=code_examples(),
                               rooms=rooms.ROOMS, emojis=cursors.EMOJIS,
                               colors=notes.PALETTE,
                               username=getattr(current_user, "username", "") or "")

    return app


def _configure(app: Flask, config: Optional[Mapping[str, Any]]) -> None:
    app.config.update(DEFAULTS)
    db_url = os.environ.get("EXAMPLE_DB_URL") or \
        "sqlite:///" + os.path.join(app.instance_path, "example.sqlite3")
    app.config["SQLALCHEMY_DATABASE_URI"] = db_url
    for key, raw in os.environ.items():
        if key.startswith(("JPULSE_WS_", "HELLO_")):
            app.config[key] = _env_value(raw)
    if os.environ.get("REDIS_URL"):
        app.config["JPULSE_WS_REDIS_URL"] = os.environ["REDIS_URL"]
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY") or _dev_secret(app.instance_path)
    if config:
        app.config.update(config)


def _env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _dev_secret(instance_path: str) -> str:
    """One generated key per checkout, shared by all workers (a file, created once)."""
    path = os.path.join(instance_path, "dev-secret-key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    with open(path) as f:
        key = f.read().strip()
    if not key:  # another worker is writing it right now
        import time
        time.sleep(0.2)
        with open(path) as f:
            key = f.read().strip()
    log.warning("SECRET_KEY is not set: using the development key kept in %s "
                "(set SECRET_KEY in production)", path)
    return key

