"""The bridge to flask-login and the request: origin, client IP, context, tokens.

flask-login is optional: without a ``LoginManager`` every client is anonymous and
``require_auth`` namespaces refuse everyone.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

from flask import current_app, request, session
from flask_login import current_user

from ..context import Context, initials_of, roles_of

__all__ = ["origin_check", "client_ip", "context_from_user", "SESSION_TOKEN_KEY",
           "session_token", "ensure_session_token", "reload_user", "identity_of"]

log = logging.getLogger("flask_jpulse_ws")

#: Flask session key of the random token that names one browser login session.
SESSION_TOKEN_KEY = "_jpulse_ws_token"

_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def _norm_origin(scheme: str, netloc: str) -> str:
    scheme = scheme.lower()
    netloc = netloc.lower()
    host, sep, port = netloc.rpartition(":")
    if sep and "]" not in port and port == _DEFAULT_PORTS.get(scheme):
        netloc = host
    return f"{scheme}://{netloc}"


def expected_origin(environ: Mapping[str, Any], trusted_proxies: int) -> str:
    """The page origin a same-origin browser would send, proxy-aware."""
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    if trusted_proxies > 0:
        fwd_proto = _last_forwarded(environ.get("HTTP_X_FORWARDED_PROTO"), trusted_proxies)
        fwd_host = _last_forwarded(environ.get("HTTP_X_FORWARDED_HOST"), trusted_proxies)
        scheme = fwd_proto or scheme
        host = fwd_host or host
    return _norm_origin({"ws": "http", "wss": "https"}.get(scheme, scheme), host)


def origin_check(environ: Mapping[str, Any], allowed: Union[None, str, Tuple[str, ...]],
                 trusted_proxies: int) -> Tuple[bool, str]:
    """(allowed?, what was expected). No Origin header (not a browser) is allowed."""
    origin = environ.get("HTTP_ORIGIN")
    if allowed == "*":
        return True, "*"
    if not origin:
        return True, ""
    parts = urlsplit(origin.strip())
    given = _norm_origin(parts.scheme, parts.netloc) if parts.scheme else origin.lower()
    if allowed is None:
        expected = expected_origin(environ, trusted_proxies)
        return given == expected, expected
    normalised = {_norm_origin(*urlsplit(o)[:2]) if "://" in o else o for o in allowed}
    return given in normalised, ", ".join(sorted(normalised))


def _last_forwarded(value: Optional[str], trusted: int) -> Optional[str]:
    if not value:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items[-trusted] if len(items) >= trusted else None


def client_ip(environ: Mapping[str, Any], trusted_proxies: int) -> str:
    """The peer address; ``X-Forwarded-For`` counts only behind trusted proxies.

    With N trusted proxies the client is the Nth entry from the right: entries
    further left were written by the client itself and can be forged.
    """
    remote = str(environ.get("REMOTE_ADDR") or "")
    if trusted_proxies > 0:
        forwarded = _last_forwarded(environ.get("HTTP_X_FORWARDED_FOR"), trusted_proxies)
        if forwarded:
            remote = forwarded
    return remote[7:] if remote.startswith("::ffff:") else remote


def _current_user() -> Any:
    try:
        if getattr(current_app, "login_manager", None) is None:
            return None
        return current_user._get_current_object()
    except Exception:  # pragma: no cover - flask-login missing or misconfigured
        log.exception("could not read flask-login's current_user")
        return None


def context_from_user(user: Any, ip: str) -> Context:
    """A :class:`Context` from a flask-login user (or ``None`` / anonymous)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return Context(ip=ip)
    user_id = str(user.get_id())
    username = str(getattr(user, "username", None) or user_id)
    first = str(getattr(user, "first_name", "") or "")
    last = str(getattr(user, "last_name", "") or "")
    return Context(username=username, ip=ip, roles=roles_of(user),
                   first_name=first, last_name=last,
                   initials=str(getattr(user, "initials", "") or initials_of(first, last,
                                                                          username)),
                   user_id=user_id)


def current_context(ip: str) -> Context:
    return context_from_user(_current_user(), ip)


def session_token() -> Optional[str]:
    token = session.get(SESSION_TOKEN_KEY)
    return token if isinstance(token, str) else None


def ensure_session_token(*_args: Any, **_kwargs: Any) -> None:
    """Signal receiver (``user_logged_in``): name this browser session."""
    session[SESSION_TOKEN_KEY] = secrets.token_urlsafe(16)


def adopt_session() -> None:
    """``before_request``: name a logged-in browser session that has no token yet.

    Sessions logged in before the extension was installed (or by code that sent no
    flask-login signal) would otherwise have no token: logout could not find their
    sockets, and two of them would count as one identity. Upgrade requests are
    skipped: a 101 response cannot carry the new cookie.
    """
    if request.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        return
    if "_user_id" in session and SESSION_TOKEN_KEY not in session:  # flask-login's key
        ensure_session_token()


def identity_of(ctx: Context, token: Optional[str], user_agent: str) -> tuple:
    """Who owns a client id: (user id, session token), or (IP, User-Agent) if anonymous."""
    if ctx.user_id is not None:
        return ("user", ctx.user_id, token)
    return ("anon", ctx.ip, user_agent)


def _user_loader(app: Any) -> Any:
    return getattr(getattr(app, "login_manager", None), "_user_callback", None)


def can_reload_users(app: Any) -> bool:
    """True when the app has a flask-login ``user_loader`` to re-validate sessions with."""
    return _user_loader(app) is not None


def reload_user(app: Any, user_id: str) -> Any:
    """Load a user again through flask-login's user loader (None when gone)."""
    loader = _user_loader(app)
    if loader is None:
        return None
    return loader(user_id)
