"""The namespace registry: the cap, the sweep, and rooms that a handshake is joining."""

from flask import Flask

from flask_jpulse_ws import JPulseWS

ROOMS = "/api/1/ws/rooms/:room"


def make_registry(cap):
    app = Flask(__name__)
    app.config["JPULSE_WS_MAX_NAMESPACES"] = cap
    ws = JPulseWS(app)
    ws.namespace(ROOMS)
    registry = app.extensions["jpulse_ws"].registry

    def room(name):
        path = f"/api/1/ws/rooms/{name}"
        template, params = registry.match_concrete(path)
        return registry.get_or_create(template, path, params)

    return registry, room


def test_at_the_cap_the_oldest_empty_room_makes_way_but_not_one_being_joined():
    registry, room = make_registry(cap=2)
    joined, empty = room("joined"), room("empty")
    registry.begin_join(joined)  # its first socket waits on Redis
    third = room("third")
    assert third is not None  # "empty" made way, not "joined"
    assert empty.removed and not joined.removed
    registry.begin_join(third)
    assert room("fourth") is None  # both rooms are being joined: nothing makes way
    registry.end_join(joined)  # that handshake failed: the room is empty again
    assert room("fourth") is not None and joined.removed and not third.removed


def test_the_sweep_skips_a_room_being_joined():
    registry, room = make_registry(cap=10)
    ns = room("slow")
    registry.begin_join(ns)
    assert registry.sweep_empty(now_mono=1e12, grace=0) == []
    registry.end_join(ns)
    assert registry.sweep_empty(now_mono=1e12, grace=0) == [ns.path]


def test_a_room_removed_while_joined_is_not_put_back():
    registry, room = make_registry(cap=10)
    ns = room("gone")
    registry.begin_join(ns)
    registry.remove(ns.path)
    registry.end_join(ns)
    assert ns.path not in registry.live and ns.path not in registry.empty_since
