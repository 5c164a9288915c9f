"""Token, revocation and introspection endpoints on Authlib's AuthorizationServer.

The one wiring table is ``build_server``. Grants override Authlib's storage
hooks only; protocol validation stays in Authlib, with these deliberate
tightenings: parameters are read from the POST body only (never the query
string), repeated parameters are refused, PKCE is S256-only, refresh tokens
rotate and a reused one revokes its whole family.
"""

from __future__ import annotations

import base64
import binascii
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Request
from authlib.oauth2.rfc6749 import OAuth2Request as BaseOAuth2Request
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import (InvalidClientError, InvalidGrantError, InvalidRequestError,
                                           InvalidScopeError)
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from flask import current_app, request

from .. import observability
from ..consent import policy as consent_policy
from ..extensions import db, without_transaction
from . import clients, codes, tokens
from .client_auth import PrivateKeyJWT
from .endpoints import IntrospectionEndpoint, RevocationEndpoint
from .models import AUTH_METHODS

CONFIDENTIAL = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


class FormOnlyPayload:
    """RFC 6749 §3.2: token endpoint parameters come from the form body; the query string is ignored."""

    def __init__(self, req):
        self._req = req

    @property
    def data(self):
        return self._req.form

    @property
    def datalist(self):
        return {k: self._req.form.getlist(k) for k in self._req.form}

    def __getattr__(self, name):
        if name in ("client_id", "redirect_uri", "response_type", "grant_type", "scope", "state"):
            return self._req.form.get(name)
        raise AttributeError(name)


class OAuth2Request(FlaskOAuth2Request):
    def __init__(self, req):
        # The request URI is built from the configured issuer, never from Host / X-Forwarded-Host (S-01):
        # Authlib's https check on ``request.url`` raised an unhandled InsecureTransportError (a 500) for any
        # request with a foreign Host. Transport security is enforced by the issuer (https outside dev mode).
        BaseOAuth2Request.__init__(self, method=req.method, uri=current_app.config["IDP_ISSUER"] + req.path,
                                   headers=req.headers)
        self._request = req
        self.payload = FormOnlyPayload(req)

    @property
    def args(self):
        return {}


class Server(AuthorizationServer):
    def create_oauth2_request(self, req):
        return OAuth2Request(request)

    def query_client(self, client_id):
        return clients.lookup(client_id)

    def create_token_response(self, request=None):
        # One transaction per token request: the new rows (and a refresh token's claim) commit together, once,
        # after the ID token is built, so nothing the response needs is reloaded after a commit. An error
        # response rolls back whatever the failed grant had written. (A code exchange writes a single row and
        # runs without a transaction, without_transaction; a refresh writes last, its claim and new row in one
        # statement on PostgreSQL: RefreshTokenGrant.)
        try:
            response = super().create_token_response(request)
        except BaseException:
            db.session.rollback()
            raise
        if not db.session.registry.has():
            return response  # no statement ran (client credentials): no Session to create just to commit nothing
        if response.status_code == 200:
            db.session.commit()
        else:
            db.session.rollback()
        return response

    def authenticate_client(self, req, methods, endpoint="token"):
        # RFC 6749 §2.3 / §5.2 (CA-03): a client MUST NOT use more than one authentication method per request;
        # Authlib would accept whichever succeeds first.
        used = [
            request.headers.get("Authorization", "").split(" ", 1)[0].lower() == "basic",
            "client_secret" in request.form,
            "client_assertion" in request.form or "client_assertion_type" in request.form,
        ]
        if sum(used) > 1:
            raise InvalidRequestError("The client used more than one authentication method.")
        if used[0] and not _well_formed_basic(request.headers["Authorization"]):
            # Authlib crashes (a 500) on "Basic " with no value, non-base64 or non-UTF-8 credentials.
            raise InvalidClientError(status_code=401, description="Malformed HTTP Basic credentials.")
        return super().authenticate_client(req, methods, endpoint)

    def save_token(self, token, req):
        pass  # each grant writes its row: tokens.save (generate_token), save_with_customer (a code), rotate (a
        # refresh); create_token_response commits

    def validate_requested_scope(self, scope):
        pass  # each grant checks scope against what was granted


