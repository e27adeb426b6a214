"""Presence without sockets or Redis: batches, members, stats, key names, and the
tracker of one in-memory app driven tick by tick."""

import orjson
import pytest
from flask import Flask

from flask_jpulse_ws import JPulseWS, config
from flask_jpulse_ws.cluster.keys import presence_keys
from flask_jpulse_ws.context import Context
from flask_jpulse_ws.core import frames
from flask_jpulse_ws.server.presence import Batch, member_key, newest_per_client, summarize

ROOMS = "/api/1/ws/rooms/:room"


def m(cid, at="2024-01-01T00:00:00.000Z", username="", info=None):
    return {"clientId": cid, "username": username, "connectedAt": at, "info": info or {}}


# ---------------------------------------------------------------- batches

def test_join_then_leave_within_a_batch_cancels_out():
    """A connection that comes and goes between two ticks is never announced."""
    b = Batch()
    b.join(m("a"))
    b.leave(m("a"))
    assert not b and b.to_wire() == {"joined": [], "left": []}


def test_leave_then_rejoin_keeps_both():
    """A reconnect (same id, new time) after a leave: left old, joined new."""
    b = Batch()
    b.leave(m("a", "t1"))
    b.join(m("a", "t2"))
    assert b.to_wire() == {"joined": [m("a", "t2")], "left": [m("a", "t1")]}


def test_update_of_a_fresh_join_stays_a_join():
    """Info set right after joining travels in the join itself."""
    b = Batch()
    b.join(m("a"))
    b.update(m("a", info={"x": 1}))
    assert b.to_wire() == {"joined": [m("a", info={"x": 1})], "left": []}


def test_update_then_leave_is_only_a_leave():
    b = Batch()
    b.update(m("a", info={"x": 1}))
    assert b.to_wire()["updated"] == [m("a", info={"x": 1})]
    b.leave(m("a"))
    assert b.to_wire() == {"joined": [], "left": [m("a")]}


def test_merging_a_remote_batch_skips_malformed_members():
    b = Batch()
    b.merge({"joined": [m("a"), "junk", {"no": "id"}], "left": [m("b")], "updated": None})
    assert b.to_wire() == {"joined": [m("a")], "left": [m("b")]}


def test_big_batches_are_split_into_bounded_frames():
    b = Batch()
    for i in range(5):
        b.join(m(f"c{i}"))
    b.leave(m("gone"))
    parts = b.chunks(size=4)
    assert len(parts) == 2
    assert parts[0]["left"] == [m("gone")] and len(parts[0]["joined"]) == 3
    assert len(parts[1]["joined"]) == 2


def test_member_key_tells_connections_of_one_client_apart():
    assert member_key(m("a", "t1")) != member_key(m("a", "t2"))


# ---------------------------------------------------------------- members and stats

def test_newest_connection_of_a_client_wins():
    """A client that moved to another process may linger there: listed once, the newest."""
    out = newest_per_client([m("a", "t1"), m("b", "t0"), m("a", "t2")])
    assert out == [m("b", "t0"), m("a", "t2")]


def test_stats_count_distinct_users_and_each_anonymous_client():
    members = [m("1", username="alice"), m("2", username="alice"), m("3", username="bob"),
               m("4"), m("5")]
    assert summarize(members) == {"clients": 5, "users": 4}


def test_presence_keys_round_trip_and_stay_inside_the_prefix():
    path = "/api/1/ws/rooms/caf\u00e9 *:x"
    hkey, zkey = presence_keys("app", path)
    assert hkey.startswith("app:{") and hkey.endswith("}:pm") and zkey.endswith("}:pe")
    assert "*" not in hkey and " " not in hkey


def test_settings_have_documented_defaults():
    assert config.DEFAULTS["JPULSE_WS_PRESENCE_TTL"] == 30.0
    assert config.DEFAULTS["JPULSE_WS_PRESENCE_BATCH"] == 0.5
    with pytest.raises(ValueError, match="PRESENCE_TTL"):
        config.load({"JPULSE_WS_PRESENCE_TTL": 0})


# ---------------------------------------------------------------- the tracker (in memory)

class FakeConn:
    """What the tracker and a namespace use of a connection; records frames."""

    def __init__(self, ns, cid, username="", at=1700000000.0):
        self.namespace, self.client_id = ns, cid
        self.ctx = Context(username=username)
        self.connected_at = at
        self.presence_info = {}
        self.open = True
        self.frames = []
        self.replies = []

    def send_frame(self, frame, force=False):
        self.frames.append(frame)
        return True

    def send_raw_json(self, payload):
        self.replies.append(orjson.loads(payload))
        return True

    def batches(self):
        out = []
        for frame in self.frames:
            for _, payload in frames.FrameDecoder(1 << 24, expect_mask=False).feed(frame):
                data = orjson.loads(payload)["data"]
                assert data["type"] == "_presence"
                out.append(data["data"])
        return out


