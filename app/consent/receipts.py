"""Consent receipts: a JWS per consent event, signed with the provider's keys (verifiable with the JWKS).

Fields follow ISO/IEC TS 27560 (consent record information structure), as JWT claims.
"""

from __future__ import annotations

from flask import current_app

from ..oauth2.tokens import sign
from . import purposes


def build(event, sub: str, scope_items: list[str]) -> str:
    """The signed receipt of one ledger event."""
    cfg = current_app.config
    issuer = cfg["IDP_ISSUER"]
    purpose_entries = []
    for item in scope_items:
        p = purposes.get(item)
        if p is not None:
            purpose_entries.append({"purpose_id": p.id, "purpose": p.title.get("en", p.id),
                                    "lawful_basis": p.lawful_basis, "required": p.required})
    claims = {
        "iss": issuer, "sub": sub, "iat": event.occurred_at, "jti": event.id,
        "record_id": event.id,
        "schema_version": "ISO/IEC TS 27560:2023",
        "controller": {"name": cfg["IDP_CONTROLLER_NAME"], "contact": cfg["IDP_CONTROLLER_CONTACT"],
                       "id": issuer},
        "processor": {"client_id": event.client_id, "name": event.client_name},
        "event": {"type": event.action, "timestamp": event.occurred_at, "channel": event.channel},
        "purposes": purpose_entries,
        "scopes": [i for i in scope_items if purposes.get(i) is None],
        "lawful_basis": "consent",
        "withdrawal": {"uri": issuer + "/account/apps", "api": issuer + "/account/api/apps"},
    }
    return sign(claims, "RS256", typ="consent-receipt+jwt")
