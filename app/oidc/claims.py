"""The scope-to-claims table (OpenID Connect Core §5.4) and claim assembly (§5.5).

This is the single place that decides which claims an app may see: the ID
token, userinfo and introspection all call ``claims_for``.
"""

from __future__ import annotations

import json
from datetime import datetime

from flask_babel import lazy_gettext as _l

# scope -> (standard claims it releases)
SCOPE_CLAIMS: dict[str, tuple[str, ...]] = {
    "openid": ("sub",),
    "profile": (
        "name", "family_name", "given_name", "middle_name", "nickname", "preferred_username",
        "profile", "picture", "website", "gender", "birthdate", "zoneinfo", "locale", "updated_at",
    ),
    "email": ("email", "email_verified"),
    "phone": ("phone_number", "phone_number_verified"),
    "address": ("address",),
    "offline_access": (),
}

# What the consent page says for each scope, in plain words.
SCOPE_TEXT = {
    "openid": _l("Sign you in with your account"),
    "profile": _l("Your name and basic profile (picture, language, time zone)"),
    "email": _l("Your email address"),
    "phone": _l("Your phone number"),
    "address": _l("Your postal address"),
    "offline_access": _l("Stay connected when you are not using the app"),
    "account": _l("See and change what you share with our apps, from inside this app"),
}

CLAIM_TEXT = {
    "name": _l("Your full name"), "given_name": _l("Your first name"), "family_name": _l("Your last name"),
    "middle_name": _l("Your middle name"), "nickname": _l("Your nickname"),
    "preferred_username": _l("Your username"), "profile": _l("Your profile page"),
    "picture": _l("Your picture"), "website": _l("Your website"), "gender": _l("Your gender"),
    "birthdate": _l("Your date of birth"), "zoneinfo": _l("Your time zone"), "locale": _l("Your language"),
    "updated_at": _l("When your profile was last updated"), "email": _l("Your email address"),
    "email_verified": _l("Whether your email address is verified"), "phone_number": _l("Your phone number"),
    "phone_number_verified": _l("Whether your phone number is verified"), "address": _l("Your postal address"),
}

CLAIM_SCOPE = {claim: scope for scope, claims in SCOPE_CLAIMS.items() for claim in claims if scope != "openid"}
SUPPORTED_SCOPES = tuple(SCOPE_CLAIMS)
SUPPORTED_CLAIMS = ("sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "azp", "sid",
                    *CLAIM_SCOPE)
# Claims about the authentication event, answered from the session rather than the profile.
AUTH_CLAIMS = ("auth_time", "acr", "amr")


class ClaimsRequestError(ValueError):
    """The ``claims`` request parameter is malformed."""


def parse_claims_request(raw: str | None) -> dict:
    """Parse and check the ``claims`` parameter (§5.5). Returns {"id_token": {...}, "userinfo": {...}}."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ClaimsRequestError("The claims parameter is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ClaimsRequestError("The claims parameter must be a JSON object")
    out = {}
    for target in ("id_token", "userinfo"):
        section = data.get(target)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ClaimsRequestError("Each claims member must be a JSON object")
        clean = {}
        for name, spec in section.items():
            if spec is not None and not isinstance(spec, dict):
                raise ClaimsRequestError("Each requested claim must be null or a JSON object")
            clean[str(name)[:64]] = spec or {}
        out[target] = clean
    return out


def restrict(claims_request: dict, allowed_scopes: set[str]) -> dict:
    """Drop requested profile claims whose scope the app may not ask for at all."""
    return {target: {n: spec for n, spec in section.items() if CLAIM_SCOPE.get(n, "openid") in allowed_scopes
                     or n not in CLAIM_SCOPE}
            for target, section in claims_request.items()}


def requested_claim_items(claims_request: dict, scopes: set[str]) -> list[str]:
    """Consent items for claims requested one by one and not already covered by a requested scope."""
    items = []
    for section in claims_request.values():
        for name in section:
            scope = CLAIM_SCOPE.get(name)
            if scope and scope not in scopes and f"claim:{name}" not in items:
                items.append(f"claim:{name}")
    return items


def _value(user, claim: str):
    if claim == "updated_at":
        ts = user.updated_at
        return int(ts.timestamp()) if isinstance(ts, datetime) else None
    if claim == "address":
        addr = {k: v for k, v in (user.address or {}).items() if isinstance(v, str) and v}
        return addr or None
    if claim in ("email_verified", "phone_number_verified"):
        if claim == "phone_number_verified" and not user.phone_number:
            return None
        return bool(getattr(user, claim))
    value = getattr(user, claim, None)
    return value if value not in ("", None) else None


def claims_for(user, scope: str, claims_request: dict, target: str) -> dict:
    """The profile claims an app may see in ``target`` ("id_token" or "userinfo").

    Scope claims go to userinfo only (an access token is always issued with the
    code flow, §5.4); individually requested claims go where they were asked
    for, and only if the customer consented to them or to their scope. Empty
    values are omitted, never sent as null or "" (§5.1).
    """
    scopes = set(scope.split())
    wanted: set[str] = set()
    if target == "userinfo":
        for s in scopes:
            wanted.update(c for c in SCOPE_CLAIMS.get(s, ()) if c != "sub")
    # The claims request carried by a code or token holds only what the customer consented to.
    for name in claims_request.get(target, {}):
        if name in CLAIM_SCOPE:
            wanted.add(name)
    out = {}
    for claim in sorted(wanted):
        value = _value(user, claim)
        if value is not None:
            out[claim] = value
    return out


def value_requests(claims_request: dict, target: str, claim: str) -> list:
    """The values an app asked for one claim (``value`` / ``values``), or []."""
    spec = claims_request.get(target, {}).get(claim) or {}
    if "value" in spec:
        return [spec["value"]]
    values = spec.get("values")
    return list(values) if isinstance(values, list) else []
