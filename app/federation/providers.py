"""The configured upstream identity providers and what each kind needs (endpoints, secrets, quirks).

Providers come from two places: the ``upstream_providers`` table (``flask upstreams add``) and,
read at start, the JSON file named by ``IDP_UPSTREAMS_FILE`` (the file wins on a name clash).
Each kind is a preset of real endpoints; every endpoint can be overridden in ``settings``
(``authorize_url``, ``token_url``, ``userinfo_url``, ``jwks_uri``, ``api_base_url``) so private
deployments and tests can point them elsewhere.

* ``oidc``: everything from the issuer's discovery document (OpenID Connect Discovery 1.0).
* ``google``: OIDC, issuer ``https://accounts.google.com``; optional ``hosted_domain`` (``hd``).
* ``microsoft``: OIDC, multi-tenant; issuer template ``https://login.microsoftonline.com/{tenantid}/v2.0``.
* ``apple``: OIDC without discovery use; the client secret is an ES256 JWT minted per request.
* ``github``, ``facebook``: OAuth 2.0 only; the profile comes from their APIs.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field

import requests
from flask import current_app

KINDS = ("oidc", "google", "apple", "microsoft", "github", "facebook")
OIDC_KINDS = {"oidc", "google", "apple", "microsoft"}
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
OVERRIDES = ("authorize_url", "token_url", "userinfo_url", "jwks_uri", "api_base_url")
MICROSOFT_ISSUER = "https://login.microsoftonline.com/{tenantid}/v2.0"
APPLE_AUDIENCE = "https://appleid.apple.com"
HTTP_TIMEOUT = 10
DISCOVERY_TTL = 3600

PRESETS: dict[str, dict] = {
    "google": {"issuer": "https://accounts.google.com", "scope": "openid email profile", "label": "Google"},
    "microsoft": {"issuer": MICROSOFT_ISSUER, "scope": "openid email profile", "label": "Microsoft",
                  "tenant": "common"},
    "apple": {"issuer": "https://appleid.apple.com", "scope": "openid name email", "label": "Apple",
              "authorize_url": "https://appleid.apple.com/auth/authorize",
              "token_url": "https://appleid.apple.com/auth/token",
              "jwks_uri": "https://appleid.apple.com/auth/keys"},
    "github": {"scope": "read:user user:email", "label": "GitHub",
               "authorize_url": "https://github.com/login/oauth/authorize",
               "token_url": "https://github.com/login/oauth/access_token",
               "api_base_url": "https://api.github.com"},
    "facebook": {"scope": "email public_profile", "label": "Facebook",
                 "authorize_url": "https://www.facebook.com/v19.0/dialog/oauth",
                 "token_url": "https://graph.facebook.com/v19.0/oauth/access_token",
                 "api_base_url": "https://graph.facebook.com/v19.0"},
    "oidc": {"scope": "openid email profile"},
}


class ProviderError(Exception):
    """The provider is misconfigured or unreachable (the customer sees a friendly page; the log has the reason)."""

    pending: dict | None = None  # flow.complete: the state record, once the state was good


@dataclass(frozen=True)
class Upstream:
    """One provider, resolved from a table row or the configuration file."""

    name: str
    kind: str
    client_id: str
    issuer: str | None = None
    client_secret: str | None = None
    client_secret_env: str | None = None
    scope: str | None = None
    trust_email: bool = False
    settings: dict = field(default_factory=dict)
    source: str = "db"

    @property
    def preset(self) -> dict:
        return PRESETS[self.kind]

    @property
    def is_oidc(self) -> bool:
        return self.kind in OIDC_KINDS

    @property
    def label(self) -> str:
        return self.settings.get("label") or self.preset.get("label") or self.name

    @property
    def scopes(self) -> str:
        return self.scope or self.preset["scope"]

    @property
    def expected_issuer(self) -> str | None:
        """The issuer as configured; for Microsoft a template containing ``{tenantid}``."""
        return self.issuer or self.preset.get("issuer")

    def setting(self, key: str):
        return self.settings.get(key) or self.preset.get(key)

    def secret(self) -> str | None:
        """The client secret: minted (Apple), from the environment, or stored."""
        if self.kind == "apple":
            from .apple import client_secret

            return client_secret(self)
        if self.client_secret_env:
            value = os.environ.get(self.client_secret_env)
            if not value:
                raise ProviderError(f"environment variable {self.client_secret_env} is not set")
            return value
        return self.client_secret

    def endpoints(self) -> dict:
        """authorize_url, token_url, userinfo_url, jwks_uri, api_base_url (overrides first, then discovery/preset)."""
        out = {key: self.setting(key) for key in OVERRIDES}
        needed = ("authorize_url", "token_url", "jwks_uri") if self.is_oidc else ("authorize_url", "token_url")
        if self.kind in ("oidc", "google", "microsoft") and not all(out.get(k) for k in needed):
            doc = discovery(self)
            for key, meta in (("authorize_url", "authorization_endpoint"), ("token_url", "token_endpoint"),
                              ("userinfo_url", "userinfo_endpoint"), ("jwks_uri", "jwks_uri")):
                out[key] = out.get(key) or doc.get(meta)
        missing = [k for k in needed if not out.get(k)]
        if missing:
            raise ProviderError(f"provider {self.name} has no {', '.join(missing)}")
        return out


def from_row(row) -> Upstream:
    return Upstream(name=row.name, kind=row.kind, client_id=row.client_id, issuer=row.issuer,
                    client_secret=row.client_secret, client_secret_env=row.client_secret_env, scope=row.scope,
                    trust_email=bool(row.trust_email), settings=dict(row.settings or {}), source="db")


def validate(up: Upstream) -> Upstream:
    """Refuse a provider that cannot work; returns it unchanged. Raises ValueError with the reason."""
    if not NAME.match(up.name or ""):
        raise ValueError("name must be 1-64 lower-case letters, digits, '-' or '_' (it appears in URLs)")
    if up.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if not up.client_id:
        raise ValueError("client_id is required")
    if up.kind == "oidc" and not up.issuer:
        raise ValueError("an oidc provider needs its issuer (for discovery)")
    if up.client_secret and up.client_secret_env:
        raise ValueError("give either client_secret or client_secret_env, not both")
    if up.kind == "apple":
        missing = [k for k in ("team_id", "key_id", "private_key_file") if not up.settings.get(k)]
        if missing:
            raise ValueError(f"apple needs {', '.join(missing)} (the client secret is a JWT signed with that key)")
    elif not (up.client_secret or up.client_secret_env):
        raise ValueError("a client secret is required (client_secret or client_secret_env)")
    for key in ("issuer",):
        value = getattr(up, key)
        if value and not re.match(r"^https?://", value):
            raise ValueError(f"{key} must be an http(s) URL")
    return up


# -- the registry ---------------------------------------------------------------------------------------------------

def load_file(path: str) -> dict[str, Upstream]:
    """Read IDP_UPSTREAMS_FILE: a JSON list of providers (or {"upstreams": [...]}); raises ValueError."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if isinstance(data, dict):
        data = data.get("upstreams", [])
    if not isinstance(data, list):
        raise ValueError("the upstreams file must hold a JSON list of providers")
    out: dict[str, Upstream] = {}
    for entry in data:
        if not isinstance(entry, dict):
            raise ValueError("each provider must be a JSON object")
        known = {"name", "kind", "issuer", "client_id", "client_secret", "client_secret_env", "scope",
                 "trust_email", "settings"}
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"unknown keys in provider {entry.get('name')}: {', '.join(sorted(unknown))}")
        up = validate(Upstream(name=entry.get("name", ""), kind=entry.get("kind", ""),
                               client_id=entry.get("client_id", ""), issuer=entry.get("issuer"),
                               client_secret=entry.get("client_secret"),
                               client_secret_env=entry.get("client_secret_env"), scope=entry.get("scope"),
                               trust_email=bool(entry.get("trust_email", False)),
                               settings=dict(entry.get("settings") or {}), source="file"))
        if up.name in out:
            raise ValueError(f"provider {up.name} is defined twice")
        out[up.name] = up
    return out