@pytest.fixture
def app_state():
    app = Flask(__name__)
    app.config["JPULSE_WS_PRESENCE_BATCH"] = 3600  # ticks only when the test says so
    ws = JPulseWS(app)
    rooms = ws.namespace(ROOMS, presence=True)
    state = app.extensions["jpulse_ws"]

    def room(name):
        path = f"/api/1/ws/rooms/{name}"
        template, params = state.registry.match_concrete(path)
        return state.registry.get_or_create(template, path, params)

    return state, rooms, room


def join(state, ns, conn):
    ns.add(conn)
    state.presence.joined(conn)


def leave(state, ns, conn):
    ns.discard(conn)
    state.presence.left(conn)


def test_members_and_one_batched_frame_per_tick(app_state):
    """Three joins between ticks: one frame each, listing all three."""
    state, rooms, room = app_state
    ns = room("a")
    conns = [FakeConn(ns, f"c{i}", username="u", at=1700000000.0 + i) for i in range(3)]
    for c in conns:
        join(state, ns, c)
    assert [x["clientId"] for x in rooms.presence({"namespace": ns.path})] == \
        ["c0", "c1", "c2"]
    assert rooms.presence_stats({"namespace": ns.path}) == {"clients": 3, "users": 1}
    assert state.presence.tick() == 1
    for c in conns:
        assert [[x["clientId"] for x in b["joined"]] for b in c.batches()] == \
            [["c0", "c1", "c2"]]
    assert state.presence.tick() == 0  # nothing new: nothing sent


def test_a_visit_shorter_than_a_tick_is_never_announced(app_state):
    state, _, room = app_state
    ns = room("b")
    stay = FakeConn(ns, "stay")
    join(state, ns, stay)
    state.presence.tick()
    visitor = FakeConn(ns, "visitor")
    join(state, ns, visitor)
    leave(state, ns, visitor)
    assert state.presence.tick() == 0
    assert len(stay.batches()) == 1


def test_info_update_and_leave_reach_the_others(app_state):
    state, rooms, room = app_state
    ns = room("c")
    a, b = FakeConn(ns, "a"), FakeConn(ns, "b", at=1700000001.0)
    join(state, ns, a)
    join(state, ns, b)
    state.presence.tick()
    b.presence_info = {"typing": True}
    state.presence.updated(b)
    state.presence.tick()
    assert a.batches()[-1]["updated"][0]["info"] == {"typing": True}
    leave(state, ns, b)
    state.presence.tick()
    assert [x["clientId"] for x in a.batches()[-1]["left"]] == ["b"]
    assert [x["clientId"] for x in rooms.presence({"namespace": ns.path})] == ["a"]


def test_request_replies_with_members_and_stats(app_state):
    state, _, room = app_state
    ns = room("d")
    a = FakeConn(ns, "a", username="alice")
    join(state, ns, a)
    state.presence.handle_request(a, "rid-1")
    reply = a.replies[-1]
    assert reply["requestId"] == "rid-1" and reply["success"] is True
    assert reply["data"]["stats"] == {"clients": 1, "users": 1}
    assert reply["data"]["members"][0]["username"] == "alice"
    assert "partial" not in reply["data"]


def test_remote_batches_are_delivered_on_the_next_tick(app_state):
    state, _, room = app_state
    ns = room("e")
    a = FakeConn(ns, "a")
    join(state, ns, a)
    state.fanout.apply({"op": "presence", "host": "other", "path": ns.path,
                        "joined": [m("far")], "left": []})
    state.presence.tick()
    assert [x["clientId"] for x in a.batches()[0]["joined"]] == ["a", "far"]


def test_rooms_are_independent_and_non_presence_paths_refuse(app_state):
    state, rooms, room = app_state
    x, y = room("x"), room("y")
    join(state, x, FakeConn(x, "in-x"))
    assert rooms.presence({"namespace": y.path}) == []
    with pytest.raises(ValueError, match="No namespace matches"):
        state.presence_of("/api/1/ws/nowhere", stats=True)


def test_docs_example_declares_a_presence_namespace():
    """docs/examples/presence_app.py (included in docs/presence.md) imports and works."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "presence_app.py"
    spec = importlib.util.spec_from_file_location("docs_example_presence_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.rooms.has_presence is True
    assert module.rooms.connect_handler is module.joined
