"""Every Redis key and channel name of an app, in one place (pure).

All start with ``JPULSE_WS_CHANNEL_PREFIX`` (default ``jpulse-ws``), so ACLs such as
``~jpulse-ws:*`` and ``&jpulse-ws:*`` cover them. Everything of one namespace shares one
hash tag, ``{<percent-encoded path>}``: its channel, history stream and meta, presence
and client id claims live on one Redis Cluster shard, and every script or pipeline about
a namespace touches one slot. The encoding turns ``{``, ``}``, ``:``, spaces, glob and
control characters into ``%XX``, and the prefix may hold no brace, so no path can forge
another's tag or reach outside its prefix.

=============================  =============================================  =========
name                           what                                           slot
=============================  =============================================  =========
``P:{path}:ch``                the namespace's channel: every operation on it  the tag
``P:{path}:hist`` / ``hmeta``  history stream; its epoch and offset            the tag
``P:{path}:pm`` / ``pe``       presence members hash; their expiry             the tag
``P:{path}:cid:<id>``          the claim on a client id                        the tag
``P:{ctl}:ch``                 control: logout revocations, resyncs            one
``P:{w:<host>}:inbox``         one process's inbox: replies to its requests    its own
``P:{stats}:<host>``           one process's stats snapshot; the instances    one
=============================  =============================================  =========
"""

from __future__ import annotations

import re
from typing import Optional, Tuple
from urllib.parse import quote, unquote

__all__ = ["check_prefix", "namespace_tag", "namespace_channel", "path_of_channel",
           "control_channel", "inbox_channel", "stats_key", "instances_key",
           "history_keys", "presence_keys", "client_id_key", "revoked_key"]

_PREFIX_OK = re.compile(r"[A-Za-z0-9_.\-:]+")


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start Redis channel names, else raise ``ValueError``.

    Glob characters, braces and spaces are refused so that ``PSUBSCRIBE prefix:*`` and
    ``SCAN MATCH`` never match another app's names and no hash tag starts in the prefix.
    """
    if not isinstance(prefix, str) or not _PREFIX_OK.fullmatch(prefix):
        raise ValueError(f"JPULSE_WS_CHANNEL_PREFIX must be letters, digits, '_', '.', '-' "
                         f"or ':' (got {prefix!r})")
    return prefix


def _encode(path: str) -> str:
    # UTF-8 percent-encoding of everything but letters, digits and "-._~/".
    return quote(path, safe="/")


def namespace_tag(prefix: str, path: str) -> str:
    """``P:{<encoded path>}``: the start of every name of one namespace."""
    return f"{check_prefix(prefix)}:{{{_encode(path)}}}"


def namespace_channel(prefix: str, path: str) -> str:
    """The channel of one namespace; reversible with :func:`path_of_channel`."""
    return namespace_tag(prefix, path) + ":ch"


def path_of_channel(prefix: str, channel: str) -> Optional[str]:
    """The namespace path a :func:`namespace_channel` name encodes; ``None`` if it is
    not one of this prefix's (or not in canonical form)."""
    head = f"{check_prefix(prefix)}:{{"
    if not (channel.startswith(head) and channel.endswith("}:ch")):
        return None
    encoded = channel[len(head):-len("}:ch")]
    try:
        path = unquote(encoded, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None
    # Paths start with "/": the control channel's "{ctl}" is not one.
    return path if path.startswith("/") and _encode(path) == encoded else None


def control_channel(prefix: str) -> str:
    """The channel every process always listens to: revocations, resyncs."""
    return f"{check_prefix(prefix)}:{{ctl}}:ch"


def inbox_channel(prefix: str, host_id: str) -> str:
    """One process's own channel: the replies to the server requests it made."""
    return f"{check_prefix(prefix)}:{{w:{_encode(host_id)}}}:inbox"


def stats_key(prefix: str, host_id: str) -> str:
    """Key of one process's stats snapshot (expires unless refreshed)."""
    return f"{check_prefix(prefix)}:{{stats}}:{host_id}"


def instances_key(prefix: str) -> str:
    """Set of the host ids that have published a stats snapshot (same slot as them)."""
    return f"{check_prefix(prefix)}:{{stats}}"


def history_keys(prefix: str, path: str) -> Tuple[str, str]:
    """Redis keys of a namespace's history: (meta hash, stream)."""
    tag = namespace_tag(prefix, path)
    return tag + ":hmeta", tag + ":hist"


def presence_keys(prefix: str, path: str) -> Tuple[str, str]:
    """Redis keys of a namespace's presence: (members hash, expiry sorted set).

    The hash maps a member id (``host|clientId``) to the member's JSON; the sorted set
    scores the same ids by expiry time.
    """
    tag = namespace_tag(prefix, path)
    return tag + ":pm", tag + ":pe"


def client_id_key(prefix: str, path: str, client_id: str) -> str:
    """Key of the cluster-wide claim on a client id in a namespace (``id_claims``)."""
    return f"{namespace_tag(prefix, path)}:cid:{client_id}"


def revoked_key(prefix: str, token_digest: str) -> str:
    """Key marking a logged-out browser session as revoked (``revocations``)."""
    return f"{check_prefix(prefix)}:revoked:{token_digest}"
