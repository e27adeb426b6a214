"""Outbound: slow consumers, large frames to slow readers, exactly-once fan-out."""

import threading
import time

from servers import wait_for

from flask_jpulse_ws.testing import ConnectionClosedError, WSTestClient

SETTINGS = {"JPULSE_WS_MAX_QUEUE_BYTES": 512 * 1024, "JPULSE_WS_CLOSE_TIMEOUT": 0.5,
            "JPULSE_WS_MAX_CONNECTIONS_PER_IP": 5000}


def burst(server, path, count, size=10):
    server.http().post("/_test/burst", {"path": path, "count": count, "size": size})


def read_burst(client, count, results, key):
    seqs = []
    try:
        for _ in range(count):
            seqs.append(client.receive(type="burst", timeout=20)["data"]["data"]["seq"])
        extra = client.receive_all(0.3)
        results[key] = (seqs, extra)
    except Exception as exc:  # noqa: BLE001 - reported by the assertion below
        results[key] = (seqs, exc)


def test_slow_consumer_is_closed_4503_while_50_others_receive_everything_in_order(server):
    path = "/api/1/ws/open-rooms/slow"
    slow = WSTestClient(server.ws_url(path))  # connects, then never reads
    slow.receive(type="connected")
    fast = [WSTestClient(server.ws_url(path)) for _ in range(50)]
    for c in fast:
        c.receive(type="connected")
    rounds, per_round, total = 40, 10, 400
    results, progress = {}, [0] * 50

    def reader(i, c):
        seqs = []
        try:
            for _ in range(total):
                seqs.append(c.receive(type="burst", timeout=20)["data"]["data"]["seq"] % per_round)
                progress[i] += 1
            results[i] = (seqs, c.receive_all(0.3))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = (seqs, exc)

    threads = [threading.Thread(target=reader, args=(i, c)) for i, c in enumerate(fast)]
    for t in threads:
        t.start()
    # 40 rounds of 200 KB: the readers keep up (this process is slower than the
    # server), the one that never reads falls 8 MB behind.
    for r in range(rounds):
        burst(server, path, per_round, size=20000)
        wait_for(lambda r=r: min(progress) >= (r + 1) * per_round or len(results) == 50,
                 timeout=20, message=f"readers to finish round {r}")
    for t in threads:
        t.join(30)
    for i in range(50):
        seqs, extra = results[i]
        assert seqs == list(range(per_round)) * rounds, f"client {i}: {len(seqs)}, {extra!r}"
        assert extra == []
    stats = server.http().get(f"/_test/namespace?path={path}")
    assert stats["dropped"]["slowConsumer"] == 1
    # The slow reader finds whole frames and then the end of the connection.
    seen = 0
    try:
        while True:
            frame = slow.receive(timeout=5)
            assert frame["data"]["data"]["seq"] == seen % per_round
            seen += 1
    except ConnectionClosedError as exc:
        assert exc.code in (4503, 1006)
    assert seen < total
    for c in fast:
        c.close()


def test_a_slow_consumer_that_reads_again_sees_whole_frames_then_4503(make_server):
    """Past the outbound limit the queue is dropped and a 4503 close frame follows the
    frame already on the wire; a reader that resumes within JPULSE_WS_CLOSE_TIMEOUT
    finds whole frames in order, then that close code. (One that never resumes is cut
    after the timeout: 1006, as in the test above.)"""
    srv = make_server(settings={"JPULSE_WS_MAX_QUEUE_BYTES": 512 * 1024,
                                "JPULSE_WS_CLOSE_TIMEOUT": 30})
    path = "/api/1/ws/open-rooms/resumes"
    with WSTestClient(srv.ws_url(path)) as slow:
        slow.receive(type="connected")
        for _ in range(30):  # 30 x 400 KB: far more than the socket buffers hold
            burst(srv, path, 20, size=20000)
            if srv.http().get(f"/_test/namespace?path={path}")["dropped"]["slowConsumer"]:
                break
        assert srv.http().get(f"/_test/namespace?path={path}")["dropped"]["slowConsumer"] == 1
        seen = 0
        try:
            while True:
                frame = slow.receive(type="burst", timeout=10)
                assert frame["data"]["data"]["seq"] == seen % 20
                seen += 1
        except ConnectionClosedError as exc:
            assert exc.code == 4503
        assert seen > 0


def test_slow_reader_gets_128_frames_of_64_kib_intact(make_server):
    srv = make_server(settings={"JPULSE_WS_MAX_QUEUE_BYTES": 16 * 1024 * 1024})
    path = "/api/1/ws/open-rooms/big"
    with WSTestClient(srv.ws_url(path)) as c:
        c.receive(type="connected")
        burst(srv, path, 128, size=64 * 1024)
        time.sleep(2)  # the point of the test: nobody reads for a while
        for seq in range(128):
            frame = c.receive(type="burst", timeout=10)["data"]["data"]
            assert frame["seq"] == seq and len(frame["pad"]) == 64 * 1024


def test_200_concurrent_clients_each_receive_every_broadcast_exactly_once(server):
    path = "/api/1/ws/open-rooms/crowd"
    clients = [WSTestClient(server.ws_url(path)) for _ in range(200)]
    for c in clients:
        c.receive(type="connected")
    wait_for(lambda: server.http().get(f"/_test/namespace?path={path}")["clientCount"] == 200,
             message="200 clients in the room")
    results = {}
    threads = [threading.Thread(target=read_burst, args=(c, 25, results, i))
               for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    burst(server, path, 25, size=100)
    for t in threads:
        t.join(30)
    for i in range(200):
        assert results[i] == (list(range(25)), []), f"client {i}: {results[i]!r}"
    stats = server.http().get(f"/_test/namespace?path={path}")
    assert stats["deliveries"] >= 200 * 25
    for c in clients:
        c.close()


def test_sending_is_safe_from_many_greenlets_at_once(server):
    """Concurrent broadcasts from several HTTP requests never interleave frames.

    The 160 frames together (400 KB) stay under this module's 512 KiB queue bound: with
    30 KB frames (4.8 MB) a reader that fell behind on a busy machine was rightly closed
    4503 as a slow consumer, which failed the test in CI."""
    path = "/api/1/ws/open-rooms/concurrent"
    with WSTestClient(server.ws_url(path)) as c:
        c.receive(type="connected")
        senders = [threading.Thread(target=burst, args=(server, path, 40, 2500))
                   for _ in range(4)]
        for t in senders:
            t.start()
        got = [c.receive(type="burst", timeout=20)["data"]["data"] for _ in range(160)]
        for t in senders:
            t.join()
        assert all(len(f["pad"]) == 2500 for f in got)
        assert sorted(f["seq"] for f in got) == sorted(list(range(40)) * 4)
