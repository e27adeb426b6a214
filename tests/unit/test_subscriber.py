"""The pub/sub reader: every message of a read handed over in order, confirmations,
health pings, and every way a connection fails (a socket pair stands in for Redis)."""

import socket
import threading

import pytest
from redis.connection import Encoder, PythonRespSerializer

from flask_jpulse_ws.cluster.subscriber import Subscriber, SubscriberLost, encode_command


def message(channel, data, kind=b"message"):
    return b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(kind), kind, len(channel), channel, len(data), data)


def confirmation(kind, channel, count):
    return b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n:%d\r\n" % (len(kind), kind, len(channel),
                                                       channel, count)


@pytest.fixture
def pair():
    ours, redis_side = socket.socketpair()
    yield ours, redis_side
    redis_side.close()
    ours.close()


def run_in_thread(sub):
    errors = []

    def run():
        try:
            sub.run()
        except SubscriberLost as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def test_encode_command_matches_redis_py():
    args = ("SUBSCRIBE", "jpulse-ws:{/api/1/ws/caf%C3%A9}:ch", "x" * 300, 12)
    serializer = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)
    packed = b"".join(serializer.pack(*args))
    assert encode_command(*args) == packed


def test_every_message_of_one_read_is_handed_over_in_order(pair):
    ours, redis_side = pair
    got, confirmed = [], []
    sub = Subscriber(ours, lambda ch, data: got.append((ch, data)),
                     lambda kind, ch: confirmed.append((kind, ch)), 5.0, 5.0)
    t, errors = run_in_thread(sub)
    burst = confirmation(b"subscribe", b"a", 1) + b"".join(
        message(b"a", b"%d" % i) for i in range(500)) + b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    # Split mid-message: the reader keeps what is incomplete for the next read.
    redis_side.sendall(burst[:1001])
    redis_side.sendall(burst[1001:] + message(b"b", b"last", kind=b"smessage"))
    redis_side.close()  # Redis goes away after it
    t.join(5)
    assert confirmed == [(b"subscribe", b"a")]
    assert got == [(b"a", b"%d" % i) for i in range(500)] + [(b"b", b"last")]
    assert sub.reads < 100  # many messages per read, not one read each
    assert errors and "closed" in str(errors[0])


def test_an_idle_connection_is_pinged_and_a_silent_one_declared_lost(pair):
    """Alive but deaf (a failover left it behind): no answer to the PING, so lost."""
    ours, redis_side = pair
    sub = Subscriber(ours, lambda *a: None, lambda *a: None, health_interval=0.05,
                     reply_timeout=0.3)
    t, errors = run_in_thread(sub)
    t.join(10)
    assert not t.is_alive()
    assert "PING" in str(errors[0])
    redis_side.settimeout(1)
    assert redis_side.recv(100).startswith(encode_command("PING"))


def test_an_answered_ping_keeps_the_connection(pair):
    ours, redis_side = pair
    sub = Subscriber(ours, lambda *a: None, lambda *a: None, health_interval=0.05,
                     reply_timeout=0.5)
    t, errors = run_in_thread(sub)
    redis_side.settimeout(2)
    for _ in range(3):  # three idle rounds, each answered
        assert redis_side.recv(100) == encode_command("PING")
        redis_side.sendall(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
    assert t.is_alive() and not errors
    sub.close()
    t.join(5)


def test_an_error_reply_or_garbage_ends_the_connection(pair):
    ours, redis_side = pair
    sub = Subscriber(ours, lambda *a: None, lambda *a: None, 5.0, 5.0)
    t, errors = run_in_thread(sub)
    redis_side.sendall(b"-ERR only (P|S)SUBSCRIBE allowed\r\n")
    t.join(5)
    assert "refused" in str(errors[0])

    ours2, redis_side2 = socket.socketpair()
    sub2 = Subscriber(ours2, lambda *a: None, lambda *a: None, 5.0, 5.0)
    t2, errors2 = run_in_thread(sub2)
    redis_side2.sendall(b"?not resp\r\n")
    t2.join(5)
    assert "unreadable" in str(errors2[0])
    redis_side2.close()
    ours2.close()


def test_sending_on_a_closed_subscriber_raises_subscriber_lost(pair):
    ours, _ = pair
    sub = Subscriber(ours, lambda *a: None, lambda *a: None, 5.0, 5.0)
    sub.subscribe("SUBSCRIBE", ["a", "b"])
    sub.close()
    with pytest.raises(SubscriberLost):
        sub.subscribe("SUBSCRIBE", ["c"])


def test_long_subscription_lists_are_split(pair):
    ours, redis_side = pair
    sub = Subscriber(ours, lambda *a: None, lambda *a: None, 5.0, 5.0)
    sub.subscribe("SUBSCRIBE", [f"c{i}" for i in range(1100)])
    redis_side.settimeout(2)
    data = b""
    while data.count(b"SUBSCRIBE") < 3:
        data += redis_side.recv(65536)
    assert data.count(b"SUBSCRIBE") == 3  # 512 + 512 + 76
    assert data.startswith(b"*513\r\n")
