"""asyncio + picows reference peer: the plain flask-sock app's protocol on picows + uvloop.

Not a WSGI app (it is asyncio), so the runner starts it as
``python benchmarks/apps/picows_app.py --port P`` instead of under gunicorn. It is the
"how fast can one Python process go" reference: C frame parsing and masking (picows),
libuv event loop (uvloop), orjson, one set of transports and a plain send loop.

Messages are JSON, exactly as in flasksock_app.py (same client dialect):
- ``{"type": "bcast", "data": P}``  -> ``{"type": "tick", "data": P}`` to every client
- ``{"type": "burst", "data": {k, seq, t, pad}}`` -> k ticks back to back
- ``{"type": "echo", ...}`` -> the same text back
``GET /count`` (a plain HTTP/1.1 GET answered by picows' upgrade hook) returns the number
of open WebSocket transports. Any other path than ``/ws`` and ``/count`` gets a 404.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import orjson
from picows import (
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in benchmarks/requirements.txt
    uvloop = None

clients: set[WSTransport] = set()
TEXT = WSMsgType.TEXT


def broadcast(data: bytes) -> None:
    for t in tuple(clients):
        try:
            t.send(TEXT, data)
        except Exception:  # noqa: BLE001 - a transport that is going away
            clients.discard(t)


class Conn(WSListener):
    def on_ws_connected(self, transport: WSTransport):
        clients.add(transport)

    def on_ws_disconnected(self, transport: WSTransport):
        clients.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame):
        mt = frame.msg_type
        if mt is not TEXT:
            if mt is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            return
        raw = frame.get_payload_as_bytes()
        msg = orjson.loads(raw)
        kind = msg.get("type")
        if kind == "bcast":
            broadcast(orjson.dumps({"type": "tick", "data": msg.get("data")}))
        elif kind == "burst":
            req = msg["data"]
            seq, t, pad = int(req["seq"]), req["t"], req.get("pad", "")
            for i in range(int(req.get("k", 1))):
                broadcast(orjson.dumps({"type": "tick",
                                        "data": {"seq": seq + i, "t": t, "pad": pad}}))
        elif kind == "echo":
            transport.send(TEXT, raw)


def route(request: WSUpgradeRequest):
    path = request.path.split(b"?", 1)[0]
    if path == b"/ws":
        return Conn()
    if path == b"/count":
        body = orjson.dumps({"count": len(clients), "pid": os.getpid()})
        resp = WSUpgradeResponse.create_ok_response(
            body, extra_headers={"Content-Type": "application/json"})
        return WSUpgradeResponseWithListener(resp, None)
    return None  # 404


async def serve(host: str, port: int) -> None:
    server = await ws_create_server(route, host, port, websocket_handshake_timeout=30,
                                    backlog=4096)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)
    async with server:
        try:
            await stop
        except asyncio.CancelledError:
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    if uvloop is not None:
        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