def _well_formed_basic(header: str) -> bool:
    """RFC 7617: "Basic" SP base64(user-id ":" password), UTF-8 (RFC 6749 §2.3.1)."""
    parts = header.split(None, 1)
    if len(parts) != 2 or len(parts[1]) > 4096:
        return False
    try:
        decoded = base64.b64decode(parts[1].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    return ":" in decoded


class IssueFromContext:
    """Mint tokens with the authorization context (auth_time, sid, claims…) the grant carries."""

    def token_context(self) -> tuple[str | None, dict]:
        return None, {}

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None, include_refresh_token=True,
                       refresh_scope=None):
        family_id, ctx = self.token_context()
        grant_type = grant_type or self.GRANT_TYPE
        response, row = tokens.mint(client=self.request.client, user=user, scope=scope or "", grant_type=grant_type,
                                    family_id=family_id, include_refresh=include_refresh_token, context=ctx,
                                    refresh_scope=refresh_scope)
        self.request.issued_context = ctx
        self.store_row(row, grant_type)
        return response

    def store_row(self, row: dict | None, grant_type: str) -> None:
        tokens.save(row, grant_type)


class IssueForCustomer:
    """Tokens for a customer on the strength of a code they approved (the code and device-code grants).

    The token row is written with the read of the customer and their consent (``tokens.save_with_customer``: one
    statement on PostgreSQL, without a transaction), and the access token is signed once the customer is known.
    If the customer is gone nothing is written; if the read finds the consent withdrawn, the row just written is
    revoked; a withdrawal under way and this write wait for each other, so neither misses the other.
    """

    def token_context(self) -> tuple[str, dict]:
        raise NotImplementedError

    def issue_for_customer(self, user_id: int, scope: str, include_refresh: bool, gone: str):
        client = self.request.client
        family_id, ctx = self.token_context()
        claims, response, row = tokens.draft(client=client, user_id=user_id, scope=scope, grant_type=self.GRANT_TYPE,
                                             family_id=family_id, include_refresh=include_refresh, context=ctx)
        without_transaction()  # its only write is the token row
        user, self.request.granted = tokens.save_with_customer(row, client)
        if user is None:
            raise InvalidGrantError(gone)
        if not consent_policy.allows_all(user, client, scope.split(), self.request.granted):
            tokens.revoke_family(family_id)
            raise InvalidGrantError("The customer withdrew consent for this app.")
        self.request.user, self.request.issued_context = user, ctx
        observability.count_token(self.GRANT_TYPE)
        return 200, tokens.finish(claims, response, user.sub), self.TOKEN_RESPONSE_HEADER


class AuthorizationCodeGrant(IssueForCustomer, grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)

    def query_authorization_code(self, code, client):
        return codes.consume(code, client.client_id)

    def delete_authorization_code(self, authorization_code):
        pass  # consumed already; the kept record lets a replay revoke the tokens (codes.consume)

    def token_context(self):
        code = self.request.authorization_code
        return code.family_id, {
            "auth_time": code.auth_time, "acr": code.acr, "amr": code.amr, "sid": code.sid,
            "claims": code.claims, "nonce": code.nonce,
        }

    @hooked
    def create_token_response(self):
        code = self.request.authorization_code
        include_refresh = "offline_access" in code.scope.split() and self.request.client.check_grant_type(
            "refresh_token")
        return self.issue_for_customer(code.user_id, code.scope, include_refresh,
                                       "The customer of this code no longer exists.")


