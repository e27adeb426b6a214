"""Size, rate and abuse arithmetic; the handshake rate per address."""

import pytest

from flask_jpulse_ws.core.limits import (
    AbuseCounter,
    HandshakeRate,
    Limits,
    PingBudget,
    RateWindow,
)


def test_namespace_overrides_fall_back_per_key_to_the_configuration():
    limits = Limits.resolve({"maxSize": 10}, 65536, 1000, 50)
    assert limits.as_wire() == {"maxSize": 10, "interval": 1000, "maxMessages": 50}


def test_unknown_or_non_positive_limits_are_refused():
    with pytest.raises(ValueError, match="maxsize"):
        Limits.resolve({"maxsize": 1}, 1, 1, 1)
    with pytest.raises(ValueError):
        Limits.resolve({"maxMessages": 0}, 1, 1, 1)


def test_window_accepts_max_messages_then_drops_until_it_slides():
    window = RateWindow(Limits(100, 1000, 3))
    assert [window.check(t).allowed for t in (0.0, 0.1, 0.2)] == [True] * 3
    dropped = window.check(0.3)
    assert not dropped.allowed and dropped.retry_after_ms == 700
    assert window.check(1.05).allowed  # the message at 0.0 left the window


def test_dropped_messages_do_not_extend_the_window():
    window = RateWindow(Limits(100, 1000, 1))
    window.check(0.0)
    for t in (0.2, 0.4, 0.9):
        assert not window.check(t).allowed
    assert window.check(1.01).allowed


def test_client_is_told_once_per_window_but_always_for_requests():
    window = RateWindow(Limits(100, 1000, 1))
    window.check(0.0)
    assert window.check(0.1).notify
    assert not window.check(0.2).notify
    assert window.check(0.3, has_request_id=True).notify
    # the flag resets when a message finds the window empty
    assert window.check(5.0).allowed
    assert not window.check(5.1).allowed and window.check(5.2).notify is False
    assert window.check(10.0).allowed and window.check(10.1).notify


def test_abuse_counter_trips_at_the_threshold_inside_its_window():
    counter = AbuseCounter(threshold=3, window=10)
    assert not counter.hit(0) and not counter.hit(1)
    assert counter.hit(2)
    fresh = AbuseCounter(threshold=3, window=10)
    assert not any(fresh.hit(t) for t in (0, 11, 22, 33))


def test_pings_get_a_generous_budget_and_no_more():
    """20 at once, then 5 a second: a flood of pings is not answered."""
    budget = PingBudget(rate=5.0, burst=20)
    assert all(budget.allow(100.0) for _ in range(20))
    assert not budget.allow(100.0)
    assert budget.allow(100.2) and not budget.allow(100.2)  # one more after 1/5 s
    assert sum(budget.allow(200.0) for _ in range(30)) == 20  # refilled, up to the burst


def test_handshakes_get_the_burst_then_the_rate_with_a_retry_after():
    bucket = HandshakeRate(rate=100.0, burst=1000)
    assert all(bucket.retry_after("10.0.0.1", 5.0) is None for _ in range(1000))
    assert bucket.retry_after("10.0.0.1", 5.0) == 1  # a token in 1/100 s: "1" at least
    assert bucket.retry_after("10.0.0.1", 5.02) is None  # the tokens of 1/50 s
    assert bucket.retry_after("10.0.0.2", 5.02) is None  # another address: its own bucket
    assert bucket.refused == 1


def test_retry_after_is_the_whole_seconds_until_the_next_handshake():
    bucket = HandshakeRate(rate=0.25, burst=1)
    assert bucket.retry_after("a", 0.0) is None
    assert bucket.retry_after("a", 0.0) == 4
    assert bucket.retry_after("a", 2.5) == 2  # 0.625 of a token: 1.5 s, rounded up
    assert bucket.retry_after("a", 4.0) is None


def test_the_handshake_table_is_bounded_and_forgets_the_least_recently_seen():
    bucket = HandshakeRate(rate=1.0, burst=1, max_addresses=3)
    for address in ("a", "b", "c"):
        assert bucket.retry_after(address, 0.0) is None
    assert bucket.retry_after("a", 0.0) == 1  # a is now the most recently seen
    assert bucket.retry_after("d", 0.0) is None  # b, the least recent, makes way
    assert len(bucket) == 3
    assert bucket.retry_after("a", 0.0) == 1 and bucket.retry_after("c", 0.0) == 1
    assert bucket.retry_after("b", 0.0) is None  # forgotten: a full bucket again


def test_a_handshake_rate_of_zero_is_no_limit():
    bucket = HandshakeRate(rate=0, burst=1)
    assert all(bucket.retry_after("a", 0.0) is None for _ in range(100))
    assert len(bucket) == 0 and bucket.refused == 0
