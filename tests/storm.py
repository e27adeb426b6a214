"""Thousands of WebSocket clients from one test process: asyncio, raw sockets, and the
package's own frame decoder, which fails on any corrupt byte the server sends.

Each client does the upgrade, waits for its ``connected`` welcome, then keeps reading:
it answers pings, records every text frame and any close code or protocol error.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import time
from typing import Dict, List, Optional

import orjson

from flask_jpulse_ws.core import frames


def raise_open_files(wanted: int) -> None:
    """Sockets are files: lift the soft limit (inherited by servers started after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


class StormClient:
    def __init__(self) -> None:
        self.client_id: Optional[str] = None
        self.texts: List[dict] = []
        self.close_code: Optional[int] = None
        self.error: Optional[str] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.task: Optional[asyncio.Task] = None
        self.handshake_s = 0.0

    def has(self, marker: str) -> bool:
        return any(t.get("data", {}).get("data") == marker for t in self.texts
                   if isinstance(t.get("data"), dict))

    async def open(self, port: int, path: str, timeout: float) -> None:
        started = time.monotonic()
        reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b" ", 2)[1].decode()
        if status != "101":
            raise ConnectionError(f"HTTP {status}")
        decoder = frames.FrameDecoder(1 << 24, expect_mask=False)
        welcome = asyncio.get_running_loop().create_future()
        self.task = asyncio.ensure_future(self._read(reader, decoder, welcome))
        await asyncio.wait_for(asyncio.shield(welcome), timeout)
        self.handshake_s = time.monotonic() - started

    async def _read(self, reader: asyncio.StreamReader, decoder: frames.FrameDecoder,
                    welcome: asyncio.Future) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for opcode, payload in decoder.feed(data):
                    if opcode == frames.OP_TEXT:
                        self._text(orjson.loads(payload), welcome)
                    elif opcode == frames.OP_PING:
                        assert self.writer is not None
                        self.writer.write(frames.encode_frame(frames.OP_PONG, payload,
                                                              mask=True))
                    elif opcode == frames.OP_CLOSE:
                        self.close_code = frames.parse_close(payload)[0]
                        return
        except frames.ProtocolError as exc:  # a corrupt stream: what the test looks for
            self.error = f"protocol error: {exc.reason}"
        except (ConnectionError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if not welcome.done():
                welcome.set_exception(ConnectionError(
                    self.error or f"closed {self.close_code} before the welcome"))

    def _text(self, message: dict, welcome: asyncio.Future) -> None:
        data = message.get("data")
        if isinstance(data, dict) and data.get("type") == "connected" and not welcome.done():
            self.client_id = data["data"]["clientId"]
            welcome.set_result(True)
        else:
            self.texts.append(message)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        if self.task is not None:
            self.task.cancel()


async def open_many(port: int, path: str, n: int, in_flight: int, timeout: float = 60.0,
                    on_opened=None) -> tuple:
    """(clients admitted, failures by reason): ``n`` upgrades, ``in_flight`` at a time.
    ``on_opened(count)`` runs after each success (a test's hook to act mid-storm)."""
    gate = asyncio.Semaphore(in_flight)
    opened: List[StormClient] = []
    failures: Dict[str, int] = {}

    async def one() -> None:
        async with gate:
            client = StormClient()
            try:
                await client.open(port, path, timeout)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                reason = f"{type(exc).__name__}: {exc}"
                failures[reason] = failures.get(reason, 0) + 1
                client.abort()
                return
            opened.append(client)
            if on_opened is not None:
                await on_opened(len(opened))

    await asyncio.gather(*(one() for _ in range(n)))
    return opened, failures


async def wait_all(clients: List[StormClient], marker: str, timeout: float) -> List[StormClient]:
    """Clients that have not received ``marker`` by ``timeout`` (empty when all have)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        missing = [c for c in clients if not c.has(marker)]
        if not missing:
            return []
        await asyncio.sleep(0.1)
    return [c for c in clients if not c.has(marker)]
