"""A gunicorn worker for WebSocket servers: gunicorn's gevent worker, accepting in batches.

::

    gunicorn -k flask_jpulse_ws.worker.GeventWorker -w 4 --worker-connections 10000 \\
             --backlog 4096 "myapp:create_app()"

Why: gunicorn's gevent worker accepts one connection per turn of its event loop as soon as
it runs more than one worker (it sets gevent's ``max_accept`` to 1, so that idle workers
share new connections). That is fine for short requests. In a reconnect storm (a deploy,
a proxy restart, a network blip: thousands of clients back within a second) a busy
worker's loop turn lasts milliseconds, the workers together accept a few thousand
connections a second, and the kernel's accept queue (``--backlog``, 2048 by default)
overflows. Linux then drops new SYNs and handshake ACKs, and each connection it dropped
waits for a TCP retransmission: 1 s, 3 s or 7 s in all.

This worker accepts up to :attr:`GeventWorker.accept_batch` connections per loop turn
(gevent's own default, the one gunicorn keeps with a single worker). On this project's
reconnect storm (10,000 sockets over 4 workers, docs/performance.md; three runs of each,
alternating) the accept queue overflowed 22,600-27,000 times per run with gunicorn's
worker and 0-830 times with this one, and the handshake p99 fell from 3.6-4.6 s to
2.9-3.2 s. Connections still spread evenly over busy workers, since each worker takes
what is waiting when its turn comes; a worker that reaches ``--worker-connections``
stops accepting and leaves the rest to the others, as before.

Everything else is gunicorn's gevent worker (``-k gevent``) unchanged; it needs
gunicorn with its gevent extra (``pip install "flask-jpulse-ws[gunicorn]"``).
"""

from __future__ import annotations

from gevent.server import StreamServer
from gunicorn.workers import ggevent

__all__ = ["GeventWorker"]


class GeventWorker(ggevent.GeventWorker):
    """``-k gevent`` that accepts up to ``accept_batch`` connections per event-loop turn,
    also when it runs beside other workers. Subclass it to change the batch."""

    #: Connections accepted per loop turn (gevent's default; gunicorn uses 1 with ``-w`` > 1).
    accept_batch = 100

    def run(self) -> None:
        batch = int(self.accept_batch)  # gevent refuses one below 1 when it builds the server

        class BatchAcceptingServer(StreamServer):
            # gunicorn's run() builds a StreamServer and then sets ``max_accept = 1`` on
            # it when it runs several workers; this server keeps its batch instead.
            max_accept = property(lambda _self: batch, lambda _self, _ignored: None)

        # gunicorn's run() looks the server class up in its module when it builds the
        # server; this process runs this one worker only (gunicorn forks one per worker).
        ggevent.StreamServer = BatchAcceptingServer
        self.log.debug("accepting up to %d connections per loop turn", batch)
        super().run()
