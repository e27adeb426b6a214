"""Server requests to a client held by another process, over the relay.

``ns.request(client_id, ...)`` asks a local client directly. When the client is not
local and the app runs over Redis, the asking process publishes a ``request``
operation; the process that holds the client answers at once with an ``accepted``
reply (so "nobody holds it" is known within :data:`ACCEPT_TIMEOUT`, not after the whole
timeout), asks its client, and publishes the result addressed to the asking process.

Requests and replies are point-to-point: a lost one shows up as an error for the one
caller waiting on it, so the relay never turns their loss into a ``_resync``.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Callable, Dict, Sequence

from .. import concurrency
from ..core import envelope
from ..errors import ErrorCode

__all__ = ["RemoteRequests", "ACCEPT_TIMEOUT", "MAX_WAITING", "MAX_SERVING", "NOBODY_HOLDS_IT"]

log = logging.getLogger("flask_jpulse_ws")

#: Seconds the asking process waits for the holder's ``accepted``: a relay round trip
#: takes milliseconds, so silence this long means no process holds the client.
ACCEPT_TIMEOUT = 2.0
#: The holder does not ask its client once a request is this close to the asker's accept
#: deadline (by the request's ``sentAt``; hosts need synchronised clocks, as for
#: presence): an asker that gave up must not have its request carried out anyway.
ACCEPT_MARGIN = 0.5
#: Seconds past the timeout the asker keeps waiting: the holder times out first and
#: its REQUEST_TIMEOUT (or a reply that came just in time) still has to travel.
REPLY_GRACE = 1.0
#: Requests this process may have waiting on other processes, and requests from other
#: processes it may be serving; beyond them a request fails at once instead of growing.
MAX_WAITING = 10000
MAX_SERVING = 10000
#: The error of a request to a namespace no process holds a client of (known at once
#: from PUBLISH's count of listeners).
NOBODY_HOLDS_IT = "Client not connected: no process holds a client of this namespace"


def _error(message: str, code: str) -> Dict[str, Any]:
    return {"success": False, "error": message, "code": code}


class _Waiter:
    __slots__ = ("accepted", "result", "holder")

    def __init__(self) -> None:
        self.accepted = concurrency.Event()
        self.result = concurrency.AsyncResult()
        self.holder: Any = None  # the host that accepted first: only its answer counts


class RemoteRequests:
    """Both sides of cross-process server requests for one app.

    :param relay: carries the requests and replies (``redis_relay.RedisRelay``).
    :param find_client: the local connection ``(path, client_id)``, or ``None``.
    :param wire_ctx_fields: the context fields a request may carry.
    """

    def __init__(self, relay: Any, find_client: Callable[[str, str], Any],
                 wire_ctx_fields: Sequence[str]) -> None:
        self.relay = relay
        self._find_client = find_client
        self._wire_ctx_fields = wire_ctx_fields
        self._waiting: Dict[str, _Waiter] = {}
        self.serving = 0
        self.asked = 0
        self.served = 0
        self.not_found = 0

    # ------------------------------------------------------------------ asking side
    def ask(self, path: str, client_id: str, data: Dict[str, Any], timeout: float,
            ctx: Any) -> Dict[str, Any]:
        """Ask a client held by another process; same results as ``conn.request``."""
        relay = self.relay
        if len(self._waiting) >= MAX_WAITING:
            return _error("Too many requests to other processes are waiting",
                          ErrorCode.NOT_CONNECTED)
        rid = uuid.uuid4().hex
        waiter = self._waiting[rid] = _Waiter()
        self.asked += 1
        try:
            wire = envelope.wire_ctx(ctx, self._wire_ctx_fields)
            listeners = relay.publish("request", path=path, clientId=client_id,
                                      requestId=rid, data=dict(data), ctx=wire,
                                      timeout=timeout, sentAt=time.time())
            if listeners is None:  # the publish was dropped: nobody will answer
                return _error("Client not connected here, and the relay is unavailable",
                              ErrorCode.NOT_CONNECTED)
            if listeners == 0:  # no process holds a client of the path: no need to wait
                self.not_found += 1
                return _error(NOBODY_HOLDS_IT, ErrorCode.NOT_CONNECTED)
            start = concurrency.monotonic()
            if not waiter.accepted.wait(min(timeout, ACCEPT_TIMEOUT)):
                self.not_found += 1
                return _error("Client not connected", ErrorCode.NOT_CONNECTED)
            left = timeout - (concurrency.monotonic() - start) + REPLY_GRACE
            if not waiter.result.wait(max(0.0, left)):
                return {**_error(f"No reply within {timeout} s", ErrorCode.REQUEST_TIMEOUT),
                        "requestId": rid}
            return waiter.result.value
        finally:
            self._waiting.pop(rid, None)

    def on_reply(self, message: Dict[str, Any]) -> None:
        """A ``reply`` operation: ours when addressed to this process's host id."""
        if message.get("to") != self.relay.host_id:
            return
        waiter = self._waiting.get(str(message.get("requestId")))
        if waiter is None:
            return  # the asker gave up already
        host = message.get("host")
        if waiter.holder is None:
            waiter.holder = host
        elif host != waiter.holder:
            return  # one id held on two processes: only the first to accept may answer
        waiter.accepted.set()
        result = message.get("result")
        if isinstance(result, dict):
            waiter.result.set(result)

    # ------------------------------------------------------------------ holding side
    def on_request(self, message: Dict[str, Any]) -> None:
        """A ``request`` operation: serve it when this process holds the client."""
        conn = self._find_client(str(message.get("path")), str(message.get("clientId")))
        if conn is None or not conn.open:
            return  # another process holds it, or nobody: the asker's accept wait ends
        if self.serving >= MAX_SERVING:
            log.warning("refusing a relayed request: %d already being served", self.serving)
            return
        data = message.get("data")
        if not isinstance(data, dict):
            return
        self.serving += 1
        # The subscriber must not wait for a client: the request runs in its own task.
        concurrency.spawn(self._serve, conn, data, message)

    def _serve(self, conn: Any, data: Dict[str, Any], message: Dict[str, Any]) -> None:
        relay = self.relay
        route = {"to": message.get("host"), "requestId": message.get("requestId")}
        try:
            relay.publish("reply", accepted=True, **route)
            if relay.degraded or self._too_late(message):
                return  # the asker will not hear of it, or has given up: do not ask
            try:
                timeout = max(0.0, float(message.get("timeout", 30.0)))
            except (TypeError, ValueError):
                timeout = 30.0
            result = conn.request(data, timeout, message.get("ctx") or None)
            relay.publish("reply", result=result, **route)
            self.served += 1
        except Exception:  # a relayed request must never take the process down
            log.exception("could not serve a relayed request to %s", conn.namespace.path)
        finally:
            self.serving -= 1

    @staticmethod
    def _too_late(message: Dict[str, Any]) -> bool:
        try:
            sent_at = float(message.get("sentAt", 0))
        except (TypeError, ValueError):
            return True
        return time.time() - sent_at > ACCEPT_TIMEOUT - ACCEPT_MARGIN

    def status(self) -> Dict[str, int]:
        return {"waiting": len(self._waiting), "serving": self.serving,
                "asked": self.asked, "served": self.served, "notFound": self.not_found}
