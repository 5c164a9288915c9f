"""Issuing and checking tokens.

Access tokens are JWTs per RFC 9068 (``typ: at+jwt``) whose ``jti`` names a
row in ``tokens``, so they can be revoked; refresh tokens are opaque and stored
as keyed hashes. ID tokens follow OpenID Connect Core §2 and §3.1.3.6.
"""

from __future__ import annotations

import time

from authlib.oidc.core.util import create_half_hash
from flask import current_app
from joserfc import jwt
from joserfc.errors import JoseError

from .. import observability
from ..consent import policy
from ..crypto import keyed_hash, random_token
from ..extensions import db
from ..keys import keyring
from ..oidc.claims import claims_for
from .models import Token


#: The claim that tells an app which brand purposes the customer granted it, and since when.
PURPOSES_CLAIM = "consented_purposes"


def issuer() -> str:
    return current_app.config["IDP_ISSUER"]


def sign(claims: dict, alg: str, typ: str = "JWT") -> str:
    key = keyring().signing_key(alg)
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": typ}, claims, key, algorithms=[alg])


def issue(*, client, user, scope: str, grant_type: str, family_id: str | None = None,
          include_refresh: bool = False, context: dict | None = None) -> dict:
    """Create a token row and return the token response members (no id_token yet)."""
    cfg = current_app.config
    ctx = context or {}
    now = int(time.time())
    jti = random_token(18)
    ttl = cfg["IDP_ACCESS_TOKEN_TTL"]
    subject = user.sub if user is not None else client.client_id
    claims = {"iss": issuer(), "sub": subject, "aud": issuer(), "client_id": client.client_id,
              "iat": now, "exp": now + ttl, "jti": jti, "scope": scope}
    for name in ("auth_time", "acr", "amr", "sid"):
        if ctx.get(name):
            claims[name] = ctx[name]
    access_token = sign(claims, cfg["IDP_ACCESS_TOKEN_ALG"], typ="at+jwt")
    row = Token(
        id=jti, family_id=family_id or random_token(18), client_id=client.client_id,
        user_id=user.id if user is not None else None, grant_type=grant_type, scope=scope,
        claims=ctx.get("claims") or None, sid=ctx.get("sid"), auth_time=ctx.get("auth_time"),
        amr=ctx.get("amr"), acr=ctx.get("acr"), issued_at=now, access_expires_at=now + ttl,
    )
    response = {"access_token": access_token, "token_type": "Bearer", "expires_in": ttl, "scope": scope}
    if include_refresh:
        refresh = random_token(32)
        row.refresh_hash = keyed_hash(refresh, "refresh")
        row.refresh_expires_at = now + cfg["IDP_REFRESH_TOKEN_TTL"]
        response["refresh_token"] = refresh
    db.session.add(row)
    db.session.commit()
    observability.count_token(grant_type)
    return response


def id_token(*, client, user, row: Token, access_token: str | None, nonce: str | None) -> str:
    """An ID token for ``user`` and ``client``, minted fresh (never cached)."""
    alg = client.id_token_alg
    now = int(time.time())
    claims = {"iss": issuer(), "sub": user.sub, "aud": client.client_id, "azp": client.client_id,
              "iat": now, "exp": now + current_app.config["IDP_ID_TOKEN_TTL"]}
    if row.auth_time:
        claims["auth_time"] = row.auth_time
    if nonce:
        claims["nonce"] = nonce
    if row.acr:
        claims["acr"] = row.acr
    if row.amr:
        claims["amr"] = row.amr
    if row.sid:
        claims["sid"] = row.sid
    if access_token:
        claims["at_hash"] = create_half_hash(access_token, alg).decode()
    claims.update(claims_for(user, row.scope, row.claims or {}, "id_token"))
    purposes = policy.purposes_claim(user.id, client, row.scope)
    if purposes is not None:
        claims[PURPOSES_CLAIM] = purposes
    return sign(claims, alg)


def _decode_own(value: str):
    """A JWT signed by one of our published keys with our issuer, or None. Expiry is the caller's business."""
    if not value or len(value) > 8192:
        return None
    try:
        token = jwt.decode(value, keyring().verification_keys(), algorithms=["RS256", "ES256"])
    except (JoseError, ValueError, TypeError):
        return None
    return token if token.claims.get("iss") == issuer() else None


def verify_id_token_hint(value: str) -> dict | None:
    """Claims of an ID token this server issued; expired ones are accepted (OIDC Core §3.1.2.1, RP-Initiated Logout §2)."""
    token = _decode_own(value)
    if token is None or token.header.get("typ") == "at+jwt" or not isinstance(token.claims.get("sub"), str):
        return None  # an access token is not an ID token
    return token.claims


def by_refresh_token(value: str) -> Token | None:
    if not value or len(value) > 256:
        return None
    return db.session.execute(
        db.select(Token).filter_by(refresh_hash=keyed_hash(value, "refresh"))
    ).scalar_one_or_none()


def decode_access_token(value: str) -> dict | None:
    """Verified claims of one of our JWT access tokens, or None (bad signature, type, issuer or expired)."""
    token = _decode_own(value)
    if token is None or token.header.get("typ") != "at+jwt":
        return None
    claims = token.claims
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        return None
    return claims


def active_access_token(value: str) -> tuple[dict, Token] | None:
    """Claims and row of a live (unexpired, unrevoked) access token."""
    claims = decode_access_token(value)
    if claims is None:
        return None
    row = db.session.get(Token, claims.get("jti"))
    if row is None or not row.access_active():
        return None
    return claims, row


def revoke_family(family_id: str) -> int:
    """Revoke every token descending from one authorization. Returns the number of rows changed."""
    now = int(time.time())
    result = db.session.execute(
        db.update(Token).where(Token.family_id == family_id, Token.revoked_at.is_(None)).values(revoked_at=now)
    )
    db.session.commit()
    return result.rowcount
