"""Resume tokens: the secret that lets a client keep its client id (pure).

A client id is public (presence lists show it, and it travels in URLs), so holding one
proves nothing. The welcome therefore also hands its owner a resume token, an
HMAC-SHA256 of the id under a key derived from the app's ``SECRET_KEY``; a client that
reconnects with ``?uuid=<id>`` keeps that id only with ``?resume=<token>``, anything
else gets a fresh id. Every process that shares the secret key can check a token, so a
reconnect may land on any worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["derive_key", "token_for", "verify", "TOKEN_LENGTH"]

#: What the app's secret key is mixed with, so that a resume token is never the same
#: as any other HMAC the app (or Flask's session signing) makes with that key.
_PURPOSE = b"flask-jpulse-ws resume token v1"
#: Characters of a token: 32 bytes of HMAC-SHA256 in unpadded URL-safe base64.
TOKEN_LENGTH = 43


def derive_key(secret: bytes) -> bytes:
    """The key of every resume token of an app, from its secret key.

    :param secret: the app's ``SECRET_KEY`` as bytes.
    """
    return hmac.new(secret, _PURPOSE, hashlib.sha256).digest()


def token_for(key: bytes, client_id: str) -> str:
    """The resume token of ``client_id``: URL-safe, :data:`TOKEN_LENGTH` characters."""
    mac = hmac.new(key, client_id.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(key: bytes, client_id: str, token: object) -> bool:
    """Whether ``token`` is the resume token of ``client_id``, compared in constant time
    (a wrong guess tells nothing about how close it was)."""
    if not isinstance(token, str) or len(token) != TOKEN_LENGTH or not token.isascii():
        return False
    return hmac.compare_digest(token_for(key, client_id), token)
