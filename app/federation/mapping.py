"""Upstream profile → our profile: one mapping table per provider kind.

Each table maps our claim name (OpenID Connect Core §5.1) to a path in what the upstream
returned (ID token claims merged with userinfo, or the provider's API answer). Only these
claims ever reach our profile, and only into empty fields; what an app then receives is
still governed by the customer's consent.
"""

from __future__ import annotations

from typing import Any

PROFILE_CLAIMS = ("name", "given_name", "family_name", "picture", "locale", "preferred_username")
LIMITS = {"name": 255, "given_name": 255, "family_name": 255, "picture": 2048, "locale": 35,
          "preferred_username": 255, "email": 320}

_OIDC = {"name": "name", "given_name": "given_name", "family_name": "family_name", "picture": "picture",
         "locale": "locale", "preferred_username": "preferred_username", "email": "email"}

TABLES: dict[str, dict[str, str]] = {
    "oidc": _OIDC,
    "google": _OIDC,
    "microsoft": {**_OIDC, "preferred_username": "preferred_username"},
    # Apple: the name arrives once, in the ``user`` form field of the first sign-in (stored under "user").
    "apple": {"email": "email", "given_name": "user.name.firstName", "family_name": "user.name.lastName"},
    # GitHub REST API: GET /user (+ the verified primary address from GET /user/emails, stored under "email").
    "github": {"name": "name", "picture": "avatar_url", "preferred_username": "login", "email": "email"},
    # Facebook Graph API: /me?fields=id,name,email,picture (picture is {"data": {"url": …}}).
    "facebook": {"name": "name", "given_name": "first_name", "family_name": "last_name",
                 "picture": "picture.data.url", "email": "email"},
}


def _path(data: dict, path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def profile(kind: str, raw: dict) -> dict:
    """Our claim names → clean string values (absent, empty or non-string values are left out)."""
    out = {}
    for ours, theirs in TABLES[kind].items():
        value = _path(raw, theirs)
        if isinstance(value, str) and value.strip():
            out[ours] = value.strip()[:LIMITS.get(ours, 255)]
    if "name" not in out and (out.get("given_name") or out.get("family_name")):
        out["name"] = " ".join(v for v in (out.get("given_name"), out.get("family_name")) if v)[:255]
    if out.get("picture") and not out["picture"].startswith("https://"):
        out.pop("picture")  # only https pictures: the account pages load them under the CSP's img-src
    return out


def apply(user, claims: dict) -> bool:
    """Fill the customer's empty profile fields; never overwrite what the customer set. True if changed."""
    changed = False
    for key in PROFILE_CLAIMS:
        if claims.get(key) and not getattr(user, key):
            setattr(user, key, claims[key])
            changed = True
    return changed
