"""Missed-message recovery: exactly what was missed, in order, or a clear no."""

import os
import signal
import threading

import pytest
from servers import GunicornServer, RedisServer, wait_for

from flask_jpulse_ws.testing import ConnectionClosedError, WSTestClient

PATH = "/api/1/ws/history"


def join(server, path=PATH, since=None):
    query = f"?since={since[0]}:{since[1]}" if since else ""
    c = WSTestClient(server.ws_url(path + query))
    welcome = c.receive(type="connected")["data"]["data"]
    return c, welcome


def broadcast(server, n, path=PATH, start=0):
    server.http().post("/_test/burst", {"path": path, "count": n, "size": 10})


def read_ticks(c, n, timeout=10):
    out = []
    for _ in range(n):
        frame = c.receive(timeout=timeout)
        out.append(frame)
    return out


def cut_client_side(c):
    c.sock.close()  # no close frame: the network went away


def cut_server_side(server, path, client_id):
    assert server.http().post("/_test/cut", {"path": path, "clientId": client_id})["cut"]


def test_broadcast_frames_carry_offset_and_epoch_and_the_welcome_the_position(server):
    c, welcome = join(server)
    assert isinstance(welcome["epoch"], str) and isinstance(welcome["offset"], int)
    broadcast(server, 3)
    frames = read_ticks(c, 3)
    assert [f["offset"] for f in frames] == [welcome["offset"] + i for i in (1, 2, 3)]
    assert {f["epoch"] for f in frames} == {welcome["epoch"]}
    assert frames[0]["success"] is True and frames[0]["data"]["type"] == "burst"
    c.close()


@pytest.mark.parametrize("cut", ["client", "server"])
def test_a_client_cut_off_during_50_broadcasts_gets_exactly_those_50(server, cut):
    c, welcome = join(server)
    broadcast(server, 2)
    last = read_ticks(c, 2)[-1]
    position = (last["epoch"], last["offset"])
    if cut == "client":
        cut_client_side(c)
    else:
        cut_server_side(server, PATH, welcome["clientId"])
        with pytest.raises(ConnectionClosedError):
            c.receive(timeout=5)
    wait_for(lambda: server.http().get(f"/_test/namespace?path={PATH}")["clientCount"] == 0,
             message="the cut connection to be gone")
    broadcast(server, 50)
    back, _ = join(server, since=position)
    replay = read_ticks(back, 51)
    assert [f["offset"] for f in replay[:50]] == list(range(position[1] + 1, position[1] + 51))
    assert replay[50]["data"] == {"type": "_recovered", "data": {"recovered": True, "count": 50}}
    broadcast(server, 5)  # live frames follow with no gap and no duplicate
    live = read_ticks(back, 5)
    assert [f["offset"] for f in live] == list(range(position[1] + 51, position[1] + 56))
    assert back.receive_all(0.3) == []
    back.close()


def test_nothing_missed_recovers_with_count_zero(server):
    c, welcome = join(server)
    c.close()
    back, _ = join(server, since=(welcome["epoch"], welcome["offset"]))
    assert back.receive()["data"] == {"type": "_recovered",
                                      "data": {"recovered": True, "count": 0}}
    back.close()


def test_a_gap_larger_than_the_history_is_refused_whole(server):
    c, welcome = join(server)
    c.close()
    broadcast(server, 101)  # the history keeps 100
    back, _ = join(server, since=(welcome["epoch"], welcome["offset"]))
    assert back.receive()["data"] == {"type": "_recovered",
                                      "data": {"recovered": False, "count": 0}}
    assert back.receive_all(0.3) == []  # never a partial replay
    back.close()


@pytest.mark.parametrize("since", ["other-epoch:1", "garbage", "x:99999999"])
def test_unknown_epochs_and_positions_are_refused(server, since):
    c = WSTestClient(server.ws_url(f"{PATH}?since={since}"))
    c.receive(type="connected")
    if since == "garbage":  # not a position at all: treated as a fresh connection
        assert c.receive_all(0.3) == []
    else:
        assert c.receive()["data"]["data"]["recovered"] is False
    c.close()


