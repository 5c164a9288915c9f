"""Brand purposes (marketing, personalisation, …) defined by the operator in configuration.

A purpose is requested like a scope (``scope=openid email marketing``) and
shown on the consent page with its title and plain-language description. A
required purpose cannot be unticked (refusing it means denying the app);
``sale_or_sharing`` purposes start unticked when the browser sends Global
Privacy Control (``Sec-GPC: 1``, CCPA/CPRA "do not sell or share").
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flask import current_app
from flask_babel import get_locale

from ..oidc.claims import SUPPORTED_SCOPES

#: Scopes for APIs of this server (not profile claims, not purposes); customers consent to them.
API_SCOPES = ("account",)
#: The operator's admin API scope: client credentials only, never requested for a customer.
ADMIN_SCOPE = "admin"
LAWFUL_BASES = ("consent", "contract", "legal_obligation", "legitimate_interest")


@dataclass(frozen=True)
class Purpose:
    id: str
    title: dict
    description: dict
    required: bool = False
    sale_or_sharing: bool = False
    lawful_basis: str = "consent"

    def text(self, field: str) -> str:
        values = getattr(self, field)
        lang = str(get_locale() or "en")
        return values.get(lang) or values.get("en") or self.id


def load(path: str) -> dict[str, Purpose]:
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    out = {}
    for pid, spec in raw.items():
        if pid in SUPPORTED_SCOPES or pid in API_SCOPES or not pid.replace("_", "").isalnum():
            raise ValueError(f"invalid purpose id: {pid}")
        if spec.get("lawful_basis", "consent") not in LAWFUL_BASES:
            raise ValueError(f"invalid lawful_basis for {pid}")
        out[pid] = Purpose(id=pid, title=spec["title"], description=spec["description"],
                           required=bool(spec.get("required")), sale_or_sharing=bool(spec.get("sale_or_sharing")),
                           lawful_basis=spec.get("lawful_basis", "consent"))
    return out


def init_app(app) -> None:
    app.extensions["idp_purposes"] = load(app.config["IDP_PURPOSES_FILE"])


def all_purposes() -> dict[str, Purpose]:
    return current_app.extensions["idp_purposes"]


def get(pid: str) -> Purpose | None:
    return all_purposes().get(pid)


def choices(asked: list[Purpose], gpc: bool) -> list[dict]:
    """The purpose checkboxes of a consent screen (sign-in or device approval).

    Required purposes are ticked and fixed; with Global Privacy Control (``gpc``) the
    sale-or-sharing ones start unticked, every other optional one starts ticked.
    """
    return [{"id": p.id, "title": p.text("title"), "description": p.text("description"), "required": p.required,
             "checked": p.required or not (gpc and p.sale_or_sharing)} for p in asked]


def gpc_requested(headers) -> bool:
    """The browser sends Global Privacy Control (``Sec-GPC: 1``)."""
    return headers.get("Sec-GPC", "").strip() == "1"


def supported_scopes() -> list[str]:
    """Scopes an app may request for a customer."""
    return [*SUPPORTED_SCOPES, *API_SCOPES, *all_purposes()]
