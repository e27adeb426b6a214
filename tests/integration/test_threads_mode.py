"""Threads mode (what ``flask run`` and ``flask_jpulse_ws.testing.live_server`` use):
one OS thread per connection and per HTTP request, no gevent. Concurrent broadcasts
must arrive whole and in order, and a slow consumer must not hold the others up."""

import threading

from flask import Flask, jsonify, request
from servers import wait_for

from flask_jpulse_ws import JPulseWS
from flask_jpulse_ws.testing import ConnectionClosedError, live_server

FEED = "/api/1/ws/feed"


def create_app(**config):
    app = Flask(__name__)
    app.config.update(config)
    ws = JPulseWS(app)
    ws.namespace(FEED)

    @app.post("/burst")
    def burst():
        """Broadcast ``count`` numbered frames of ``size`` bytes from this request's thread."""
        body = request.get_json()
        pad = "x" * body["size"]
        for seq in range(body["count"]):
            ws.broadcast(FEED, {"type": "burst",
                                "data": {"sender": body["sender"], "seq": seq, "pad": pad}})
        return jsonify(sent=body["count"])

    @app.get("/stats")
    def stats():
        return jsonify(ws.get_namespace(FEED).get_stats())

    return app


def start_readers(clients, expected):
    """One thread per client reading ``expected`` burst frames into results[i]."""
    results, progress = {}, [0] * len(clients)

    def read(i, c):
        got = []
        try:
            for _ in range(expected):
                data = c.receive(type="burst", timeout=20)["data"]["data"]
                got.append(data)
                progress[i] += 1
            results[i] = (got, c.receive_all(0.3))
        except Exception as exc:  # noqa: BLE001 - reported by the assertions
            results[i] = (got, exc)

    threads = [threading.Thread(target=read, args=(i, c), daemon=True)
               for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    return threads, results, progress


def post_burst(server, sender, count, size):
    resp = server.http.post("/burst", json_body={"sender": sender, "count": count,
                                                 "size": size})
    assert resp.status == 200, resp


def test_concurrent_broadcasts_from_several_threads_arrive_whole_and_in_order():
    senders, count, size = 4, 100, 300
    with live_server(create_app()) as server:
        clients = [server.client(FEED, timeout=20) for _ in range(20)]
        for c in clients:
            c.receive(type="connected")
        threads, results, _ = start_readers(clients, senders * count)
        start = threading.Barrier(senders)

        def send(sender):
            start.wait()
            post_burst(server, sender, count, size)

        posting = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
        for t in posting:
            t.start()
        for t in posting + threads:
            t.join(60)
        for i in range(len(clients)):
            got, extra = results[i]
            assert extra == [], f"client {i}: {len(got)} frames, then {extra!r}"
            for s in range(senders):
                mine = [d for d in got if d["sender"] == s]
                assert [d["seq"] for d in mine] == list(range(count)), f"client {i}, {s}"
                assert all(d["pad"] == "x" * size for d in mine)
        for c in clients:
            c.close()


def test_a_client_that_stops_reading_is_closed_while_the_others_keep_receiving():
    app = create_app(JPULSE_WS_MAX_QUEUE_BYTES=256 * 1024, JPULSE_WS_CLOSE_TIMEOUT=0.5)
    per_round, size = 10, 20000
    with live_server(app) as server:
        slow = server.client(FEED, timeout=10)
        slow.receive(type="connected")
        fast = [server.client(FEED, timeout=20) for _ in range(5)]
        for c in fast:
            c.receive(type="connected")
        rounds = 0
        threads, results, progress = start_readers(fast, 10 ** 9)  # read until told

        def readers_done(n):
            wait_for(lambda: min(progress) >= n * per_round or results, timeout=20,
                     message=f"readers to finish round {n}")

        def dropped():
            return server.http.get("/stats").json()["dropped"]["slowConsumer"]

        # Rounds of 200 KB until the server gives up on the client that never reads;
        # the readers finish each round first (kept up), the slow one falls behind.
        while dropped() == 0:
            assert rounds < 300, "the slow consumer was never closed"
            post_burst(server, "s", per_round, size)
            rounds += 1
            readers_done(rounds)
        for _ in range(3):  # the others go on receiving after the close
            post_burst(server, "s", per_round, size)
            rounds += 1
            readers_done(rounds)
        assert results == {}, results  # no reader failed or was closed
        assert dropped() == 1
        # The slow client finds whole frames, in order, then the end of its connection.
        seen = 0
        try:
            while True:
                data = slow.receive(type="burst", timeout=10)["data"]["data"]
                assert data["seq"] == seen % per_round and len(data["pad"]) == size
                seen += 1
        except ConnectionClosedError as exc:
            assert exc.code in (4503, 1006)
        assert seen < rounds * per_round
        for c in fast:
            c.close()
        for t in threads:
            t.join(5)
