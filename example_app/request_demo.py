"""Request/response both ways on ``/api/1/ws/hello-request`` (1 KB message limit).

- ``echo``: the browser's ``request()`` gets ``conn.reply()``.
- ``ask-browser``: the server asks the same browser (``conn.request()``) and
  replies with what it said.
- ``ask-peers``: the server asks every other browser of the namespace on this
  process, in parallel, and replies with their answers; their pages show who asked.
- Any other type with a ``requestId`` gets the automatic ``NO_REPLY`` error.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, List

from flask import Flask

from flask_jpulse_ws import JPulseWS, WSError, concurrency

__all__ = ["PATH", "init_app"]

PATH = "/api/1/ws/hello-request"
#: Seconds the server waits for a browser's answer.
ASK_TIMEOUT = 5.0
#: Peers asked at most by one ask-peers.
PEERS_MAX = 20


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _browser_info(answer: Dict[str, Any]) -> Dict[str, str]:
    """Only the expected fields of a browser's answer, as short strings."""
    data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
    info = data.get("data") if isinstance(data.get("data"), dict) else {}
    return {k: str(info.get(k, ""))[:200] for k in ("userAgent", "language", "page")}


def init_app(app: Flask, ws: JPulseWS) -> None:
    ns = ws.namespace(PATH, message_limits={"maxSize": 1024})

    @ns.on_message
    def message(conn: Any) -> None:
        msg = conn.message
        kind = msg["type"]
        data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
        if kind == "echo":
            text = data.get("text", "")
            if not isinstance(text, str):
                raise WSError("text must be a string", 400)
            conn.reply({"type": "echo-result",
                        "data": {"text": text, "echoedAt": _now(),
                                 "username": conn.ctx.username or "guest"}})
        elif kind == "ask-browser":
            answer = conn.request({"type": "get-browser-info", "data": {"askedBy": "server"}},
                                  timeout=ASK_TIMEOUT)
            if not answer.get("success"):
                raise WSError(answer.get("error", "No answer"), answer.get("code", "ERROR"))
            conn.reply({"type": "ask-browser-result",
                        "data": {"browser": _browser_info(answer), "serverSawAt": _now()}})
        elif kind == "ask-peers":
            conn.reply({"type": "ask-peers-result",
                        "data": {"answers": _ask_peers(conn), "serverSawAt": _now()}})
        # Anything else: no reply, so a request() gets NO_REPLY from the framework.

    def _ask_peers(conn: Any) -> List[Dict[str, Any]]:
        asker = conn.ctx.username or "guest"
        peers = [c for c in tuple(conn.namespace.clients.values()) if c is not conn]
        peers = peers[:PEERS_MAX]
        results: List[Any] = [None] * len(peers)

        def ask(i: int, peer: Any) -> None:
            results[i] = peer.request({"type": "get-browser-info",
                                       "data": {"askedBy": asker}}, timeout=ASK_TIMEOUT)

        workers = [concurrency.spawn(ask, i, p) for i, p in enumerate(peers)]
        for w in workers:
            w.join()
        answers = []
        for peer, result in zip(peers, results):
            result = result or {}
            entry: Dict[str, Any] = {"username": peer.ctx.username or "guest",
                                     "ok": bool(result.get("success"))}
            if entry["ok"]:
                entry["browser"] = _browser_info(result)
            else:
                entry["error"] = str(result.get("code", "ERROR"))
            answers.append(entry)
        return answers
