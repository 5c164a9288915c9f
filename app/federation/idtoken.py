"""Validation of an upstream ID token (OpenID Connect Core §3.1.3.7) with joserfc.

Signature against the provider's JWKS (refetched once for an unknown ``kid``, so key rotation
works), asymmetric algorithms only (RS256, ES256, PS256 — never ``none`` or HS*), ``iss`` exactly
the provider's issuer (Microsoft: the template with the token's own ``tid``), ``aud`` containing
our client id (and ``azp`` equal to it when there are several audiences), ``exp`` in the
future, ``iat`` present, and ``nonce`` equal to the one this browser sent.
"""

from __future__ import annotations

import time

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..crypto import same
from .providers import ProviderError, Upstream, fetch_json

ALGORITHMS = ["RS256", "ES256", "PS256"]
LEEWAY = 60


class InvalidIdToken(Exception):
    """The ID token must not be believed (the reason is for the log, not the customer)."""


def _keys(jwks_uri: str, fresh: bool) -> KeySet:
    try:
        return KeySet.import_key_set(fetch_json(jwks_uri, fresh=fresh))
    except (JoseError, ValueError, TypeError) as exc:
        raise ProviderError(f"unusable JWKS at {jwks_uri}: {exc}") from exc


def _decode(value: str, jwks_uri: str):
    try:
        return jwt.decode(value, _keys(jwks_uri, False), algorithms=ALGORITHMS)
    except JoseError:
        # An unknown kid after a rotation: fetch the JWKS once more, then give up.
        try:
            return jwt.decode(value, _keys(jwks_uri, True), algorithms=ALGORITHMS)
        except JoseError as exc:
            raise InvalidIdToken(f"signature: {exc.__class__.__name__}") from exc


def expected_issuer(up: Upstream, claims: dict) -> str:
    issuer = up.expected_issuer or ""
    if up.kind == "microsoft" and "{tenantid}" in issuer:
        tid = claims.get("tid")
        if not isinstance(tid, str) or not tid:
            raise InvalidIdToken("microsoft token without tid")
        tenant = up.setting("tenant") or "common"
        if tenant not in ("common", "organizations", "consumers") and tid != tenant:
            raise InvalidIdToken("token from another tenant")
        return issuer.replace("{tenantid}", tid)
    return issuer


def validate(value: str, up: Upstream, jwks_uri: str, nonce: str) -> dict:
    """The verified claims; raises InvalidIdToken."""
    if not isinstance(value, str) or value.count(".") != 2:
        raise InvalidIdToken("not a compact JWS")
    token = _decode(value, jwks_uri)
    if token.header.get("alg") not in ALGORITHMS:
        raise InvalidIdToken("algorithm not allowed")
    claims = token.claims
    now = time.time()
    if claims.get("iss") != expected_issuer(up, claims):
        raise InvalidIdToken("issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if up.client_id not in audiences:
        raise InvalidIdToken("audience")
    if len(audiences) > 1 and claims.get("azp") != up.client_id:
        raise InvalidIdToken("azp")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, (int, float)) or exp + LEEWAY < now:
        raise InvalidIdToken("expired")
    if not isinstance(iat, (int, float)) or iat - LEEWAY > now:
        raise InvalidIdToken("issued in the future")
    if not isinstance(claims.get("nonce"), str) or not same(claims["nonce"], nonce):
        raise InvalidIdToken("nonce")
    if not isinstance(claims.get("sub"), str) or not claims["sub"] or len(claims["sub"]) > 255:
        raise InvalidIdToken("sub")
    return dict(claims)
