"""The identity snapshot of one connection (pure).

Built once from flask-login's ``current_user`` at the handshake; re-validation is
an explicit step on the health cycle, never a request context per message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Tuple

__all__ = ["roles_of", "Context", "initials_of"]


def initials_of(first_name: str, last_name: str, username: str = "") -> str:
    """``"Ada", "Lovelace"`` -> ``"AL"``; falls back to the username's first letter."""
    letters = "".join(n[:1] for n in (first_name, last_name) if n)
    return (letters or username[:1]).upper()


@dataclass
class Context:
    """Who is on a connection. Only ``JPULSE_WS_WIRE_CTX_FIELDS`` ever leave the server.

    ``extra`` holds what an app adds in ``on_create`` (``ctx.extra["team"] = ...``);
    its keys may be named in the wire fields too.
    """

    username: str = ""
    ip: str = ""
    roles: Tuple[str, ...] = ()
    first_name: str = ""
    last_name: str = ""
    initials: str = ""
    params: Dict[str, str] = field(default_factory=dict)
    is_public: bool = False
    namespace: str = ""  # the concrete path this connection is on
    user_id: Optional[str] = None  # flask-login's get_id(); None when anonymous
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def is_authenticated(self) -> bool:
        return self.user_id is not None

    def has_any_role(self, roles: Iterable[str]) -> bool:
        mine = set(self.roles)
        return any(r in mine for r in roles)

    def get(self, name: str, default: Any = "") -> Any:
        """A field by its snake_case or camelCase name, or from ``extra``."""
        attr = _CAMEL.get(name, name)
        if attr in _FIELDS:
            return getattr(self, attr)
        return self.extra.get(name, default)

    def to_wire(self, fields: Iterable[str]) -> Dict[str, Any]:
        """The fields other clients may see, under their camelCase names."""
        out = {}
        for name in fields:
            value = self.get(name)
            out[_SNAKE_TO_CAMEL.get(name, name)] = list(value) if isinstance(value, tuple) \
                else value
        return out


_FIELDS = {"username", "ip", "roles", "first_name", "last_name", "initials", "params",
           "is_public", "namespace", "user_id"}
_CAMEL = {"firstName": "first_name", "lastName": "last_name", "isPublic": "is_public",
          "userId": "user_id"}
_SNAKE_TO_CAMEL = {v: k for k, v in _CAMEL.items()}


def roles_of(user: Any) -> Tuple[str, ...]:
    """A user's roles as strings: ``user.roles`` may be a list, a tuple, one string or
    missing (flask-login users have no roles of their own)."""
    roles = getattr(user, "roles", ()) or ()
    return (str(roles),) if isinstance(roles, str) else tuple(str(r) for r in roles)
