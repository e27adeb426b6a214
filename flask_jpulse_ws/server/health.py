"""One scheduler for all connections of an app: pings, pong deadlines, session
re-validation and removal of empty dynamic namespaces. Not a timer per socket.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .. import concurrency
from ..context import roles_of
from ..errors import CloseCode
from . import auth

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from ..cluster.backend import Backend
    from ..config import Settings
    from .connection import Connection
    from .namespace import Registry

__all__ = ["HealthScheduler"]

log = logging.getLogger("flask_jpulse_ws")


class HealthScheduler:
    """Wakes every ``tick`` seconds and looks at each connection once."""

    def __init__(self, settings: Settings, registry: Registry, backend: Backend, app: Flask,
                 sweep: Callable[[], None]) -> None:
        self.settings = settings
        self.registry = registry
        self.backend = backend
        self.app = app
        self.sweep = sweep  # removes dynamic namespaces empty for their grace period
        s = settings
        # Fine enough to honour the pong timeout to within a quarter of it.
        self.tick = max(0.02, min(1.0, s.ping_interval / 4, s.pong_timeout / 4))
        self._runner: Any = None
        self._stopped = False

    def start(self) -> None:
        if self._runner is None:
            self._runner = concurrency.every(self.tick, self._cycle, "health cycle")

    def stop(self) -> None:
        self._stopped = True

    def _cycle(self) -> bool:
        if self._stopped:
            return False
        self.run_once(concurrency.monotonic())
        return True

    def run_once(self, now: float) -> None:
        s = self.settings
        to_check: List[Connection] = []
        claims_due: List[Connection] = []
        unclaimed: List[Connection] = []
        claims = self.backend.claims
        refresh_all = claims.refresh_all_wanted
        for conn in self.registry.connections():
            if conn.needs_claim:
                unclaimed.append(conn)
            elif refresh_all and conn.id_claim is not None:
                claims_due.append(conn)
            if conn.ping_sent_at is not None:
                if now - conn.ping_sent_at > s.pong_timeout:
                    log.info("no pong from %s on %s within %.1f s: terminating",
                             conn.client_id, conn.namespace.path, s.pong_timeout)
                    conn.terminate(CloseCode.SERVER_ERROR, "pong timeout")
            elif now >= conn.next_ping_at:
                conn.next_ping_at = now + s.ping_interval
                conn.send_ping(now)
                if not refresh_all and claims.due(conn, now):
                    claims_due.append(conn)
                if conn.ctx.user_id is not None and not conn.ctx.is_public:
                    to_check.append(conn)
        if to_check:
            self.revalidate(to_check)
        # unclaimed: admitted while Redis was away or slow; after an outage, every claim
        claims.maintain(unclaimed, claims_due, now, everything=refresh_all)
        self.sweep()

    def revalidate(self, conns: List[Connection]) -> None:
        """Reload each user once; close 4401 if gone or inactive, 4403 if demoted."""
        app = self.app
        if not auth.can_reload_users(app):
            # No flask-login user loader (e.g. identities from a ``context_loader``):
            # nothing to re-validate against, which is not the same as "user gone".
            return
        users: Dict[str, Optional[Any]] = {}
        with app.app_context():
            for conn in conns:
                uid = conn.ctx.user_id
                assert uid is not None
                if uid not in users:
                    try:
                        users[uid] = auth.reload_user(app, uid)
                    except Exception:
                        log.exception("user loader failed for %r; keeping the session", uid)
                        users[uid] = _KEEP
                self._apply(conn, users[uid])

    def _apply(self, conn: Connection, user: Any) -> None:
        if user is _KEEP or not conn.open:
            return
        if user is None or not getattr(user, "is_active", True):
            conn.expire()
            return
        required = conn.namespace.template.require_roles
        if required and not set(required) & set(roles_of(user)):
            conn.close(CloseCode.FORBIDDEN, "Role no longer held")


_KEEP = object()