def test_rooms_of_a_pattern_have_their_own_streams(server):
    a, wa = join(server, "/api/1/ws/hrooms/a")
    b, wb = join(server, "/api/1/ws/hrooms/b")
    assert wa["epoch"] != wb["epoch"]
    broadcast(server, 2, "/api/1/ws/hrooms/a")
    assert [f["offset"] for f in read_ticks(a, 2)] == [wa["offset"] + 1, wa["offset"] + 2]
    assert b.receive_all(0.3) == []
    a.close()
    b.close()


def test_a_room_swept_while_its_client_was_away_still_recovers(make_server):
    """One process: the room is removed when its last client leaves (grace 0.2 s), but
    its stream stays for the TTL, so what was broadcast to the empty room meanwhile is
    replayed to the client that comes back."""
    srv = make_server(settings={"JPULSE_WS_DYNAMIC_GRACE": 0.2})
    path = "/api/1/ws/hrooms/swept"
    c, _ = join(srv, path)
    broadcast(srv, 2, path)
    last = read_ticks(c, 2)[-1]
    position = (last["epoch"], last["offset"])
    c.close()
    wait_for(lambda: srv.http().get(f"/_test/namespace?path={path}") is None,
             message="the empty room to be swept")
    broadcast(srv, 3, path)  # to a room that has no namespace now
    back, welcome = join(srv, path, since=position)
    assert (welcome["epoch"], welcome["offset"]) == (position[0], position[1] + 3)
    replay = read_ticks(back, 4)
    assert [f["offset"] for f in replay[:3]] == [position[1] + 1, position[1] + 2,
                                                 position[1] + 3]
    assert replay[3]["data"] == {"type": "_recovered", "data": {"recovered": True, "count": 3}}
    back.close()


def race_reconnects(server, attempts):
    """Cut, then reconnect with ``since`` while 20 broadcasts go out: each of them
    arrives exactly once, in order, whether replayed or live. Returns the pids of the
    workers the reconnects landed on."""
    pids = set()
    for attempt in range(attempts):
        c, _ = join(server)
        broadcast(server, 1)
        last = read_ticks(c, 1)[-1]
        position = (last["epoch"], last["offset"])
        cut_client_side(c)
        sender = threading.Thread(target=broadcast, args=(server, 20))
        sender.start()  # broadcasts go out while the client reconnects
        back, _ = join(server, since=position)
        sender.join()
        offsets = []
        recovered = 0
        while len(offsets) < 20:
            frame = back.receive(timeout=10)
            if frame["data"]["type"] == "_recovered":
                assert frame["data"]["data"]["recovered"] is True
                recovered += 1
                continue
            offsets.append(frame["offset"])
        assert offsets == list(range(position[1] + 1, position[1] + 21)), attempt
        # One more broadcast, sent after all 20: the next frame (a late _recovered
        # aside) is it, so no copy of the 20 was still on its way.
        broadcast(server, 1)
        frame = back.receive(timeout=10)
        if frame["data"]["type"] == "_recovered":
            assert frame["data"]["data"]["recovered"] is True
            recovered += 1
            frame = back.receive(timeout=10)
        assert frame["offset"] == position[1] + 21, attempt
        assert recovered == 1, attempt
        pids.add(back.request({"type": "whoami"})["data"]["pid"])
        back.close()
    return pids


def test_broadcasts_racing_with_the_reconnect_are_neither_lost_nor_duplicated(server):
    race_reconnects(server, 50)


@pytest.mark.cluster
def test_broadcasts_racing_with_the_reconnect_over_redis_on_two_workers(relay_url):
    """The same race on two workers sharing a private redis-server (or a Redis Cluster):
    the broadcasts come from either worker (through Redis), the reconnect lands on either
    one."""
    srv = GunicornServer(workers=2, settings={"JPULSE_WS_REDIS_URL": relay_url,
                                              "JPULSE_WS_CHANNEL_PREFIX": "history-race"})
    srv.start()
    try:
        wait_for(lambda: len(srv.worker_pids()) == 2, message="two workers")
        pids = race_reconnects(srv, 20)
        print(f"\nreconnects landed on {len(pids)} worker(s)")
    finally:
        srv.stop()


