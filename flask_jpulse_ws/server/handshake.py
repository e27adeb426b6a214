"""The WebSocket endpoint: upgrade, admission checks in protocol order, the
connection's life, and the WSGI ending each server needs.

Order (protocol.md section 2): origin (HTTP 403, before the upgrade) -> handshake rate
per IP (HTTP 429, before the upgrade) -> caps (4529) -> namespace (4404) -> a logged-out
session (4401) -> public access -> login (4401) -> roles (4403) -> ``on_create`` -> client
id and the duplicate rule (4409) -> the namespace still there (4404) -> welcome ->
on_connect.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, quote

from flask import Response, request

from .. import concurrency
from ..context import Context
from ..core import envelope, frames, resume
from ..core.history import Position, parse_since
from ..core.paths import is_whitelisted
from ..errors import CloseCode
from . import auth
from .admission import Rejected
from .connection import Connection
from .namespace import close_code_for
from .pipeline import handle_message

if TYPE_CHECKING:  # pragma: no cover
    from .state import AppState

__all__ = ["serve", "UUID_RE"]

log = logging.getLogger("flask_jpulse_ws")

#: Seconds ``on_disconnect`` waits for the connection's queued messages to be handled.
_HANDLER_DRAIN_TIMEOUT = 30.0

#: Canonical lowercase UUID, any version.
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def serve(state: AppState) -> Any:
    """The view behind every ``/api/1/ws/...`` upgrade request."""
    environ = request.environ
    settings = state.settings
    key = str(environ.get("HTTP_SEC_WEBSOCKET_KEY") or "")
    if "websocket" not in environ.get("HTTP_UPGRADE", "").lower() or \
            not frames.valid_client_key(key):
        return Response("Expected a WebSocket upgrade request\n", 400)
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13":
        return Response("Unsupported WebSocket version\n", 426,
                        {"Sec-WebSocket-Version": "13"})
    unfit = _server_cannot_hold_sockets(environ)
    if unfit:
        _log_unfit_server(unfit)
        return Response(unfit + "\n", 500)
    allowed, expected = auth.origin_check(environ, settings.allowed_origins,
                                          settings.trusted_proxies)
    if not allowed:
        state.admission.refused_origins += 1
        log.warning("refused WebSocket upgrade from origin %r to %s: expected %s, from "
                    "Host %r and X-Forwarded-Host %r (behind a proxy: pass the Host header "
                    "with its port, e.g. nginx's $http_host, and set "
                    "JPULSE_WS_TRUSTED_PROXIES; another site: JPULSE_WS_ALLOWED_ORIGINS)",
                    environ.get("HTTP_ORIGIN"), environ.get("PATH_INFO"), expected or "none",
                    environ.get("HTTP_HOST"), environ.get("HTTP_X_FORWARDED_HOST"))
        return Response("Origin not allowed\n", 403)
    ip = auth.client_ip(environ, settings.trusted_proxies)
    retry_after = state.admission.too_fast(ip)
    if retry_after is not None:
        return Response("Too many WebSocket handshakes from this address\n", 429,
                        {"Retry-After": str(retry_after)})
    sock, mode = _take_socket(environ)
    ctx = state.load_context(ip)
    token = auth.session_token()
    state.ensure_started()
    # The 101 is written with the first frame after admission (the welcome or a close):
    # one send per handshake instead of two. From here on the socket speaks WebSocket:
    # nothing may escape to the server, which would write an HTTP 500 instead of the 101
    # or after it (clients read that as a corrupt frame).
    try:
        _upgraded(state, environ, sock, ip, ctx, token, frames.handshake_response(key))
    except Exception:
        state.counters.server_errors += 1
        log.exception("WebSocket connection to %s failed after the upgrade",
                      environ.get("PATH_INFO"))
    return _ended(mode)


def _upgraded(state: AppState, environ: Dict[str, Any], sock: Any, ip: str, ctx: Context,
              token: Optional[str], upgrade: bytes) -> None:
    """Admission, the 101 (``upgrade``) with the first frame, then the connection's life."""
    counted = False
    try:
        state.admission.admit(ip)
        counted = True
        ns, client_id, ctx, identity, claim, claim_later = _admit(state, environ, ctx, token)
    except Exception as exc:
        if counted:
            state.admission.release(ip)
        if not isinstance(exc, Rejected):
            exc = Rejected(CloseCode.SERVER_ERROR, "Server error")
            log.exception("admission to %s failed", environ.get("PATH_INFO"))
        state.admission.refused(exc.code)
        _close_rejected(sock, exc.code, exc.reason, state.settings.close_timeout, upgrade)
        return
    conn = Connection(sock, ns, client_id, ctx, identity, token, upgrade=upgrade)
    conn.id_claim, conn.id_claimed_at = claim, time.monotonic()
    conn.needs_claim = claim_later
    joined = True
    try:
        try:
            since = parse_since(_query(environ, "since")) if ns.template.history_size \
                else None
            joined = _join(state, ns, conn, since)
        finally:
            state.registry.end_join(ns)  # the handshake is over, whatever happened
        if joined:
            conn.run(handle_message)
    except Exception:
        conn.open = False
        conn.terminate(CloseCode.SERVER_ERROR, "Server error")  # through its writer
        raise
    finally:
        state.admission.release(ip)
        if joined:
            _leave(state, conn)
        else:
            _abandon(state, conn)


