"""Revoked session tokens in one process: refused until their session would have ended,
bounded in number."""

from flask_jpulse_ws.cluster.revocations import Revocations


def test_a_revoked_token_is_refused_until_its_lifetime_ends():
    r = Revocations()
    r.revoke("tok-a", lifetime=60, now=1000.0)
    assert r.is_revoked("tok-a", now=1059.0)
    assert not r.is_revoked("tok-b", now=1000.0)
    assert not r.is_revoked("tok-a", now=1060.0)  # the session could not live longer


def test_the_oldest_revocations_are_forgotten_first_beyond_the_bound():
    r = Revocations(max_remembered=3)
    for n in range(5):
        r.revoke(f"tok-{n}", lifetime=60, now=1000.0 + n)
    assert [r.is_revoked(f"tok-{n}", now=1010.0) for n in range(5)] == \
        [False, False, True, True, True]
