"""Namespace paths: validation, ``:param`` patterns, public whitelist (pure)."""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Pattern, Sequence
from urllib.parse import unquote

__all__ = ["PREFIX", "PathPattern", "validate_path", "validate_template", "is_pattern",
           "decode_path", "is_whitelisted"]

#: Every namespace lives under this prefix (fixed by the protocol).
PREFIX = "/api/1/ws/"

_PARAM = re.compile(r"^:([A-Za-z_][A-Za-z0-9_]*)$")


#: ``<name>`` or ``<converter:name>`` as one path segment (Flask's route syntax).
_FLASK_PARAM = re.compile(r"(?:^|/)<(\w+:)?(\w+)>(?=/|$)")


def validate_path(path: str) -> str:
    """Return ``path`` if it may name a namespace, else raise ``ValueError``."""
    if not isinstance(path, str) or not path.startswith(PREFIX) or len(path) == len(PREFIX):
        raise ValueError(f"Namespace path must start with {PREFIX} and name something "
                         f"after it (got: {path!r})")
    if "?" in path or "#" in path:
        raise ValueError(f"Namespace path may not contain '?' or '#' (got: {path!r})")
    return path


def validate_template(path: str) -> str:
    """:func:`validate_path` for a declared namespace, which may hold ``:name`` segments;
    a Flask-style ``<name>`` segment is refused with the spelling to use instead (it
    would otherwise be a literal that no client ever matches)."""
    validate_path(path)
    flask_style = _FLASK_PARAM.search(path)
    if flask_style:
        name = flask_style.group(2)
        raise ValueError(f"Namespace path {path!r} uses Flask's <{flask_style.group(1) or ''}"
                         f"{name}>: write :{name} for a path parameter "
                         f"(e.g. /api/1/ws/rooms/:{name})")
    return path


def is_pattern(path: str) -> bool:
    """A path with at least one ``:name`` segment is a pattern."""
    return any(_PARAM.match(seg) for seg in path.split("/"))


def decode_path(raw_path: str) -> Optional[str]:
    """Percent-decode a literal request path; ``None`` if it is not valid UTF-8."""
    try:
        return unquote(raw_path, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None


class PathPattern:
    """A compiled ``/api/1/ws/rooms/:roomName`` pattern matched against raw paths."""

    def __init__(self, pattern: str) -> None:
        self.pattern = validate_path(pattern)
        self.param_names: List[str] = []
        parts = []
        for seg in pattern.split("/"):
            m = _PARAM.match(seg)
            if m:
                if m.group(1) in self.param_names:
                    raise ValueError(f"Parameter :{m.group(1)} appears twice in {pattern!r}")
                self.param_names.append(m.group(1))
                parts.append("([^/]+)")
            elif seg.startswith(":"):
                raise ValueError(f"Bad parameter segment {seg!r} in {pattern!r}: "
                                 f"use :name with letters, digits and _")
            else:
                parts.append(re.escape(seg))
        self._regex: Pattern[str] = re.compile("^" + "/".join(parts) + "$")

    def match(self, raw_path: str) -> Optional[Dict[str, str]]:
        """Params (percent-decoded) if the raw request path matches, else ``None``.

        A value that decodes to contain ``/`` or is not UTF-8 does not match.
        """
        m = self._regex.match(raw_path)
        if not m:
            return None
        params = {}
        for name, raw in zip(self.param_names, m.groups()):
            value = decode_path(raw)
            if value is None or "/" in value or value == "":
                return None
            params[name] = value
        return params

    def concrete(self, params: Dict[str, str]) -> str:
        """The decoded concrete path for these params."""
        out = []
        for seg in self.pattern.split("/"):
            m = _PARAM.match(seg)
            out.append(params[m.group(1)] if m else seg)
        return "/".join(out)


def is_whitelisted(path: str, whitelist: Sequence[str]) -> bool:
    """The seed's public-access rule: ``hello-*`` is a prefix, ``x`` an exact remainder."""
    if not path.startswith(PREFIX):
        return False
    suffix = path[len(PREFIX):]
    for entry in whitelist:
        if not isinstance(entry, str) or not entry.strip():
            continue
        entry = entry.strip()
        if entry.endswith("*"):
            if suffix.startswith(entry[:-1]):
                return True
        elif suffix == entry:
            return True
    return False
