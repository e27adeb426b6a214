"""Resume tokens: an HMAC of the client id under a key derived from the app's secret."""

import hashlib
import hmac

from flask_jpulse_ws.core.resume import TOKEN_LENGTH, derive_key, token_for, verify

ID = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
OTHER = "0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e"


def test_a_token_verifies_for_its_id_under_the_same_secret_only():
    key = derive_key(b"app-secret")
    token = token_for(key, ID)
    assert len(token) == TOKEN_LENGTH and token.isascii()
    assert verify(key, ID, token)
    assert verify(derive_key(b"app-secret"), ID, token)  # another worker, same secret
    assert not verify(key, OTHER, token)
    assert not verify(derive_key(b"another-secret"), ID, token)


def test_anything_but_the_exact_token_is_refused():
    key = derive_key(b"app-secret")
    token = token_for(key, ID)
    for wrong in (None, "", token[:-1], token + "A", token.upper(), token[::-1], 42,
                  token.encode(), "é" * TOKEN_LENGTH):
        assert not verify(key, ID, wrong), wrong


def test_the_token_is_url_safe_and_is_not_the_secret_keys_own_hmac():
    """The key is derived for this purpose: a token is never an HMAC the app (or a
    session signer) makes with the raw secret key."""
    key = derive_key(b"app-secret")
    token = token_for(key, ID)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                             "0123456789-_")
    raw = hmac.new(b"app-secret", ID.encode(), hashlib.sha256).hexdigest()
    assert key != b"app-secret" and raw not in (token, key.hex())