class RefreshTokenGrant(IssueFromContext, grants.RefreshTokenGrant):
    """Refresh with rotation, in two round trips on PostgreSQL.

    One read, in autocommit: the old token's row with its customer and their consent to this app. The new tokens
    and the ID token are then built in memory, and only at the end is the old token claimed and the new row
    written, in one statement (``tokens.rotate``). So nothing is written unless the whole response is ready: a
    request that fails on the way leaves the old token live for a retry.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        without_transaction()
        row = tokens.refresh_row(refresh_token)
        now = int(time.time())
        if row is None or row.refresh_expires_at is None or row.refresh_expires_at <= now:
            return None
        if row.rotated_at is not None or row.revoked_at is not None:
            # A rotated (or revoked) refresh token that comes back has leaked: its whole family ends.
            tokens.revoke_family(row.family_id)
            return None
        row.live_at = now  # the claim judges expiry at this instant (tokens.rotate)
        return row

    def authenticate_user(self, refresh_token):
        # Read with the token (tokens.refresh_row); issue_token reads the consent.
        self.request.granted = refresh_token.granted
        return refresh_token.customer

    def revoke_old_credential(self, refresh_token):
        pass  # claimed when the new row is written (create_token_response)

    def token_context(self):
        row = self.request.refresh_token
        return row.family_id, {"auth_time": row.auth_time, "acr": row.acr, "amr": row.amr, "sid": row.sid,
                               "claims": row.claims}

    def store_row(self, row, grant_type):
        self.request.new_row = row  # written last, with the claim (create_token_response)

    def issue_token(self, user, refresh_token):
        # The grant goes on with what the customer still allows of it; a withdrawal narrows it for good. The
        # access token gets what was asked (a subset of the grant, checked by Authlib), or the whole grant, while
        # the new refresh token keeps the grant's scope (RFC 6749 §6): a narrowed request does not narrow it.
        grant = consent_policy.still_granted(user, self.request.client, refresh_token.get_scope().split(),
                                             self.request.granted)
        if "offline_access" not in grant:
            raise InvalidGrantError("The customer no longer allows this app to stay connected.")
        asked = list(dict.fromkeys((self.request.payload.scope or "").split()))  # in order, once each
        scope = [s for s in asked if s in grant] if asked else grant
        if not scope:
            raise InvalidScopeError("The customer no longer allows this app what it asked for.")
        return self.generate_token(user=user, scope=" ".join(scope), include_refresh_token=True,
                                   refresh_scope=" ".join(grant))

    def create_token_response(self):
        result = super().create_token_response()  # Authlib's, with its hooks: the ID token too; nothing written yet
        old = self.request.refresh_token
        old_id, family_id = old.id, old.family_id  # read now: the SQLite path commits (and expires) before claiming
        if not tokens.rotate(old_id, old.live_at, self.request.new_row):
            # Another request presented the same refresh token between our read and our claim, and won: the token
            # was used twice, so its whole family ends (the winner's new tokens too).
            db.session.rollback()
            tokens.revoke_family(family_id)
            raise InvalidGrantError()
        return result


class ClientCredentialsGrant(IssueFromContext, grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL

    def create_token_response(self):
        client = self.request.client
        requested = (self.request.payload.scope or "").split()
        allowed = set(client.scope.split()) - {"openid", "offline_access"}
        if any(s not in allowed for s in requested):
            raise InvalidScopeError("The client may not request this scope.")
        scope = " ".join(requested) if requested else " ".join(sorted(allowed))
        token = self.generate_token(scope=scope, include_refresh_token=False)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class StrictCodeChallenge(CodeChallenge):
    """PKCE with S256 only (RFC 7636); a verifier without a prior challenge is refused (Authlib checks that)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def get_authorization_code_challenge(self, authorization_code):
        return authorization_code.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code):
        return "S256" if authorization_code.code_challenge else None


class OpenIDTokens(OpenIDCode):
    """Adds a fresh ID token to code and refresh responses whose scope includes openid."""

    def __init__(self):
        super().__init__(require_nonce=False)

    def process_token(self, grant, response):
        _, token, _ = response
        if "openid" not in token.get("scope", "").split():
            return token
        req = grant.request
        token["id_token"] = tokens.id_token(client=req.client, user=req.user, scope=token["scope"],
                                            context=getattr(req, "issued_context", None) or {},
                                            access_token=token["access_token"])
        return token

    def __call__(self, grant):
        grant.register_hook("after_create_token_response", self.process_token)


def build_server(app) -> Server:
    """The one wiring table of grants, extensions and endpoints."""
    server = Server()
    server.init_app(app)
    server.register_client_auth_method("private_key_jwt", PrivateKeyJWT())
    server.register_grant(AuthorizationCodeGrant, [StrictCodeChallenge(required=True), OpenIDTokens()])
    server.register_grant(RefreshTokenGrant, [OpenIDTokens()])
    server.register_grant(ClientCredentialsGrant)
    from ..device.endpoint import DeviceAuthorizationEndpoint  # RFC 8628 (imports this module: late)
    from ..device.grant import DeviceCodeGrant
    server.register_grant(DeviceCodeGrant, [OpenIDTokens()])
    server.register_endpoint(DeviceAuthorizationEndpoint)
    server.register_endpoint(RevocationEndpoint)
    server.register_endpoint(IntrospectionEndpoint)
    return server


def refuse_repeated_parameters() -> None:
    """RFC 6749 §3.2: request parameters MUST NOT be included more than once."""
    for key in request.form:
        if len(request.form.getlist(key)) > 1:
            raise InvalidRequestError(f"Repeated parameter: {key}"[:80])
