"""Provider metadata (OIDC Discovery 1.0 §3, RFC 8414), built once from what is actually configured."""

from __future__ import annotations

import json

from ..consent import purposes
from .claims import SUPPORTED_CLAIMS


def build_metadata(app) -> dict:
    iss = app.config["IDP_ISSUER"]
    server = app.extensions["idp_authorization_server"]
    grant_types = sorted({g.GRANT_TYPE for g, _ in server._token_grants})
    auth_methods = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
    return {
        "issuer": iss,
        "authorization_endpoint": iss + "/authorize",
        "token_endpoint": iss + "/token",
        "userinfo_endpoint": iss + "/userinfo",
        "jwks_uri": iss + "/jwks.json",
        "end_session_endpoint": iss + "/logout",
        "revocation_endpoint": iss + "/revoke",
        "introspection_endpoint": iss + "/introspect",
        "device_authorization_endpoint": iss + "/device_authorization",
        "scopes_supported": purposes.supported_scopes(),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": grant_types,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256", "PS256"],
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods[:3],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": list(SUPPORTED_CLAIMS),
        "claims_parameter_supported": True,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "require_request_uri_registration": False,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "display_values_supported": ["page", "popup", "touch"],
        "ui_locales_supported": list(app.config["IDP_LOCALES"]),
        "claims_locales_supported": list(app.config["IDP_LOCALES"]),
        "acr_values_supported": list(app.config.get("IDP_ACR_VALUES", ("1", "phr", "phrh"))),
        "authorization_response_iss_parameter_supported": True,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": True,
        "frontchannel_logout_session_supported": True,
    }


def build(app) -> None:
    """Pre-serialise both documents; they are served as bytes on every request."""
    doc = build_metadata(app)
    app.extensions["idp_discovery"] = json.dumps(doc, indent=None, separators=(",", ":")).encode()
    # RFC 8414 §3: the same document; OIDC members are valid metadata there too.
    app.extensions["idp_oauth_metadata"] = app.extensions["idp_discovery"]
