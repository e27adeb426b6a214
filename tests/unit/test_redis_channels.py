"""Redis channel and key names: reversible, confined to their prefix (pure)."""

import pytest
from redis.crc import key_slot

from flask_jpulse_ws.cluster.keys import (
    check_prefix,
    client_id_key,
    control_channel,
    history_keys,
    inbox_channel,
    instances_key,
    namespace_channel,
    path_of_channel,
    presence_keys,
    stats_key,
)
from flask_jpulse_ws.cluster.relay import encode_op, merge_instances

PATHS = [
    "/api/1/ws/chat",
    "/api/1/ws/rooms/général",
    "/api/1/ws/rooms/a:b",
    "/api/1/ws/rooms/*?[x]",
    "/api/1/ws/rooms/100%",
    "/api/1/ws/rooms/%41",
    "/api/1/ws/rooms/with space/and\nnewline",
    "/api/1/ws/rooms/emoji-😀",
    "/api/1/ws/trailing/",
    "/api/1/ws//empty-segment",
]


@pytest.mark.parametrize("path", PATHS)
def test_namespace_channel_round_trips(path):
    """Every path comes back unchanged from its channel name."""
    assert path_of_channel("jpulse-ws", namespace_channel("jpulse-ws", path)) == path


def test_distinct_paths_get_distinct_channels():
    """No two paths share a channel (percent signs themselves are encoded)."""
    names = {namespace_channel("p", path) for path in PATHS}
    assert len(names) == len(PATHS)


@pytest.mark.parametrize("path", PATHS)
def test_encoded_path_holds_no_separator_or_glob(path):
    """The encoded part has no ':' nor glob or control characters, so it cannot leave
    its prefix or match another app's PSUBSCRIBE pattern."""
    encoded = namespace_channel("p", path)[len("p:{"):-len("}:ch")]
    assert not set(encoded) & set(":*?[]{}\\ \n\r\t")
    assert encoded.isascii()


def test_prefixes_keep_apps_apart():
    """A prefix that extends another never yields the same names."""
    assert path_of_channel("app", namespace_channel("app:ns", "/api/1/ws/x")) is None
    assert path_of_channel("app:ns", namespace_channel("app", "/api/1/ws/x")) is None
    assert control_channel("a") != control_channel("b")
    assert inbox_channel("a", "h") != inbox_channel("b", "h")
    assert stats_key("a", "h") != stats_key("b", "h")
    assert instances_key("a") != instances_key("b")


def test_non_canonical_channel_is_refused():
    """Only the one canonical spelling maps back to a path."""
    assert path_of_channel("p", "p:{/api/1/ws/%61}:ch") is None  # 'a' needs no escape
    assert path_of_channel("p", "p:{/api/1/ws/%ff}:ch") is None  # not UTF-8
    assert path_of_channel("p", "q:{/api/1/ws/a}:ch") is None
    assert path_of_channel("p", "p:{/api/1/ws/a}:hist") is None
    assert path_of_channel("p", control_channel("p")) is None


@pytest.mark.parametrize("path", PATHS)
def test_every_name_of_a_namespace_is_in_one_cluster_slot(path):
    """Channel, history, presence and id claims share the path's hash tag, so a
    namespace lives on one Redis Cluster shard and its scripts touch one slot."""
    names = [namespace_channel("p", path), *history_keys("p", path),
             *presence_keys("p", path), client_id_key("p", path, "some-id")]
    assert len({key_slot(name.encode()) for name in names}) == 1


def test_a_path_cannot_forge_another_hash_tag():
    """Braces in a path are encoded: the tag is always the whole encoded path."""
    forged = namespace_channel("p", "/api/1/ws/{ctl}")
    assert "{ctl}" not in forged
    assert key_slot(forged.encode()) != key_slot(control_channel("p").encode())


def test_stats_names_share_one_slot():
    """Cluster stats are one MGET and one SMEMBERS: their keys share a slot."""
    assert key_slot(stats_key("p", "h1").encode()) == key_slot(
        stats_key("p", "h2").encode()) == key_slot(instances_key("p").encode())


@pytest.mark.parametrize("prefix", ["", "a b", "a*", "a?", "a[1]", "x\n", "a{b}", None])
def test_bad_prefix_is_refused(prefix):
    """Prefixes with glob characters or spaces would leak into other apps' patterns."""
    with pytest.raises(ValueError, match="JPULSE_WS_CHANNEL_PREFIX"):
        check_prefix(prefix)


def test_encode_op_carries_host_and_payload_as_text():
    """Payload bytes travel as a JSON string next to the op and the sender's host id."""
    raw = encode_op("h1", "broadcast", {"path": "/api/1/ws/x", "payload": b'{"a":1}'})
    assert raw == b'{"op":"broadcast","host":"h1","path":"/api/1/ws/x","payload":"{\\"a\\":1}"}'


def test_merge_instances_sums_rows_and_namespaces():
    """Per-instance rows plus totals; a namespace's clients are summed across workers."""
    rows = [
        {"host": "b", "pid": 2, "connections": 3, "totalMessages": 5, "degraded": True,
         "namespaces": [{"path": "/api/1/ws/x", "clients": 3}]},
        {"host": "a", "pid": 1, "connections": 4, "totalMessages": 1,
         "namespaces": [{"path": "/api/1/ws/x", "clients": 1},
                        {"path": "/api/1/ws/y", "clients": 3}]},
    ]
    merged = merge_instances(rows)
    assert [r["pid"] for r in merged["instances"]] == [1, 2]
    assert merged["totals"] == {"instances": 2, "connections": 7, "namespaces": 2,
                                "totalMessages": 6, "degradedInstances": 1}
    assert merged["namespaces"] == [{"path": "/api/1/ws/x", "clients": 4, "instances": 2},
                                    {"path": "/api/1/ws/y", "clients": 3, "instances": 1}]