def _admit(state: AppState, environ: Dict[str, Any], ctx: Context, token: Optional[str]
           ) -> Tuple[Any, str, Context, tuple, Optional[str], bool]:
    """Checks 3-8 of the handshake: (namespace, client id, context, identity, the
    cluster-wide claim on the id or ``None``, whether to claim it later)."""
    settings = state.settings
    raw_path = _raw_path(environ)
    match = state.registry.match_raw(raw_path)
    if match is None:
        raise Rejected(CloseCode.NOT_FOUND, "No such namespace")
    template, path, params = match
    ctx.params = dict(params)
    ctx.namespace = path
    if token is not None and state.backend.revocations.is_revoked(token):
        raise Rejected(CloseCode.UNAUTHORIZED, "Session expired")  # logged out: a replay
    if settings.public_access and is_whitelisted(path, settings.public_whitelist):
        ctx.is_public = not ctx.has_any_role(settings.admin_roles)
    else:
        if template.require_auth and not ctx.is_authenticated:
            raise Rejected(CloseCode.UNAUTHORIZED, "Login required")
        if template.require_roles and not ctx.has_any_role(template.require_roles):
            raise Rejected(CloseCode.FORBIDDEN, "Not allowed")
    if template.on_create is not None and template.is_pattern:
        ctx = _run_on_create(template, ctx, path)
    ns = state.registry.get_or_create(template, path, params)
    if ns is None:
        log.warning("namespace cap (%d) reached: refusing %s", settings.max_namespaces, path)
        raise Rejected(CloseCode.TOO_MANY, "Too many namespaces")
    state.registry.begin_join(ns)  # not evictable while the claim below waits on Redis
    try:
        client_id, identity, claim, claim_later = _take_id(state, environ, ns, ctx, token)
    except BaseException:
        state.registry.end_join(ns)
        raise
    return ns, client_id, ctx, identity, claim, claim_later


def _take_id(state: AppState, environ: Dict[str, Any], ns: Any, ctx: Context,
             token: Optional[str]) -> Tuple[str, tuple, Optional[str], bool]:
    """Check 8: (client id, identity, the cluster-wide claim or ``None``, whether to
    claim it later)."""
    client_id = _client_id(environ, state.resume_key)
    identity = auth.identity_of(ctx, token, environ.get("HTTP_USER_AGENT", ""))
    held = ns.clients.get(client_id)
    if held is not None:
        if held.identity == identity:
            held.close(CloseCode.REPLACED, "Replaced by a newer connection")
        else:
            client_id = str(uuid.uuid4())  # never take over someone else's id
    # Nor one another process holds for someone else (a no-op in one process):
    client_id, claim, claim_later = state.backend.claims.claim(ns.path, client_id, identity)
    return client_id, identity, claim, claim_later


