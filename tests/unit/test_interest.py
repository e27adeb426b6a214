"""Interest: per-path subscription counts, batching, linger, reconnects (pure logic;
``send`` is recorded instead of reaching Redis)."""

import threading
import time

import pytest

from flask_jpulse_ws.cluster.interest import Interest


class Recorder:
    def __init__(self):
        self.sent = []
        self.late = []
        self.fail = False
        self.lock = threading.Lock()

    def send(self, verb, channels):
        if self.fail:
            raise ConnectionError("down")
        with self.lock:
            self.sent.append((verb, list(channels)))

    def wait_sent(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.sent) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.sent) >= n, self.sent
        return self.sent


@pytest.fixture
def rec():
    return Recorder()


def make(rec, linger=5.0, connected=True):
    interest = Interest(lambda path: "ch:" + path, rec.send, rec.late.extend, linger)
    if connected:
        interest.resubscribe()
    return interest


def test_first_client_subscribes_and_waits_for_the_confirmation(rec):
    interest = make(rec)
    result = []
    t = threading.Thread(target=lambda: result.append(interest.follow("/a", 5.0)))
    t.start()
    rec.wait_sent(1)
    assert rec.sent == [("SUBSCRIBE", ["ch:/a"])]
    assert t.is_alive()  # waiting for Redis
    interest.confirmed(b"subscribe", b"ch:/a")
    t.join(5)
    assert result == [True]
    assert interest.holds(b"ch:/a") and not interest.holds(b"ch:/b")
    assert interest.follow("/a", 5.0) is True  # later clients: nothing to send or wait
    assert len(rec.sent) == 1


def test_paths_wanted_together_go_out_in_one_command(rec, monkeypatch):
    """Every path wanted before the flush task runs goes out in its one command. The
    task is held back here (under gevent it runs after the loop's current turn); with
    real threads the count depended on how fast each thread started."""
    flushes = []
    monkeypatch.setattr("flask_jpulse_ws.cluster.interest.concurrency.spawn",
                        lambda fn, *args: flushes.append(fn))
    interest = make(rec)
    for i in range(50):
        assert interest.follow(f"/{i}", 0.0) is False  # not confirmed yet
    assert len(flushes) == 1 and rec.sent == []
    flushes.pop()()
    assert rec.sent == [("SUBSCRIBE", [f"ch:/{i}" for i in range(50)])]


def test_paths_wanted_from_many_threads_are_each_subscribed_once(rec):
    interest = make(rec)
    threads = [threading.Thread(target=interest.follow, args=(f"/{i}", 0.0))
               for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 5
    while (sum(len(chans) for _, chans in rec.sent) < 50
           and time.monotonic() < deadline):
        time.sleep(0.005)
    channels = [c for _, chans in rec.sent for c in chans]
    assert sorted(channels) == sorted(f"ch:/{i}" for i in range(50))


def test_unconfirmed_subscription_marks_the_path_late_and_resyncs_it_when_confirmed(rec):
    interest = make(rec)
    assert interest.follow("/a", 0.01) is False  # Redis slow: welcomed anyway
    rec.wait_sent(1)
    assert rec.late == []
    interest.confirmed(b"subscribe", b"ch:/a")
    assert rec.late == ["/a"]


def test_without_a_connection_nothing_waits_and_the_next_connection_subscribes(rec):
    interest = make(rec, connected=False)
    assert interest.follow("/a", 5.0) is False  # at once, no wait
    assert rec.sent == []
    interest.follow("/b", 5.0)
    interest.unfollow("/b")  # came and went while Redis was away: forgotten
    assert interest.resubscribe() == ["ch:/a"]
    assert rec.sent == [("SUBSCRIBE", ["ch:/a"])]
    interest.confirmed(b"subscribe", b"ch:/a")
    assert rec.late == ["/a"]


def test_linger_then_unsubscribe_and_messages_in_between_are_not_held(rec):
    interest = make(rec, linger=5.0)
    interest.follow("/a", 0.0)
    interest.confirmed(b"subscribe", b"ch:/a")
    interest.unfollow("/a")
    assert not interest.holds(b"ch:/a")  # dropped before decoding from now on
    now = time.monotonic()
    assert interest.sweep(now + 1.0) == 0  # lingering
    assert interest.sweep(now + 6.0) == 1
    assert rec.sent[-1] == ("UNSUBSCRIBE", ["ch:/a"])
    interest.confirmed(b"unsubscribe", b"ch:/a")
    assert interest.status()["channels"] == 0


def test_returning_during_the_linger_costs_no_subscription(rec):
    interest = make(rec, linger=5.0)
    interest.follow("/a", 0.0)
    interest.confirmed(b"subscribe", b"ch:/a")
    rec.wait_sent(1)
    interest.unfollow("/a")
    assert interest.follow("/a", 5.0) is True
    assert interest.sweep(time.monotonic() + 60) == 0
    assert len(rec.sent) == 1


def test_returning_while_the_unsubscription_is_under_way_subscribes_again(rec):
    interest = make(rec, linger=0.0)
    interest.follow("/a", 0.0)
    interest.confirmed(b"subscribe", b"ch:/a")
    interest.unfollow("/a")
    interest.sweep(time.monotonic() + 1)
    assert interest.follow("/a", 0.0) is False
    rec.wait_sent(3)
    assert [verb for verb, _ in rec.sent] == ["SUBSCRIBE", "UNSUBSCRIBE", "SUBSCRIBE"]
    interest.confirmed(b"unsubscribe", b"ch:/a")  # the old one: ignored
    assert interest.holds(b"ch:/a")
    interest.confirmed(b"subscribe", b"ch:/a")
    assert interest.status()["channels"] == 1 and interest.holds(b"ch:/a")


def test_an_unsubscription_pushed_by_redis_subscribes_again_and_resyncs(rec):
    """Redis Cluster pushes ``sunsubscribe`` when a slot moves away."""
    interest = make(rec)
    interest.follow("/a", 0.0)
    interest.confirmed(b"subscribe", b"ch:/a")
    rec.late.clear()  # welcomed without waiting (0 s): resynced once confirmed
    interest.confirmed(b"sunsubscribe", b"ch:/a")
    rec.wait_sent(2)
    assert rec.sent[-1] == ("SUBSCRIBE", ["ch:/a"])
    interest.confirmed(b"subscribe", b"ch:/a")
    assert rec.late == ["/a"]


def test_a_lost_connection_resubscribes_only_held_paths(rec):
    interest = make(rec, linger=5.0)
    for path in ("/a", "/b"):
        interest.follow(path, 0.0)
        interest.confirmed(b"subscribe", ("ch:" + path).encode())
    interest.unfollow("/b")  # lingering
    interest.connection_lost()
    assert not interest.connected
    assert interest.resubscribe() == ["ch:/a"]
    assert interest.status()["channels"] == 1


def test_unbalanced_unfollow_is_ignored(rec):
    interest = make(rec)
    interest.unfollow("/never")
    interest.follow("/a", 0.0)
    interest.unfollow("/a")
    interest.unfollow("/a")
    assert interest.status()["held"] == 0
