"""The in-memory history store (pure): offsets, replay, expiry and its stream cap."""

import pytest

from flask_jpulse_ws.core import history
from flask_jpulse_ws.core.history import MemoryHistory


class Clock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(history, "time", fake)  # the module's own name, not time itself
    return fake


def frame(n):
    return b'{"success":true,"data":{"type":"t","data":%d}}' % n


def test_offsets_and_exact_replay(clock):
    h = MemoryHistory()
    epoch, start = h.position("/a", ttl=60)
    assert start == 0
    for n in range(1, 4):
        h.append("/a", frame(n), size=10, ttl=60)
    replay = h.since("/a", (epoch, 1), ttl=60)
    assert [off for off, _ in replay] == [2, 3]
    assert replay[0][1].endswith(b',"offset":2,"epoch":"%s"}' % epoch.encode())
    assert h.since("/a", (epoch, 3), ttl=60) == []
    assert h.since("/a", ("other", 1), ttl=60) is None  # wrong epoch: no replay
    assert h.since("/a", (epoch, 4), ttl=60) is None  # ahead of the stream


def test_a_gap_older_than_the_size_is_refused_never_partial(clock):
    h = MemoryHistory()
    epoch, _ = h.position("/a", ttl=60)
    for n in range(1, 11):
        h.append("/a", frame(n), size=5, ttl=60)
    assert h.since("/a", (epoch, 4), ttl=60) is None  # 5 would be needed, 5..10 are kept
    assert [off for off, _ in h.since("/a", (epoch, 5), ttl=60)] == [6, 7, 8, 9, 10]


def test_a_stream_outlives_nothing_appended_for_its_ttl(clock):
    h = MemoryHistory()
    epoch, _ = h.position("/a", ttl=60)
    h.append("/a", frame(1), size=10, ttl=60)
    clock.now += 59
    assert h.has_stream("/a")
    h.append("/a", frame(2), size=10, ttl=60)  # an append keeps it another TTL
    clock.now += 59
    assert [off for off, _ in h.since("/a", (epoch, 1), ttl=60)] == [2]
    clock.now += 2
    assert not h.has_stream("/a") and len(h) == 0
    assert h.position("/a", ttl=60)[0] != epoch  # a new stream, a new epoch


def test_streams_are_capped_least_recently_used_first(clock):
    h = MemoryHistory(max_streams=3)
    for path in ("/a", "/b", "/c"):
        h.append(path, frame(1), size=10, ttl=60)
    h.append("/a", frame(2), size=10, ttl=60)  # /a is now the most recent
    h.position("/d", ttl=60)
    assert len(h) == 3
    assert not h.has_stream("/b")
    assert all(h.has_stream(p) for p in ("/a", "/c", "/d"))


def test_a_flood_of_room_paths_stays_under_the_cap(clock):
    h = MemoryHistory(max_streams=100)
    for i in range(10_000):
        h.position(f"/rooms/{i}", ttl=300)
    assert len(h) == 100


def test_each_stream_expires_by_its_own_ttl(clock):
    """The least recently used stream is not always the first to expire."""
    h = MemoryHistory()
    h.append("/long", frame(1), size=10, ttl=3600)
    h.append("/short", frame(1), size=10, ttl=60)
    clock.now += 120
    assert not h.has_stream("/short")
    assert h.has_stream("/long")
