"""Authorization codes (RFC 6749 §4.1.2), kept in the short-lived store.

A code is consumed, not deleted: its first use keeps the record for
``TOMBSTONE_TTL``, so a second presentation, even after the code's own lifetime,
finds it and revokes every token issued from the first exchange (RFC 6749 §4.1.2, OAuth 2.0 Security BCP §4.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from ..crypto import keyed_hash, random_token
from ..store import store
from . import tokens

TOMBSTONE_TTL = 3600


@dataclass
class AuthorizationCode:
    client_id: str
    user_id: int
    redirect_uri: str
    scope: str
    family_id: str
    nonce: str | None = None
    code_challenge: str | None = None
    auth_time: int | None = None
    acr: str | None = None
    amr: list = field(default_factory=list)
    sid: str | None = None
    claims: dict = field(default_factory=dict)

    # authlib AuthorizationCodeMixin
    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time


def _key(code: str) -> str:
    return "code:" + keyed_hash(code, "code")


def issue(**fields) -> str:
    """Store a new code; returns its value (256 bits of entropy)."""
    code = random_token(32)
    fields.setdefault("family_id", random_token(18))
    store().put(_key(code), fields, current_app.config["IDP_CODE_TTL"])
    return code


def consume(code: str, client_id: str) -> AuthorizationCode | None:
    """The code's data on its first presentation by its own client; None otherwise.

    A replay revokes the tokens of the first exchange.
    """
    if not code or len(code) > 128:
        return None
    # One round trip. Only the code's own client uses it up: presented by another client it is left for its
    # owner. First use keeps the used code for TOMBSTONE_TTL, so a replay after the code's own lifetime still
    # finds the family to revoke.
    data, first = store().consume(_key(code), keep=TOMBSTONE_TTL, where={"client_id": client_id})
    if data is None or data["client_id"] != client_id:
        return None
    if first:
        return AuthorizationCode(**data)
    tokens.revoke_family(data["family_id"])
    return None
