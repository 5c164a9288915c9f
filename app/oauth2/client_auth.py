"""``private_key_jwt`` client authentication (RFC 7523 §2.2, OIDC Core §9) with jti replay protection."""

from __future__ import annotations

import threading
import time

import requests
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from flask import current_app, g
from joserfc.jwk import KeySet

from ..store import store

_jwks_cache: dict[str, tuple[float, dict]] = {}
_lock = threading.Lock()
JWKS_TTL = 300
MIN_REFETCH = 10


class PrivateKeyJWT(JWTBearerClientAssertion):
    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self):
        super().__init__(validate_jti=True, leeway=60)

    def get_audiences(self):
        # The token endpoint URL or the issuer, each as given (RFC 7523 §3; OIDC Core §9).
        issuer = current_app.config["IDP_ISSUER"]
        return [issuer + "/token", issuer, issuer + "/introspect", issuer + "/revoke", issuer + "/device_authorization"]

    def verify_claims(self, claims):
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) != 1:
            # Audience injection defence: one audience, ours.
            from authlib.oauth2.rfc6749.errors import InvalidClientError
            raise InvalidClientError(description="The assertion must have exactly one audience.")
        super().verify_claims(claims)

    def validate_jti(self, claims, jti):
        if not isinstance(jti, str) or len(jti) > 256:
            return False
        ttl = max(60, int(claims.get("exp", 0) - time.time()) + 60)
        return store().add(f"jti:{claims['sub']}:{jti}", {"at": int(time.time())}, min(ttl, 86400))

    def extract_assertion(self, assertion):
        headers, claims = super().extract_assertion(assertion)
        g.client_assertion_kid = headers.get("kid")
        return headers, claims

    def resolve_client_public_key(self, client):
        if client.meta.get("jwks"):
            return KeySet.import_key_set(client.meta["jwks"])
        uri = client.meta.get("jwks_uri")
        if not uri:
            return KeySet([])
        try:
            data = _fetch_jwks(uri)
            kid = g.get("client_assertion_kid")
            if kid and kid not in {k.get("kid") for k in data.get("keys", []) if isinstance(k, dict)}:
                # The RP rotated its keys (S-17): re-fetch once on an unknown kid, rate-limited.
                data = _fetch_jwks(uri, force=True)
            return KeySet.import_key_set(data)
        except (requests.RequestException, ValueError, AttributeError, TypeError):
            return KeySet([])  # the assertion then fails as invalid_client


def _fetch_jwks(uri: str, force: bool = False) -> dict:
    """The client's JWKS, cached; refetched when stale (rate-limited)."""
    with _lock:
        cached = _jwks_cache.get(uri)
    now = time.time()
    if cached and now - cached[0] < (MIN_REFETCH if force else JWKS_TTL):
        return cached[1]
    resp = requests.get(uri, timeout=5, headers={"Accept": "application/json"})
    resp.raise_for_status()
    data = resp.json()
    with _lock:
        _jwks_cache[uri] = (now, data)
    return data
