"""The device authorization endpoint, ``POST /device_authorization`` (RFC 8628 §3.1-3.2).

Authlib's ``DeviceAuthorizationEndpoint`` with our hooks: the client
authenticates exactly as at the token endpoint (its one registered method;
public clients with ``none``), must be registered for the device grant, and
asks for scopes as at the authorization endpoint (supported scopes and brand
purposes, limited to what the app may ask). Parameters come from the form body
only (``views`` refuses repeated ones before this runs).
"""

from __future__ import annotations

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749.errors import InvalidScopeError, UnauthorizedClientError
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint as _Base

from ..consent import purposes
from ..http import client_ip
from ..oauth2.models import AUTH_METHODS
from . import state


def validate_scope(raw: str | None, client) -> str:
    """The scope to ask the customer for, as ``/authorize`` decides it (oauth2/authorize.py ``_scopes``)."""
    requested = list(dict.fromkeys((raw or "").split()))
    if not requested:
        raise InvalidScopeError("The scope parameter is required")
    if any(s not in purposes.supported_scopes() for s in requested):
        raise InvalidScopeError("Unknown scope requested")
    allowed = set(client.scope.split())
    scopes = [s for s in requested if s in allowed]
    if "offline_access" in scopes and not client.check_grant_type("refresh_token"):
        scopes.remove("offline_access")
    if not scopes:
        raise InvalidScopeError("None of the requested scopes is allowed for this client")
    return " ".join(scopes)


class DeviceAuthorizationEndpoint(_Base):
    CLIENT_AUTH_METHODS = list(AUTH_METHODS)
    INTERVAL = state.INTERVAL

    def create_endpoint_response(self, request):
        client = self.authenticate_client(request)
        if not client.check_grant_type(DEVICE_CODE_GRANT_TYPE):
            raise UnauthorizedClientError("This client is not registered for the device authorization grant")
        scope = validate_scope(request.payload.scope, client)
        return 200, state.create(client, scope, client_ip()), default_json_headers
