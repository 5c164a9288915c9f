"""RFC 7009 revocation and RFC 7662 introspection, on Authlib's endpoints."""

from __future__ import annotations

import time

from authlib.oauth2.rfc7009 import RevocationEndpoint as _Revocation
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _Introspection

from ..consent import policy
from ..extensions import without_transaction
from . import tokens
from .models import AUTH_METHODS, Token


def _find(value: str, hint: str | None, autocommit: bool = False) -> tuple[Token | None, str | None]:
    """The token row for an access or refresh token value, and which kind it is.

    ``autocommit``: the caller only reads (introspection), so no transaction is opened for it (see
    ``tokens.access_row``).
    """
    order = ("refresh_token", "access_token") if hint == "refresh_token" else ("access_token", "refresh_token")
    for kind in order:
        if kind == "access_token":
            claims = tokens.decode_access_token(value)
            row = tokens.access_row(claims, autocommit=autocommit) if claims else None
        else:
            if autocommit:
                without_transaction()
            row = tokens.refresh_row(value)  # with its customer, as access_row reads an access token's
        if row is not None:
            row.kind = kind
            return row, kind
    return None, None


class RevocationEndpoint(_Revocation):
    CLIENT_AUTH_METHODS = list(AUTH_METHODS)

    def query_token(self, token_string, token_type_hint):
        return _find(token_string, token_type_hint)[0]

    def revoke_token(self, token, request):
        # A refresh token ends its whole family (RFC 7009 §2.1: SHOULD also invalidate its access tokens);
        # an access token ends only itself.
        if token.kind == "refresh_token":
            tokens.revoke_family(token.family_id)
        else:
            tokens.revoke_access(token)


class IntrospectionEndpoint(_Introspection):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def query_token(self, token_string, token_type_hint):
        return _find(token_string, token_type_hint, autocommit=True)[0]  # introspection only reads

    def check_permission(self, token, client, request):
        # Any authenticated confidential client (an app or a resource server) may introspect.
        return not client.is_public

    def introspect_token(self, token):
        now = time.time()
        active = token.access_active(now) if token.kind == "access_token" else token.refresh_active(now)
        if not active:
            return {"active": False}
        user = token.customer  # read with the row (tokens.access_row, tokens.refresh_row)
        exp = token.access_expires_at if token.kind == "access_token" else token.refresh_expires_at
        scope = token.scope if token.kind == "access_token" else token.get_scope()
        body = {
            "active": True, "scope": scope, "client_id": token.client_id,
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
            "exp": exp, "iat": token.issued_at, "iss": tokens.issuer(),
            "sub": user.sub if user else token.client_id,
        }
        if token.kind == "access_token":
            body.update(aud=tokens.issuer(), jti=token.id)
        for name in ("auth_time", "acr", "amr", "sid"):
            if getattr(token, name):
                body[name] = getattr(token, name)
        if user is not None:
            client = self.server.query_client(token.client_id)
            purposes = policy.purposes_claim(user.id, client, scope) if client else None
            if purposes is not None:
                body[tokens.PURPOSES_CLAIM] = purposes
        return body
