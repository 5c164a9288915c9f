"""Random values and fast keyed hashes for high-entropy secrets.

Client secrets and refresh tokens are 256-bit random values, so a keyed
HMAC-SHA-256 is as strong as a slow password hash against guessing and keeps
the token endpoint fast. Passwords use argon2id instead (accounts/passwords.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import current_app


def random_token(nbytes: int = 32) -> str:
    """A URL-safe random string with ``nbytes`` of entropy."""
    return secrets.token_urlsafe(nbytes)


def _key(purpose: str) -> bytes:
    cache = current_app.extensions.setdefault("idp_hash_keys", {})
    key = cache.get(purpose)
    if key is None:
        secret = current_app.config["SECRET_KEY"].encode()
        key = cache[purpose] = hmac.new(secret, b"idp-hash:" + purpose.encode(), hashlib.sha256).digest()
    return key


def keyed_hash(value: str, purpose: str) -> str:
    """Hex HMAC-SHA-256 of ``value`` under a key derived from SECRET_KEY for ``purpose``."""
    return hmac.new(_key(purpose), value.encode(), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a.encode(), b.encode())
