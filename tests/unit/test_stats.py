"""Counters, rates, status colours and the activity log."""

from flask_jpulse_ws.core.stats import (
    ActivityLog,
    AppCounters,
    NamespaceStats,
    RateCounter,
    iso,
    status_colour,
)


def test_rate_counter_counts_the_last_minute_and_hour():
    rate = RateCounter()
    rate.add(1000.0, 5)
    rate.add(1030.0, 2)
    assert rate.last_minute(1030.5) == 7
    assert rate.last_minute(1061.0) == 2  # the first burst is older than 60 s
    assert rate.last_hour(1061.0) == 7
    assert rate.last_hour(1000.0 + 3700) == 0
    assert rate.per_second(1030.0, 31)[0] == 5 and rate.per_second(1030.0, 31)[-1] == 2


def test_rate_counter_slots_are_reused_not_accumulated():
    rate = RateCounter()
    rate.add(10.0)
    rate.add(70.0)  # same slot a minute later
    assert rate.last_minute(70.0) == 1


def test_status_colours_follow_the_seed_rule():
    assert status_colour(100, 100, 0, 300, 1800) == "red"  # no clients
    assert status_colour(100, 100, 1, 300, 1800) == "green"
    assert status_colour(500, 100, 1, 300, 1800) == "yellow"
    assert status_colour(2000, 100, 1, 300, 1800) == "red"


def test_namespace_stats_count_messages_deliveries_and_drops():
    stats = NamespaceStats(now=0.0)
    stats.message(1.0, deliveries=10)
    stats.message(2.0)
    stats.drop("oversize")
    snap = stats.snapshot(2.0, "/api/1/ws/x", 1, 1, {"maxSize": 1}, 300, 1800)
    assert snap["totalMessages"] == 2 and snap["deliveries"] == 10
    assert snap["dropped"]["oversize"] == 1 and snap["messagesPerMin"] == 2
    assert snap["lastActivity"] == iso(2.0) and snap["status"] == "green"


def test_activity_log_keeps_only_its_window():
    log = ActivityLog(window=300, max_entries=100, message_chars=50)
    log.add(0.0, "/api/1/ws/a", "received", "ann", "chat", "old")
    log.add(200.0, "/api/1/ws/a", "sent", "", "chat", "new")
    assert [e["message"] for e in log.entries(301.0)] == ["new"]


def test_activity_log_caps_its_count_and_cuts_long_messages():
    log = ActivityLog(window=300, max_entries=3, message_chars=10)
    for i in range(5):
        log.add(float(i), "/api/1/ws/a", "received", "", "t", str(i))
    assert [e["message"] for e in log.entries(5.0)] == ["2", "3", "4"]
    log.add(6.0, "/api/1/ws/a", "received", "", "t", "a" * 100)
    assert log.entries(6.0)[-1]["message"] == "aaaaa ... aaaaa"
    log.add(7.0, "/api/1/ws/a", "sent", "", "t", b"b" * 100)
    assert log.entries(7.0)[-1]["message"] == "bbbbb ... bbbbb"


def test_activity_entries_have_the_documented_fields():
    log = ActivityLog(300, 10, 100)
    log.add(0.0, "/api/1/ws/a", "connected", "ann")
    assert set(log.entries(0.0)[0]) == {"timestamp", "namespace", "direction", "username",
                                        "type", "message"}


def test_app_counters_count_drops_by_reason_and_closes_by_code():
    """A cut socket (no close frame) counts as 1006; drops keep their reason and total."""
    c = AppCounters()
    c.drop("oversize")
    c.drop("slowConsumer")
    c.closed(1000)
    c.closed(None)
    c.closed(1000)
    assert c.dropped == 2 and c.dropped_by["oversize"] == 1 and c.dropped_by["rateLimit"] == 0
    assert c.closes == {1000: 2, 1006: 1}


def test_rate_counter_counts_events_of_the_current_second_before_it_ends():
    """Events of the current second wait as a plain count; every read includes them,
    and reading twice changes nothing."""
    rate = RateCounter()
    for t in (100.2, 100.2, 100.2, 100.9, 100.9):
        rate.add(t)
    rate.add(101.5)
    assert rate.per_second(101.9, 3) == [0, 5, 1]
    assert rate.per_second(101.9, 3) == [0, 5, 1]
    assert rate.last_minute(101.9) == 6 and rate.last_hour(101.9) == 6
    rate.add(101.7, 4)
    rate.add(160.0)  # a minute on: the second 100 has left the last minute
    assert rate.last_minute(160.0) == 6 and rate.last_hour(160.0) == 11