@pytest.mark.cluster
def test_recovery_on_another_worker_and_after_redis_restarts():
    redis = RedisServer().start()
    srv = GunicornServer(workers=2, settings={"JPULSE_WS_REDIS_URL": redis.url}).start()
    try:
        pids = set()
        c, welcome = join(srv)
        pid = c.request({"type": "whoami"})["data"]["pid"]
        broadcast(srv, 3)
        last = read_ticks(c, 3)[-1]
        assert last["offset"] == welcome["offset"] + 3
        position = (last["epoch"], last["offset"])
        cut_client_side(c)
        broadcast(srv, 50)
        # Reconnect on the other worker: the first one is paused (SIGSTOP) meanwhile, so
        # it cannot take the connection (which worker accepts is otherwise up to the
        # kernel and may be the same one many times in a row).
        os.kill(pid, signal.SIGSTOP)
        try:
            back, _ = join(srv, since=position)
            frames = read_ticks(back, 51)
            other = back.request({"type": "whoami"})["data"]["pid"]
        finally:
            os.kill(pid, signal.SIGCONT)
        pids.add(other)
        assert [f["offset"] for f in frames[:50]] == \
            list(range(position[1] + 1, position[1] + 51))
        assert frames[50]["data"]["data"] == {"recovered": True, "count": 50}
        assert len(pids | {pid}) == 2, "never reached the second worker"
        # Every worker delivers in Redis' order: offsets from two workers interleave cleanly.
        t = threading.Thread(target=broadcast, args=(srv, 30))
        t.start()
        broadcast(srv, 30)
        t.join()
        got = [f["offset"] for f in read_ticks(back, 60)]
        assert got == sorted(got) and len(set(got)) == 60
        position = (frames[0]["epoch"], got[-1])
        back.close()
        # Redis restarts empty: the epoch is gone, so recovery must say no.
        port = redis.port
        redis.kill()
        redis = RedisServer(port=port).start()

        def refused():
            c2, _ = join(srv, since=position)
            try:
                first = c2.receive(timeout=3)
                return first["data"]["type"] == "_recovered" and \
                    first["data"]["data"]["recovered"] is False
            finally:
                c2.close()
        wait_for(refused, timeout=15, message="recovery refused after Redis lost the epoch")
    finally:
        srv.stop()
        redis.stop()


def test_python_client_recovers_exactly_and_resyncs_only_when_it_cannot(server):
    from flask_jpulse_ws.client import connect
    got, resyncs = [], []
    c = connect(server.ws_url(PATH), reconnect_base_interval=0.1, reconnect_max_interval=0.3,
                ping_interval=0, on_message=lambda f: got.append(f),
                on_resync=lambda info: resyncs.append(info["reason"]))
    try:
        assert c.wait_connected(5)
        broadcast(server, 3)
        wait_for(lambda: len(got) == 3, message="3 frames")
        client_id = c.get_client_id()
        cut_server_side(server, PATH, client_id)
        broadcast(server, 40)  # while it reconnects
        wait_for(lambda: len(got) >= 43, message="43 frames after recovery")
        seqs = [f["data"]["data"]["seq"] for f in got]
        assert seqs == [0, 1, 2] + list(range(40))
        offsets = [f["offset"] for f in got]
        assert offsets == list(range(offsets[0], offsets[0] + 43))  # none twice, no gap
        assert resyncs == []  # recovered: nothing to refetch
        # Away for longer than the history keeps: one resync, no partial replay.
        c.disconnect()
        broadcast(server, 150)
        c.reconnect()
        wait_for(lambda: "recovery-failed" in resyncs, message="recovery-failed resync")
        assert len(got) == 43
    finally:
        c.disconnect()
