"""The upstream leg: we are an OAuth 2.0 / OpenID Connect client of the provider (Authlib's requests client).

As strict as our own endpoint: every request carries ``state``, ``nonce`` and PKCE S256
(RFC 7636), kept in the short-lived store, single-use and bound to this browser. Mix-up defence
(RFC 9207, draft-ietf-oauth-mix-up-mitigation): each provider has its own callback URL, the stored
state names the provider it was started for, and an ``iss`` response parameter must equal that
provider's issuer.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from flask import current_app, session, url_for

from ..crypto import random_token, same
from ..store import store
from . import idtoken, mapping
from .providers import HTTP_TIMEOUT, ProviderError, Upstream

log = logging.getLogger(__name__)
STATE_PREFIX = "fed:state:"
STATE_TTL = 600
_STATE = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
AMR_VALUE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class Refused(Exception):
    """The callback must not be believed; ``reason`` is for the log, the customer gets a friendly page.

    ``pending`` is the state record when one was found (None for an unknown state): its ``mode`` tells a
    failed sign-in from a failed link.
    """

    def __init__(self, reason: str, pending: dict | None = None):
        super().__init__(reason)
        self.reason, self.pending = reason, pending


class Cancelled(Exception):
    """The provider answered with an error (the customer cancelled, or the provider refused)."""

    def __init__(self, error: str, pending: dict | None):
        super().__init__(error)
        self.error, self.pending = error, pending


@dataclass
class Identity:
    """What the provider told us about the customer, after every check."""

    provider: str
    kind: str
    subject: str
    email: str | None
    email_verified: bool
    email_trusted: bool           # verified AND the operator trusts this provider's addresses
    profile: dict = field(default_factory=dict)
    amr: list[str] = field(default_factory=list)


def browser_id() -> str:
    if "bid" not in session:
        session["bid"] = random_token(16)
    return session["bid"]


def callback_url(up: Upstream) -> str:
    return current_app.config["IDP_ISSUER"] + url_for("federation.callback", name=up.name)


def _client(up: Upstream, **kwargs) -> OAuth2Session:
    # Apple and Facebook read the client credentials from the body; the others accept HTTP Basic.
    method = up.settings.get("token_endpoint_auth_method") or (
        "client_secret_post" if up.kind in ("apple", "facebook", "github") else "client_secret_basic")
    return OAuth2Session(up.client_id, up.secret(), scope=up.scopes, redirect_uri=callback_url(up),
                         code_challenge_method="S256", token_endpoint_auth_method=method, **kwargs)


def start(up: Upstream, *, mode: str, interaction: str | None = None, user_id: int | None = None,
          next_url: str | None = None) -> str:
    """Record a fresh state/nonce/verifier for this browser and return the provider's authorization URL."""
    endpoints = up.endpoints()
    state, nonce, verifier = random_token(24), random_token(24), random_token(48)
    store().put(STATE_PREFIX + state, {
        "provider": up.name, "nonce": nonce, "verifier": verifier, "bid": browser_id(), "mode": mode,
        "interaction": interaction, "user_id": user_id, "next": next_url, "created_at": int(time.time()),
    }, STATE_TTL)
    extra = {}
    if up.is_oidc:
        extra["nonce"] = nonce
    if up.kind == "apple":
        extra["response_mode"] = "form_post"  # Apple requires form_post when it is asked for name or email
    if up.kind == "google" and up.settings.get("hosted_domain"):
        extra["hd"] = up.settings["hosted_domain"]
    if up.kind == "facebook":
        extra["auth_type"] = "rerequest"  # ask again for an email permission the customer declined before
    url, _ = _client(up).create_authorization_url(endpoints["authorize_url"], state=state, code_verifier=verifier,
                                                  **extra)
    return url


def take_state(up: Upstream, params: dict) -> dict:
    """Consume the state once; refuse an unknown, replayed, foreign-browser or other-provider state."""
    state = params.get("state") or ""
    if not _STATE.match(state):
        raise Refused("missing or malformed state")
    pending, first = store().consume(STATE_PREFIX + state)
    if pending is None:
        raise Refused("unknown or expired state")
    if not first:
        raise Refused("replayed state", pending)
    if not same(pending.get("bid", ""), session.get("bid", "")):
        raise Refused("state started in another browser", pending)
    if pending.get("provider") != up.name:
        raise Refused(f"state was started for provider {pending.get('provider')}, not {up.name}", pending)
    return pending


def _check_iss_parameter(up: Upstream, params: dict) -> None:
    """RFC 9207 §2.4: when the provider sends ``iss``, it must be this provider's issuer."""
    iss = params.get("iss")
    if iss is None:
        return
    expected = up.expected_issuer
    if up.kind == "microsoft" and expected and "{tenantid}" in expected:
        pattern = "^" + re.escape(expected).replace(re.escape("{tenantid}"), "[A-Za-z0-9-]+") + "$"
        if re.match(pattern, iss):
            return
    elif expected and same(iss, expected):
        return
    raise Refused(f"iss parameter {iss!r} is not the issuer of {up.name}")


def complete(up: Upstream, params: dict) -> tuple[Identity, dict]:
    """Check the callback, redeem the code and return the verified identity and the pending state record."""
    pending = None
    if params.get("error"):
        try:
            pending = take_state(up, params)
        except Refused:
            pending = None
        raise Cancelled(str(params.get("error"))[:64], pending)
    pending = take_state(up, params)
    try:
        return _redeem(up, params, pending)
    except (Refused, ProviderError) as exc:
        exc.pending = pending  # the caller tells a failed sign-in from a failed link
        raise