def _run_on_create(template: Any, ctx: Context, path: str) -> Context:
    try:
        result = template.on_create(request, ctx)
    except Exception:
        log.exception("on_create of %s failed for %s", template.path, path)
        raise Rejected(CloseCode.SERVER_ERROR, "Server error") from None
    if isinstance(result, Context):
        result.namespace, result.params = path, ctx.params  # routing fields stay ours
        return result
    code = close_code_for(result)
    if code is None:
        log.error("on_create of %s returned %r: expected a ctx, None or a 4000-4999 int",
                  template.path, result)
        raise Rejected(CloseCode.SERVER_ERROR, "Server error")
    if code == CloseCode.SERVER_ERROR and isinstance(result, int):
        log.error("on_create of %s returned close code %d outside 4000-4999",
                  template.path, result)
    raise Rejected(code, "Rejected" if code != CloseCode.NOT_FOUND else "No such namespace")


def _query(environ: Dict[str, Any], name: str) -> Optional[str]:
    values = parse_qs(environ.get("QUERY_STRING", "")).get(name)
    return values[0] if values else None


def _client_id(environ: Dict[str, Any], resume_key: bytes) -> str:
    """``?uuid=`` when ``?resume=`` is its resume token, else a fresh id: a client id is
    public (presence lists show it), only its owner holds the token."""
    given = _query(environ, "uuid")
    if given and UUID_RE.match(given) and \
            resume.verify(resume_key, given, _query(environ, "resume")):
        return given
    return str(uuid.uuid4())


def _join(state: AppState, ns: Any, conn: Connection, since: Optional[Position]) -> bool:
    """Add ``conn`` to ``ns``, welcome it, call ``on_connect``; False (and nothing
    done) when the app removed ``ns`` while the handshake waited."""
    template = ns.template
    # Listen to the namespace's channel before the history position is read and the
    # welcome sent, so nothing published after them can miss this client.
    conn.following = True
    state.backend.follow(ns.path)
    if ns.removed:  # by the app (remove_namespace) while we waited for the claim or here
        return False
    if template.history_size:
        conn.hold()  # live frames wait while the position and any replay are read
    ns.add(conn)
    state.fanout.joined(conn)
    state.counters.connections += 1
    now = time.time()
    ns.stats.touch(now)
    state.activity.add(now, ns.path, "connected", conn.ctx.username)
    welcome: Dict[str, Any] = {"clientId": conn.client_id,
                               "resumeToken": resume.token_for(state.resume_key,
                                                               conn.client_id),
                               "namespace": ns.path, "limits": ns.limits_wire}
    if template.has_presence:
        welcome["presence"] = True  # the client loads the member list after the welcome
    position = None
    if template.history_size:
        position = state.backend.history.position(ns.path, template.history_ttl)
        if position is not None:
            welcome["epoch"], welcome["offset"] = position
    conn.send_raw_json(envelope.encode_success({"type": "connected", "data": welcome},
                                               ns.wire_ctx(conn.ctx)))
    if template.history_size:
        conn.release(_replay(state, conn, since, position))
    if ns.template.has_presence:
        state.presence.joined(conn)
    state.call_handler(ns.template.connect_handler, conn, "on_connect")
    return True


def _replay(state: AppState, conn: Connection, since: Optional[Position],
            position: Optional[Position]) -> Optional[Position]:
    """Send what a reconnecting client missed, then ``_recovered``; return where it is."""
    if since is None:
        return position
    ns = conn.namespace
    missed = state.backend.history.since(ns.path, since, ns.template.history_ttl)
    if missed is None:  # another epoch, or older than the history: never a partial replay
        conn.send_raw_json(envelope.encode_framework(
            "_recovered", {"recovered": False, "count": 0}))
        return position
    for _, frame_json in missed:
        conn.send_raw_json(frame_json)
    conn.send_raw_json(envelope.encode_framework(
        "_recovered", {"recovered": True, "count": len(missed)}))
    return (since[0], missed[-1][0]) if missed else since


def _abandon(state: AppState, conn: Connection) -> None:
    """A handshake whose namespace was removed before it could join: close 4404 and
    give back what it held, with neither activity entry nor ``on_disconnect``."""
    conn.open = False
    if conn.following:
        state.backend.unfollow(conn.namespace.path)
    if conn.id_claim is not None:
        state.backend.claims.release(conn)
    state.admission.refused(CloseCode.NOT_FOUND)
    _close_rejected(conn.sock, CloseCode.NOT_FOUND, "Namespace removed",
                    state.settings.close_timeout, conn.take_upgrade())


