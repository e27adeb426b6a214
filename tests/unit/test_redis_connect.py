"""Parsing of ``redis+sentinel://`` URLs (pure)."""

import pytest

from flask_jpulse_ws.cluster.redis_connect import SentinelURL, parse_sentinel_url


def test_full_url_with_several_sentinels_credentials_and_db():
    spec = parse_sentinel_url(
        "redis+sentinel://app:s%40cret@10.0.0.1:26380,sentinel-b,[::1]:26381/mymaster/3"
        "?sentinel_password=sp")
    assert spec == SentinelURL(
        sentinels=[("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381)],
        service="mymaster", db=3, username="app", password="s@cret",
        sentinel_password="sp", ssl=False)


def test_password_only_defaults_and_tls():
    spec = parse_sentinel_url("rediss+sentinel://:pw@127.0.0.1/main")
    assert (spec.username, spec.password, spec.db, spec.ssl) == (None, "pw", 0, True)
    assert spec.sentinels == [("127.0.0.1", 26379)]


@pytest.mark.parametrize("url, reason", [
    ("redis://127.0.0.1:6379/0", "not a sentinel URL"),
    ("redis+sentinel:///mymaster", "no sentinel address"),
    ("redis+sentinel://127.0.0.1:26379", "ends with /service"),
    ("redis+sentinel://127.0.0.1:26379/a/b/c", "ends with /service"),
    ("redis+sentinel://127.0.0.1:26379/mymaster/x", "bad database number"),
    ("redis+sentinel://127.0.0.1:port/mymaster", "bad sentinel port"),
    ("redis+sentinel://:26379/mymaster", "has no host"),
])
def test_bad_urls_say_why(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse_sentinel_url(url)
