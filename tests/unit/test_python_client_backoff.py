"""The Python client's reconnect schedule (flask_jpulse_ws/client.py ``WSClient._run``),
with no network and no real time.

Each socket is scripted: ``_one_socket`` is replaced by a fake that returns the close
code of the next step (after running the real welcome handler when the step had a
welcome), the backoff wait is a fake event that records the delay it is asked for, and
``random.random`` is fixed. The schedule under test: attempt k waits
``min(base * k, max)`` times ``1 - JITTER * random()``; a welcome resets the count;
4401/4403 end ``auth-required`` and 4404 (any 40xx-44xx) ``disconnected`` without a
retry; 4409 after a welcome takes a new id and reconnects at once; 4529 waits the
maximum; after ``max_reconnect_attempts`` failures in a row, ``disconnected``.
"""

import pytest

from flask_jpulse_ws import client as ws_client
from flask_jpulse_ws.client import JITTER, WSClient

BASE, MAX = 5.0, 30.0
WELCOME = "welcome"


class FakeWake:
    """Stands in for the backoff event: records each wait, never sleeps."""

    def __init__(self):
        self.waits = []

    def clear(self):
        pass

    def set(self):
        pass

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return False


class FixedRandom:
    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


def scripted(monkeypatch, steps, rand=0.0, attempts=10, base=BASE, maximum=MAX):
    """A client whose sockets follow ``steps``: each a close code, or ``(WELCOME, code)``
    for a socket that was welcomed before it closed. Returns (client, statuses, resyncs)."""
    monkeypatch.setattr(ws_client, "random", FixedRandom(rand))
    c = WSClient("ws://127.0.0.1:9/api/1/ws/x", reconnect_base_interval=base,
                 reconnect_max_interval=maximum, max_reconnect_attempts=attempts)
    c._wake = FakeWake()
    c._register()  # as _start() does: a final status takes it out of get_connections()
    statuses, resyncs, ids = ["connecting"], [], []
    c.on_status_change(lambda new, old: statuses.append(new))
    c.on_resync(lambda info: resyncs.append(info["reason"]))
    script = list(steps)

    def one_socket(generation):
        assert script, "the client opened a socket the script did not expect"
        step = script.pop(0)
        ids.append(c.get_client_id())
        if isinstance(step, tuple):
            c._handle_welcome({"data": {"data": {"clientId": c.get_client_id()}}},
                              generation)
            step = step[1]
        return step, c._welcomed_this_socket

    c._one_socket = one_socket
    c.ids = ids
    c.script = script
    return c, statuses, resyncs


def run(c):
    c._run(c._generation)  # the reader, on this thread: it returns at a final status
    assert c.script == [], "the client stopped before the script ended"


def test_delays_grow_linearly_up_to_the_maximum(monkeypatch):
    """Attempt k waits base * k, capped at the maximum (random() == 0: no jitter)."""
    c, statuses, _ = scripted(monkeypatch, [1006] * 9 + [4404])
    run(c)
    assert c._wake.waits == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 30.0, 30.0, 30.0]
    assert statuses == ["connecting", "reconnecting", "disconnected"]


@pytest.mark.parametrize("rand", [0.5, 0.999])
def test_jitter_only_shortens_the_delay_by_at_most_a_fifth(monkeypatch, rand):
    """Delays land in (0.8 d, d]: d * (1 - JITTER * random())."""
    c, _, _ = scripted(monkeypatch, [1006, 1006, 1006, 4404], rand=rand)
    run(c)
    assert c._wake.waits == pytest.approx([d * (1 - JITTER * rand) for d in (5, 10, 15)])
    assert all(0.8 * d < w <= d for w, d in zip(c._wake.waits, (5, 10, 15)))


def test_exhausted_attempts_end_disconnected(monkeypatch):
    """max_reconnect_attempts failures in a row: that many waits, then ``disconnected``
    without another socket (the script would fail on an unexpected one)."""
    c, statuses, _ = scripted(monkeypatch, [1006] * 4, attempts=3)
    run(c)
    assert c._wake.waits == [5.0, 10.0, 15.0]
    assert statuses == ["connecting", "reconnecting", "disconnected"]
    assert c not in ws_client.get_connections()


def test_a_welcome_resets_the_attempt_count(monkeypatch):
    """Failures after a welcome start from the base delay again, and may use the whole
    attempt budget again."""
    c, statuses, resyncs = scripted(
        monkeypatch, [1006, 1006, (WELCOME, 1006), 1006, (WELCOME, 1001), 4404],
        attempts=2)
    run(c)
    assert c._wake.waits == [5.0, 10.0, 5.0, 10.0, 5.0]
    assert statuses == ["connecting", "reconnecting", "connected", "reconnecting",
                        "connected", "reconnecting", "disconnected"]
    assert resyncs == ["reconnect"]  # the second welcome; the first is no reconnect


@pytest.mark.parametrize("code", [4401, 4403])
def test_auth_codes_end_auth_required_without_a_retry(monkeypatch, code):
    c, statuses, _ = scripted(monkeypatch, [(WELCOME, code)])
    run(c)
    assert c._wake.waits == []
    assert statuses == ["connecting", "connected", "auth-required"]


@pytest.mark.parametrize("code", [4404, 4418, 4499])
def test_refusals_end_disconnected_without_a_retry(monkeypatch, code):
    c, statuses, _ = scripted(monkeypatch, [1006, code])
    run(c)
    assert c._wake.waits == [5.0]
    assert statuses == ["connecting", "reconnecting", "disconnected"]


def test_full_server_waits_the_maximum_delay(monkeypatch):
    """4529 (server full): the maximum delay from the first attempt; it still counts."""
    c, statuses, _ = scripted(monkeypatch, [4529, 4529, 1006, 4404])
    run(c)
    assert c._wake.waits == [30.0, 30.0, 15.0]


@pytest.mark.parametrize("code", [1000, 1001, 1011, 4503, 4500])
def test_other_codes_back_off_and_retry(monkeypatch, code):
    c, _, _ = scripted(monkeypatch, [code, 4404])
    run(c)
    assert c._wake.waits == [5.0]


def test_replaced_after_a_welcome_takes_a_new_id_and_reconnects_at_once(monkeypatch):
    """4409 on a welcomed socket: a new id, no wait, no attempt used; the next welcome
    reports the resync reason ``replaced``."""
    c, statuses, resyncs = scripted(
        monkeypatch, [(WELCOME, 4409), (WELCOME, 4404)], attempts=0)
    first = c.get_client_id()
    run(c)
    assert c._wake.waits == []
    assert c.ids[0] == first and c.ids[1] != first
    assert statuses == ["connecting", "connected", "reconnecting", "connected",
                        "disconnected"]
    assert resyncs == ["replaced"]


def test_replaced_before_any_welcome_backs_off_like_a_failure(monkeypatch):
    """4409 with no welcome on that socket: the id is kept and the backoff applies."""
    c, _, _ = scripted(monkeypatch, [4409, 4404])
    first = c.get_client_id()
    run(c)
    assert c._wake.waits == [5.0]
    assert c.ids == [first, first]
