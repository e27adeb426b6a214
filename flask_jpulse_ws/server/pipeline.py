"""The inbound pipeline, one message at a time, in protocol order.

frame cap (1009, in the decoder) -> size -> JSON object -> reply to a server
request -> string ``type`` -> reserved types (``_ping`` answered) -> rate window
(``_presence`` answered after it) -> username injection -> activity log -> handler ->
automatic NO_REPLY.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from flask.signals import appcontext_tearing_down

from .. import concurrency
from ..core import envelope
from ..errors import CloseCode, ErrorCode, WSError

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection

__all__ = ["handle_message"]

log = logging.getLogger("flask_jpulse_ws")


def handle_message(conn: Connection, payload: bytes) -> None:
    """Run one received message through the pipeline. Never raises."""
    ns = conn.namespace
    try:
        message = envelope.decode_inbound(payload, ns.limits.max_size)
    except envelope.InboundError as exc:
        _reject(conn, exc.reason, exc.message, exc.code, exc.details, None, payload)
        return
    rid = envelope.request_id_of(message)
    if rid is not None and conn.awaits_answers and conn.resolve_request(rid, message):
        ns.stats.message(time.time())  # a client's answer to ``request()``
        return
    try:
        msg_type = envelope.check_type(message)
    except envelope.InboundError as exc:
        _reject(conn, exc.reason, exc.message, exc.code, exc.details, rid, payload)
        return
    if msg_type == "_ping":  # framework heartbeat: answered, never counted as a message
        if conn.ping_allowed(concurrency.monotonic()):  # unless it is a flood
            conn.send_raw_json(envelope.encode_framework("_pong", {"t": message.get("t")}))
        return
    decision = conn.rate().check(concurrency.monotonic(), rid is not None)
    if not decision.allowed:
        limits = ns.limits
        details = {"maxMessages": limits.max_messages, "interval": limits.interval_ms,
                   "retryAfterMs": decision.retry_after_ms}
        _reject(conn, "rateLimit",
                f"Rate limit exceeded: {limits.max_messages} messages per "
                f"{limits.interval_ms} ms", ErrorCode.RATE_LIMIT_EXCEEDED, details, rid,
                payload, notify=decision.notify)
        return
    if msg_type == "_presence":  # "who is here?": answered by the framework, but it
        # costs a member list (and a Redis read), so it counts against the rate window
        if ns.template.has_presence:
            ns.state.presence.handle_request(conn, rid)
        else:
            _reject(conn, "invalid", "This namespace has no presence", ErrorCode.INVALID,
                    None, rid, payload)
        return
    username = conn.ctx.username
    message["username"] = username  # clients cannot speak as someone else
    now = time.time()
    ns.stats.message(now)
    state = ns.state
    state.counters.messages += 1
    state.counters.messages_in += 1
    state.activity.add(now, ns.path, "received", username, msg_type, payload)
    conn.enqueue(message, rid, run_handler)


def run_handler(conn: Connection, message: dict, rid: Optional[str]) -> None:
    """Call the app's handler for the message's type, else its ``on_message`` (in an app
    context); answer errors and NO_REPLY."""
    template = conn.namespace.template
    handler = template.type_handlers.get(str(message.get("type"))) or template.message_handler
    conn.begin_message(message, rid)
    try:
        if handler is not None:
            _call_in_app_context(conn, handler)
    except WSError as exc:
        conn.reply_error(exc.message, exc.code, exc.details)
    except Exception as exc:  # the connection must outlive any handler bug
        log.exception("on_message handler of %s failed", conn.namespace.path)
        detail = f": {exc!r}" if conn.namespace.state.settings.debug_errors else ""
        conn.reply_error("Internal server error" + detail, ErrorCode.INTERNAL)
    if rid is not None and not conn.replied:
        conn.reply_error("No reply from handler", ErrorCode.NO_REPLY)
    conn.message = None


def _call_in_app_context(conn: Connection, handler: Callable[[Connection], Any]) -> None:
    """``handler(conn)`` in the connection's Flask app context, each message with a fresh
    ``g`` and the app's teardown functions after it, as a context of its own gives.

    The context is pushed by the connection's first message and stays, in the handlers'
    own context variables (``Connection._run_apart``), for the next ones:
    pushing and popping one per message cost 3.4 of the 17.6 us of a request/reply.
    Flask's ``appcontext_pushed``/``appcontext_popped`` signals come once per connection.
    """
    app = conn.namespace.state.app
    app_ctx = conn.handler_app_ctx
    if app_ctx is None:
        app_ctx = conn.handler_app_ctx = app.app_context()
        app_ctx.push()
    elif getattr(app_ctx.g, "__dict__", True):  # the last handler set something in g
        app_ctx.g = app.app_ctx_globals_class()  # (an empty one is kept: 0.2 us less)
    error: Optional[BaseException] = None
    try:
        handler(conn)
    except BaseException as exc:
        error = exc
        raise
    finally:
        if app.teardown_appcontext_funcs or appcontext_tearing_down.receivers:
            app.do_teardown_appcontext(error)


def _reject(conn: Connection, reason: str, text: str, code: Union[int, str], details: object,
            rid: Optional[str], payload: bytes, notify: bool = True) -> None:
    ns = conn.namespace
    ns.drop(reason)
    now = time.time()
    if notify:
        conn.send_raw_json(envelope.encode_error(text, code, details, rid))
        ns.state.activity.add(now, ns.path, "rejected", conn.ctx.username, str(code),
                              payload[:200])
    if conn.abuse(concurrency.monotonic()):
        log.warning("closing %s on %s (%s): repeated limit violations", conn.client_id,
                    ns.path, conn.ctx.ip)
        conn.close(CloseCode.POLICY_VIOLATION, "Too many invalid or rejected messages")
