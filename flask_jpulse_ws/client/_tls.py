"""TLS for the Python client (``wss://``), done in memory over a plain TCP socket.

The client reads on one thread/greenlet and writes from others. An ``ssl.SSLSocket``
cannot serve both: it cannot be ``dup()``-ed, so the reader's short ``settimeout``
waits would also cut the writer's ``sendall`` in the middle of a frame, and OpenSSL does
not allow ``SSL_read`` and ``SSL_write`` to run at the same time on one connection.

Here the TLS state is an ``ssl.SSLObject`` over two ``ssl.MemoryBIO`` buffers. Every
call on it happens under one lock and is CPU only; the sockets are used outside that
lock: the reader receives ciphertext on the TCP socket, the writer sends it on a
``dup()`` of it with its own timeout. So neither ever waits for the other's I/O.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any, List, Optional

from .. import concurrency

__all__ = ["TLSSocket"]

#: Ciphertext taken from the TCP socket per ``recv``.
_RAW_BYTES = 65536


class TLSSocket:
    """The client's end of a TLS connection, with the socket calls the client makes:
    ``recv``/``settimeout`` for the reader, ``sendall``, ``dup`` (the writer's handle),
    ``shutdown`` and ``close``. Call :meth:`do_handshake` first."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 server_hostname: str) -> None:
        self._sock = sock  # the reader's: its timeout changes before every recv
        self._wire = sock  # where ciphertext goes out; dup() gives it a timeout of its own
        self._timeout: Optional[float] = sock.gettimeout()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # Verifies the certificate chain, and the host name if the context checks it
        # (the default context does).
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_hostname=server_hostname)
        self._tls_lock = concurrency.Lock()  # every SSLObject call; never held over I/O
        self._send_lock = concurrency.Lock()  # ciphertext leaves in the order it was made

    # ------------------------------------------------------------------ handshake
    def do_handshake(self, deadline: float) -> None:
        """Run the TLS handshake; ``socket.timeout`` after ``deadline`` (monotonic).

        :raises ssl.SSLCertVerificationError: the server's certificate is not trusted.
        """
        while True:
            with self._tls_lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
            self._send_pending(wait=True)
            if done:
                return
            data = self._recv_raw(deadline)
            if not data:
                raise ConnectionResetError("connection closed during the TLS handshake")
            self._feed(data)

    # ------------------------------------------------------------------ reading
    def settimeout(self, timeout: Optional[float]) -> None:
        """The reader's timeout: for a whole :meth:`recv`, however many records it takes."""
        self._timeout = timeout

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes of plaintext; ``b""`` at the end of the connection.

        :raises socket.timeout: nothing arrived within the timeout.
        """
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            data = self._decrypt(bufsize)
            if data is not None:
                return data
            self._feed(self._recv_raw(deadline))

    def _decrypt(self, bufsize: int) -> Optional[bytes]:
        """The plaintext the records received so far hold; None if more are needed."""
        parts: List[bytes] = []
        size = 0
        ended = False
        with self._tls_lock:
            while size < bufsize:
                try:
                    part = self._tls.read(bufsize - size)
                except ssl.SSLWantReadError:
                    break  # the rest of a record is still on its way
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    part = b""  # close_notify, or the TCP connection closed under TLS
                if not part:
                    ended = True
                    break
                parts.append(part)
                size += len(part)
            # Reading can make TLS output of its own (a TLS 1.3 key update reply...).
            replies = self._outgoing.pending > 0
        if replies:
            self._send_pending(wait=False)
        if parts:
            return b"".join(parts)  # an end right after shows on the next call
        return b"" if ended else None

    def _recv_raw(self, deadline: Optional[float]) -> bytes:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            self._sock.settimeout(remaining)
        else:
            self._sock.settimeout(None)
        return self._sock.recv(_RAW_BYTES)

    def _feed(self, data: bytes) -> None:
        with self._tls_lock:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()

    # ------------------------------------------------------------------ writing
    def sendall(self, data: bytes) -> None:
        """Encrypt ``data`` and send it; returns once it is on the wire."""
        with self._tls_lock:
            self._tls.write(data)  # memory BIOs take everything: no partial writes
        self._send_pending(wait=True)

    def _send_pending(self, wait: bool) -> None:
        """Send the ciphertext waiting in the outgoing BIO.

        Bytes leave the BIO and enter the socket under the send lock, so records reach
        the wire in the order they were made (TLS rejects any other). The reader does not
        wait for that lock (``wait=False``): its holder sends everything the BIO holds
        before letting go, and it lets go under the TLS lock, so bytes added after its
        last look always find the lock free.
        """
        if not self._send_lock.acquire(blocking=wait):
            return
        try:
            while True:
                with self._tls_lock:
                    data = self._outgoing.read()
                    if not data:
                        self._send_lock.release()
                        return
                self._wire.sendall(data)
        except BaseException:
            self._send_lock.release()
            raise

    def dup(self) -> _TLSWriter:
        """The writer's handle: sends go out on a ``dup()`` of the TCP socket, whose
        timeout the reader's waits do not touch."""
        self._wire = self._sock.dup()
        return _TLSWriter(self)

    # ------------------------------------------------------------------ the end
    def shutdown(self, how: int) -> None:
        """Cut the TCP connection (wakes a reader blocked in ``recv``). No close_notify:
        the WebSocket close frame already ended the conversation."""
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()


class _TLSWriter:
    """The writer's handle on a :class:`TLSSocket` (what ``dup()`` is for a TCP socket)."""

    def __init__(self, tls: TLSSocket) -> None:
        self._tls = tls

    def settimeout(self, timeout: Optional[float]) -> None:
        self._tls._wire.settimeout(timeout)

    def sendall(self, data: Any) -> None:
        self._tls.sendall(data)

    def shutdown(self, how: int) -> None:
        self._tls._wire.shutdown(how)

    def close(self) -> None:
        self._tls._wire.close()
