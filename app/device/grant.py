"""The device code at the token endpoint (RFC 8628 §3.4-3.5) on Authlib's ``DeviceCodeGrant``.

Polling answers ``authorization_pending``, ``slow_down`` (the interval grows by
five seconds, persisted per device code), ``access_denied`` or
``expired_token``; an approved device code is exchanged once, then
``invalid_grant``. Tokens are minted like the code flow's: a JWT access token,
a refresh token for ``offline_access`` when the app may refresh, and (through
``OpenIDTokens``) an ID token with the approving session's auth_time, amr, acr
and sid — never a nonce, which this flow does not have.
"""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import InvalidRequestError, UnsupportedGrantTypeError
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc8628 import DeviceCodeGrant as _Base

from ..oauth2.models import AUTH_METHODS
from ..oauth2.server import IssueForCustomer
from . import state


class DeviceCodeGrant(IssueForCustomer, _Base):
    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)

    def validate_token_request(self):
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            # From this app's point of view the server does not offer the grant (as before it existed).
            raise UnsupportedGrantTypeError(self.GRANT_TYPE)
        device_code = self.request.payload.data.get("device_code")
        if not device_code:
            raise InvalidRequestError("Missing device_code")
        self.request.client = client
        self.request.credential = state.poll(device_code, client.client_id)  # the customer's decision

    def token_context(self):
        d = self.request.credential
        return d["family_id"], {"auth_time": d["auth_time"], "acr": d["acr"], "amr": d["amr"], "sid": d["sid"]}

    @hooked
    def create_token_response(self):
        decision = self.request.credential
        scope = decision["scope"]
        include_refresh = "offline_access" in scope.split() and self.request.client.check_grant_type("refresh_token")
        return self.issue_for_customer(decision["user_id"], scope, include_refresh,
                                       "The customer of this device code no longer exists.")