def _file_providers() -> dict[str, Upstream]:
    return current_app.extensions.get("idp_upstreams_file", {})


def all_providers() -> list[Upstream]:
    from ..extensions import db
    from .models import UpstreamProvider

    found = {row.name: from_row(row)
             for row in db.session.execute(db.select(UpstreamProvider).order_by(UpstreamProvider.id)).scalars()}
    found.update(_file_providers())
    return list(found.values())


def get(name: str | None) -> Upstream | None:
    if not name or not NAME.match(name):
        return None
    if name in _file_providers():
        return _file_providers()[name]
    from ..extensions import db
    from .models import UpstreamProvider

    row = db.session.execute(db.select(UpstreamProvider).filter_by(name=name)).scalar_one_or_none()
    return from_row(row) if row is not None else None


# -- discovery and JWKS, cached per app -----------------------------------------------------------------------------

def _cache() -> dict:
    return current_app.extensions.setdefault("idp_upstream_cache", {})


def fetch_json(url: str, *, fresh: bool = False, headers: dict | None = None) -> dict:
    """GET a JSON document (discovery, JWKS), cached for an hour unless ``fresh``."""
    cache = _cache()
    hit = cache.get(url)
    if hit and not fresh and hit[0] > time.time():
        return hit[1]
    try:
        resp = requests.get(url, timeout=HTTP_TIMEOUT, headers={"Accept": "application/json", **(headers or {})},
                            allow_redirects=False)
        resp.raise_for_status()
        data = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderError(f"could not fetch {url}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProviderError(f"{url} did not return a JSON object")
    cache[url] = (time.time() + DISCOVERY_TTL, data)
    return data


def discovery(up: Upstream) -> dict:
    issuer = up.expected_issuer
    if not issuer:
        raise ProviderError(f"provider {up.name} has no issuer")
    base = issuer.replace("{tenantid}", up.setting("tenant") or "common")
    doc = fetch_json(base.rstrip("/") + "/.well-known/openid-configuration")
    # OpenID Connect Discovery §4.3: the document must name exactly the issuer we asked
    # (Microsoft's multi-tenant document names the template itself).
    if doc.get("issuer") not in (issuer, base):
        raise ProviderError(f"discovery of {up.name} names issuer {doc.get('issuer')!r}, expected {issuer!r}")
    return doc