def _redeem(up: Upstream, params: dict, pending: dict) -> tuple[Identity, dict]:
    """After a good state: the ``iss`` parameter, the code exchange and the ID token or profile API."""
    _check_iss_parameter(up, params)
    code = params.get("code")
    if not code or len(code) > 4096:
        raise Refused("missing code")
    endpoints = up.endpoints()
    client = _client(up)
    try:
        token = client.fetch_token(endpoints["token_url"], code=code, code_verifier=pending["verifier"],
                                   grant_type="authorization_code", timeout=HTTP_TIMEOUT,
                                   headers={"Accept": "application/json",
                                            "Content-Type": "application/x-www-form-urlencoded"})
    except OAuthError as exc:
        raise Refused(f"token endpoint refused the code: {exc.error}") from exc
    except (requests.RequestException, ValueError) as exc:
        raise ProviderError(f"token endpoint of {up.name} failed: {exc}") from exc
    if up.is_oidc:
        raw = _oidc_claims(up, client, token, endpoints, pending["nonce"], params)
    else:
        raw = _api_profile(up, client, token, endpoints)
    return _identity(up, raw), pending


def _oidc_claims(up, client, token, endpoints, nonce, params) -> dict:
    id_token = token.get("id_token")
    if not id_token:
        raise Refused("no ID token in the token response")
    try:
        claims = idtoken.validate(id_token, up, endpoints["jwks_uri"], nonce)
    except idtoken.InvalidIdToken as exc:
        raise Refused(f"ID token rejected: {exc}") from exc
    raw = dict(claims)
    if endpoints.get("userinfo_url") and up.kind != "apple":
        # Some providers (our own kind included) put profile claims only in userinfo.
        try:
            resp = client.get(endpoints["userinfo_url"], timeout=HTTP_TIMEOUT, headers={"Accept": "application/json"})
            info = resp.json() if resp.ok else {}
        except (requests.RequestException, ValueError) as exc:
            log.warning("userinfo of %s failed: %s", up.name, exc)
            info = {}
        if isinstance(info, dict) and info.get("sub") == claims["sub"]:  # Core §5.3.2: sub must match
            raw = {**info, **claims}
            for key in ("email", "email_verified"):
                if key not in claims and key in info:
                    raw[key] = info[key]
    if up.kind == "apple":
        raw["user"] = _apple_user(params.get("user"))
    return raw


def _apple_user(value) -> dict:
    """Apple sends the name once, as JSON in the ``user`` form field of the first authorization."""
    import json

    if not value or not isinstance(value, str) or len(value) > 4096:
        return {}
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _api_profile(up, client, token, endpoints) -> dict:
    base = (endpoints.get("api_base_url") or "").rstrip("/")
    headers = {"Accept": "application/json"}
    try:
        if up.kind == "github":
            headers["Accept"] = "application/vnd.github+json"
            user = client.get(base + "/user", headers=headers, timeout=HTTP_TIMEOUT)
            user.raise_for_status()
            raw = user.json()
            emails = client.get(base + "/user/emails", headers=headers, timeout=HTTP_TIMEOUT)
            # Only the primary address, and only if GitHub says it is verified; /user's public email is unverified.
            listed = emails.json() if emails.ok else []
            primary = next((e for e in listed if isinstance(e, dict) and e.get("primary") and e.get("verified")),
                           None) if isinstance(listed, list) else None
            raw["email"] = primary["email"] if primary else None
            raw["email_verified"] = primary is not None
            raw["sub"] = str(raw.get("id") or "")
        else:  # facebook
            resp = client.get(base + "/me", params={"fields": "id,name,email,first_name,last_name,picture"},
                              headers=headers, timeout=HTTP_TIMEOUT)
            resp.raise_for_status()
            raw = resp.json()
            # The Graph API returns only a confirmed address (or none).
            raw["email_verified"] = bool(raw.get("email"))
            raw["sub"] = str(raw.get("id") or "")
    except (requests.RequestException, ValueError, AttributeError, TypeError) as exc:
        raise ProviderError(f"profile API of {up.name} failed: {exc}") from exc
    if not isinstance(raw, dict) or not raw.get("sub") or raw["sub"] in ("None", "0"):
        raise Refused("the provider's API returned no account id")
    return raw


def _verified(value) -> bool:
    return value is True or value == "true"  # Apple sends "true" as a string


def _identity(up: Upstream, raw: dict) -> Identity:
    claims = mapping.profile(up.kind, raw)
    email = (claims.pop("email", None) or "").strip().lower() or None
    verified = bool(email) and _verified(raw.get("email_verified"))
    if up.kind == "microsoft":
        # Microsoft's email claim is mutable and unverified unless the tenant proves the domain (xms_edov).
        verified = bool(email) and (_verified(raw.get("email_verified")) or _verified(raw.get("xms_edov")))
    trusted = verified and up.trust_email
    if up.kind == "google" and up.settings.get("hosted_domain"):
        trusted = trusted and raw.get("hd") == up.settings["hosted_domain"]
    amr = []
    trust_amr = up.settings.get("trust_amr", up.kind == "oidc")
    if trust_amr and isinstance(raw.get("amr"), list):
        amr = [v for v in raw["amr"] if isinstance(v, str) and AMR_VALUE.match(v)][:8]
    return Identity(provider=up.name, kind=up.kind, subject=str(raw["sub"])[:255], email=email,
                    email_verified=verified, email_trusted=trusted, profile=claims, amr=amr)
