"""Parsing of ``redis+sentinel://`` and ``redis+cluster://`` URLs, and the routing of
calls to a cluster's slots (pure)."""

import pytest

from flask_jpulse_ws.cluster.cluster_link import slot_of_call, slot_of_command
from flask_jpulse_ws.cluster.cluster_relay import _check_node
from flask_jpulse_ws.cluster.keys import namespace_channel, namespace_tag
from flask_jpulse_ws.cluster.redis_connect import (
    SentinelURL,
    is_cluster_url,
    parse_cluster_url,
    parse_sentinel_url,
)
from flask_jpulse_ws.cluster.redis_relay import WrongTopologyError


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
    ("redis+sentinel://127.0.0.1:port/mymaster", "bad port"),
    ("redis+sentinel://:26379/mymaster", "has no host"),
])
def test_bad_urls_say_why(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse_sentinel_url(url)


# ---------------------------------------------------------------- Redis Cluster URLs

def test_cluster_url_lists_nodes_credentials_and_tls():
    spec = parse_cluster_url("rediss+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2,[::1]:7002")
    assert spec.nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert (spec.username, spec.password, spec.ssl) == ("app", "s@cret", True)
    assert is_cluster_url("redis+cluster://h:1") and not is_cluster_url("redis://h:1")


@pytest.mark.parametrize("url,reason", [
    ("redis+cluster://", "no node address"),
    ("redis+cluster://h:1/3", "only database 0"),
    ("redis+cluster://h:port", "bad port"),
    ("redis://h:1", "not a Redis Cluster URL"),
])
def test_bad_cluster_urls_say_why(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse_cluster_url(url)


def test_a_call_goes_to_the_slot_of_its_first_key():
    key = namespace_tag("p", "/rooms/a") + ":hist"
    assert slot_of_command(("PING",)) is None
    assert slot_of_command(("EVALSHA", "sha", 0)) is None
    assert slot_of_command(("EVALSHA", "sha", 2, key, "x")) == slot_of_command(("GET", key))
    # The channel shares the namespace's slot with its keys.
    assert slot_of_command(("SPUBLISH", namespace_channel("p", "/rooms/a"), "m")) == \
        slot_of_command(("GET", key))
    assert slot_of_call([(("PING",), {}), (("GET", key), {})]) == slot_of_command(("GET", key))
    assert slot_of_call([(("PING",), {})]) is None


class _Node:
    """Replies to INFO as a node would (pure: no socket)."""

    def __init__(self, version, enabled):
        self.replies = [f"redis_version:{version}\r\n".encode(),
                        f"cluster_enabled:{enabled}\r\n".encode()]

    def send_command(self, *args):
        pass

    def read_response(self):
        return self.replies.pop(0)


@pytest.mark.parametrize("version,enabled,error", [
    ("7.0.15", "1", None), ("7.2.4", "1", None), ("8.0.0", "1", None),
    ("6.2.14", "1", "Redis 7.0 or newer"), ("7.0.15", "0", "not a Redis Cluster node"),
])
def test_a_node_older_than_7_or_outside_a_cluster_is_refused(version, enabled, error):
    if error is None:
        _check_node(_Node(version, enabled), ("h", 1))
    else:
        with pytest.raises(WrongTopologyError, match=error):
            _check_node(_Node(version, enabled), ("h", 1))


def test_a_node_refusing_info_is_not_refused_for_it():
    import redis

    class NoInfo(_Node):
        def read_response(self):
            raise redis.ResponseError("NOPERM this user has no permissions to run 'info'")

    _check_node(NoInfo("7.0.0", "1"), ("h", 1))