def _leave(state: AppState, conn: Connection) -> None:
    ns = conn.namespace
    if conn.following:
        state.backend.unfollow(ns.path)
    state.fanout.left(conn)
    if ns.discard(conn) and ns.template.has_presence:
        state.presence.left(conn)
    if conn.id_claim is not None:
        state.backend.claims.release(conn)
    if conn.wait_handlers(_HANDLER_DRAIN_TIMEOUT):
        conn.end_handlers()
    else:
        log.warning("on_message handlers of %s still running after %.0f s; calling "
                    "on_disconnect anyway", ns.path, _HANDLER_DRAIN_TIMEOUT)
    now = time.time()
    ns.stats.touch(now)
    state.counters.closed(conn.close_code)
    state.activity.add(now, ns.path, "disconnected", conn.ctx.username,
                       str(conn.close_code or ""))
    state.call_handler(ns.template.disconnect_handler, conn, "on_disconnect")


def _raw_path(environ: Dict[str, Any]) -> str:
    """The request path before percent-decoding (PATH_INFO is already decoded)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        raw = raw.split("?", 1)[0]
        if "://" in raw:  # absolute-form request target
            raw = "/" + raw.split("://", 1)[1].split("/", 1)[-1]
        return str(raw)
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return quote(path.encode("latin-1"), safe="/!$&'()*+,;=:@~-._")


_FIX = ("serve with gunicorn's gevent worker: gunicorn -k gevent --worker-connections "
        "10000 ... (production), or flask run (development)")


def _server_cannot_hold_sockets(environ: Dict[str, Any]) -> Optional[str]:
    """Why this server cannot hold WebSockets, or ``None`` when it can.

    Each socket lives as long as its client: a server whose requests take a thread each
    (gunicorn's sync and gthread workers) would hand its few threads to the first
    sockets, leave every later request hanging, and be killed at its timeout.
    """
    if "gunicorn.socket" in environ:
        if concurrency.using_gevent():
            return None
        return f"This gunicorn worker is not gevent's and cannot hold WebSockets: {_FIX}"
    if "werkzeug.socket" in environ:
        if concurrency.using_gevent() or environ.get("wsgi.multithread"):
            return None
        return f"This development server runs without threads: {_FIX}"
    return f"This server does not hand over its sockets: {_FIX}"


_unfit_logged = False


def _log_unfit_server(reason: str) -> None:
    global _unfit_logged
    if not _unfit_logged:  # once per process: every upgrade request would repeat it
        _unfit_logged = True
        log.error("refusing WebSocket upgrades (HTTP 500): %s", reason)


def _take_socket(environ: Dict[str, Any]) -> Tuple[Any, str]:
    if "gunicorn.socket" in environ:
        return environ["gunicorn.socket"], "gunicorn"
    return environ["werkzeug.socket"], "werkzeug"


def _close_rejected(sock: Any, code: int, reason: str, timeout: float,
                    upgrade: bytes = b"") -> None:
    """Close frame (after the 101 when it is not written yet), then wait briefly for the
    peer's close so it reads ours."""
    try:
        sock.sendall(upgrade + frames.close_frame(code, reason))
        sock.settimeout(timeout)
        decoder = frames.FrameDecoder(1024)
        failed = False  # what the peer sent broke the codec's rules: skim for its close
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(4096)
            if not data:
                break
            if not failed:
                try:
                    if any(op == frames.OP_CLOSE for op, _ in decoder.feed(data)):
                        break
                    continue
                except frames.ProtocolError:
                    failed, data = True, b""
            if decoder.skim(data) is not None:
                break
    except OSError:
        pass
    try:
        sock.shutdown(2)
    except OSError:
        pass


class _SocketTaken(Response):
    """gunicorn's answer after a WebSocket: close the connection, write nothing."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        raise StopIteration()


def _ended(mode: str) -> Any:
    """A response that makes the server write nothing more on the taken socket (one
    class made once: a class made per connection cost 2 % of a handshake)."""
    return _SocketTaken() if mode == "gunicorn" else Response()


