"""``gunicorn -k flask_jpulse_ws.worker.GeventWorker``: gunicorn's gevent worker, accepting
a batch of connections per loop turn also beside other workers (gunicorn's accepts one),
so that a reconnect storm does not overflow the kernel's accept queue. Real gunicorn
processes, real sockets."""

import json
import os
import signal
import socket
import time

import pytest
from servers import OUR_WORKER, GunicornServer, wait_for

from flask_jpulse_ws.testing import WSTestClient

pytestmark = pytest.mark.cluster

WAITING = 150  # connections queued while the workers are stopped


def _probe_many(srv, n):
    """Queue ``n`` requests for /_test/accept-probe while both workers are stopped, let
    the workers go, and return the answers. The kernel completes each TCP handshake and
    holds the connection in the accept queue (the backlog, 2048, is far above ``n``)."""
    pids = srv.worker_pids()
    request = (f"GET /_test/accept-probe HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
               f"Connection: close\r\n\r\n").encode()
    socks = []
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            s.sendall(request)
            socks.append(s)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    answers = []
    for s in socks:
        with s:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        answers.append(json.loads(body))
    return answers


@pytest.mark.parametrize("worker_class", ["gevent", OUR_WORKER])
def test_a_worker_beside_others_accepts_what_waits_in_one_loop_turn(worker_class):
    """Each probe request takes 10 ms of CPU, sleeps 50 ms, and answers how many probes its
    worker holds. gunicorn's worker (``max_accept = 1`` with two workers) takes one
    waiting connection per loop turn, so about 6 are in hand when the first answers
    (seen: 6, also with the machine's cores busy); ours takes up to 100 in one turn, and
    gevent then starts about 50 handlers before its next poll (seen: 54-55). gunicorn's
    own worker shows what the check tells apart."""
    srv = GunicornServer(workers=2, worker_class=worker_class).start()
    try:
        wait_for(lambda: len(srv.worker_pids()) == 2, message="two workers")
        srv.http().get("/_test/stats")  # both processes up and serving
        answers = _probe_many(srv, WAITING)
        held = max(a["active"] for a in answers)
        if worker_class == OUR_WORKER:
            assert held >= 30, f"held at most {held} of {WAITING} at once"
        else:
            assert held <= 15, f"gunicorn's worker held {held} at once"
    finally:
        srv.stop()


def test_websockets_work_on_the_worker_with_several_workers():
    """Otherwise the worker is gunicorn's gevent worker: sockets upgrade and talk on each
    of two workers, and plain HTTP is served."""
    srv = GunicornServer(workers=2, worker_class=OUR_WORKER).start()
    clients = []
    try:
        wait_for(lambda: len(srv.worker_pids()) == 2, message="two workers")
        deadline = time.monotonic() + 20
        pids = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            ws = WSTestClient(srv.ws_url("/api/1/ws/history"))
            ws.receive(type="connected")
            clients.append(ws)
            pids.add(ws.request({"type": "whoami"})["data"]["pid"])
        assert pids == set(srv.worker_pids())
        assert srv.http().get("/_test/stats")["openConnections"] >= 1
        assert "Traceback" not in srv.log()
    finally:
        for ws in clients:
            ws.close()
        srv.stop()
