"""Every Redis key and channel name of an app, in one place (pure).

All start with ``JPULSE_WS_CHANNEL_PREFIX`` (default ``jpulse-ws``); paths are
percent-encoded so that no path can reach outside its prefix or into another app's names.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple
from urllib.parse import quote, unquote

__all__ = ["check_prefix", "relay_channel", "namespace_channel", "path_of_channel",
           "stats_key", "instances_key", "history_keys", "presence_keys", "client_id_key",
           "revoked_key"]

_PREFIX_OK = re.compile(r"[A-Za-z0-9_.\-:]+")


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start Redis channel names, else raise ``ValueError``.

    Glob characters and spaces are refused so that ``PSUBSCRIBE prefix:*`` and
    ``SCAN MATCH`` never match another app's names.
    """
    if not isinstance(prefix, str) or not _PREFIX_OK.fullmatch(prefix):
        raise ValueError(f"JPULSE_WS_CHANNEL_PREFIX must be letters, digits, '_', '.', '-' "
                         f"or ':' (got {prefix!r})")
    return prefix


def relay_channel(prefix: str) -> str:
    """The one channel every process of an app subscribes to."""
    return f"{check_prefix(prefix)}:relay"


def namespace_channel(prefix: str, path: str) -> str:
    """A per-namespace channel name; reversible with :func:`path_of_channel`.

    The path is percent-encoded (UTF-8) except letters, digits, ``-._~/``: the result
    holds no ``:``, glob character, space or control character, so no path can reach
    outside its prefix or into another app's names.
    """
    return f"{check_prefix(prefix)}:ns:{quote(path, safe='/')}"


def path_of_channel(prefix: str, channel: str) -> Optional[str]:
    """The namespace path a :func:`namespace_channel` name encodes; ``None`` if it is
    not one of this prefix's (or not in canonical form)."""
    head = f"{check_prefix(prefix)}:ns:"
    if not channel.startswith(head):
        return None
    encoded = channel[len(head):]
    try:
        path = unquote(encoded, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None
    return path if quote(path, safe="/") == encoded else None


def stats_key(prefix: str, host_id: str) -> str:
    """Key of one process's stats snapshot (expires unless refreshed)."""
    return f"{check_prefix(prefix)}:stats:{host_id}"


def instances_key(prefix: str) -> str:
    """Set of the host ids that have published a stats snapshot."""
    return f"{check_prefix(prefix)}:instances"


def history_keys(prefix: str, path: str) -> Tuple[str, str]:
    """Redis keys of a namespace's history: (meta hash, stream)."""
    base = f"{check_prefix(prefix)}:hist:{quote(path, safe='')}"
    return base + ":meta", base


def presence_keys(prefix: str, path: str) -> Tuple[str, str]:
    """Redis keys of a namespace's presence: (members hash, expiry sorted set).

    The hash maps a member id (``host|clientId``) to the member's JSON; the sorted set
    scores the same ids by expiry time. The path is encoded as in
    :func:`namespace_channel`.
    """
    base = f"{check_prefix(prefix)}:presence:{quote(path, safe='/')}"
    return base + ":members", base + ":expiry"


def client_id_key(prefix: str, path: str, client_id: str) -> str:
    """Key of the cluster-wide claim on a client id in a namespace (``id_claims``)."""
    return f"{check_prefix(prefix)}:cid:{quote(path, safe='/')}:{client_id}"


def revoked_key(prefix: str, token_digest: str) -> str:
    """Key marking a logged-out browser session as revoked (``revocations``)."""
    return f"{check_prefix(prefix)}:revoked:{token_digest}"
