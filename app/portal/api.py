"""The Account API (/account/api): what the account centre shows and does, as JSON for apps.

An app holding a customer's access token with the ``account`` scope (which the
customer consented to like any scope) may list the customer's connected apps,
withdraw consent (channel ``api``), read the consent ledger and fetch signed
receipts (ISO/IEC TS 27560 as JWS, verifiable with /jwks.json). Bearer handling
follows RFC 6750 (app/bearer.py); the contract is described in OpenAPI 3.1 at
/account/api/openapi.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from flask import Blueprint, current_app, g, jsonify, request

from ..bearer import BearerError, require
from ..consent import policy, purposes, service
from ..consent.models import ConsentEvent
from ..consent.purposes import API_SCOPES
from ..errors import json_error
from ..extensions import csrf, db
from ..oauth2 import clients
from ..oauth2.models import valid_client_id
from ..oidc import claims as oidc_claims

account_api = Blueprint("account_api", __name__, url_prefix="/account/api")
ACCOUNT_SCOPE = API_SCOPES[0]
REALM = "account"
OPENAPI = Path(__file__).with_name("openapi.json")
#: Consent items, record ids and subjects are short printable ASCII; anything else cannot exist (and a NUL
#: byte would make PostgreSQL raise), so it is answered 404 before touching the database.
_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,128}$")


def plausible(value: str, limit: int = 128) -> bool:
    return isinstance(value, str) and len(value) <= limit and bool(_PRINTABLE.match(value))


# -- representations (shared with the admin API and the export command) -------------------------------

def app_json(entry: dict) -> dict:
    """One connected app from ``service.connected_apps``: scopes, individually requested claims and purposes apart."""
    scopes, claims, purpose_items = [], [], []
    for item, granted_at in sorted(entry["items"].items()):
        p = purposes.get(item)
        if p is not None:
            purpose_items.append({"item": item, "title": p.text("title"), "description": p.text("description"),
                                  "required": p.required, "lawful_basis": p.lawful_basis, "granted_at": granted_at})
        elif item.startswith("claim:"):
            name = item[6:]
            claims.append({"item": item, "claim": name,
                           "description": str(oidc_claims.CLAIM_TEXT.get(name, name)), "granted_at": granted_at})
        else:
            scopes.append({"item": item, "scope": item,
                           "description": str(oidc_claims.SCOPE_TEXT.get(item, item)), "granted_at": granted_at})
    return {"client_id": entry["client_id"], "name": entry["client_name"], "logo_uri": entry.get("logo_uri"),
            "granted_at": entry["granted_at"], "last_used_at": entry.get("last_used_at"),
            "items": {"scopes": scopes, "claims": claims, "purposes": purpose_items}}


def event_json(event: ConsentEvent) -> dict:
    return {"id": event.id, "client_id": event.client_id, "client_name": event.client_name, "action": event.action,
            "items": list(event.items or []), "channel": event.channel, "occurred_at": event.occurred_at,
            "receipt": event.receipt}


def no_store(resp):
    resp.headers["Cache-Control"] = "no-store"
    return resp


def not_found(description: str):
    return json_error("not_found", description, 404)


def withdrawn(events: list[ConsentEvent], description: str):
    if not events:
        return not_found(description)
    return no_store(jsonify({"events": [event_json(e) for e in events]}))


def json_routing_errors(prefix: str):
    """A before-request hook: unknown paths and methods under ``prefix`` get JSON, not the HTML error page.

    Routing fails before any blueprint is chosen, so blueprint error handlers never see these.
    """

    def hook():
        exc = request.routing_exception
        if exc is None:
            return None  # routed: every request that reaches a view passes here, so this is checked first
        inside = request.path == prefix or request.path.startswith(prefix + "/")
        if not inside or getattr(exc, "code", None) not in (404, 405):
            return None
        if exc.code == 405:
            resp = json_error("invalid_request", f"{request.method} is not allowed here", 405)
            resp.headers["Allow"] = ", ".join(exc.valid_methods or [])
            return resp
        return not_found("No such API path")

    return hook


# -- authorization ------------------------------------------------------------------------------------

def _customer(claims, row) -> None:
    """The token's customer in ``g.customer`` (not ``g.user``: no cookie session is involved).

    ``account`` must still be granted to the token's app: a withdrawal applies at once, not at the next refresh.
    """
    user = row.customer
    client = clients.read(row.client_id)
    if user is None or client is None:
        raise BearerError(401, "invalid_token", "The access token is no longer valid")
    if ACCOUNT_SCOPE not in policy.still_granted(user, client, [ACCOUNT_SCOPE], row.granted):
        raise BearerError(403, "insufficient_scope", "The customer no longer allows this app the account scope",
                          ACCOUNT_SCOPE)
    g.customer = user


customer_token = require(ACCOUNT_SCOPE, REALM, subject="user", check=_customer)


# -- views --------------------------------------------------------------------------------------------

@account_api.get("/openapi.json")
def openapi():
    """The API description (public), with this deployment's server URL."""
    doc = json.loads(OPENAPI.read_text(encoding="utf-8"))
    doc["servers"] = [{"url": current_app.config["IDP_ISSUER"] + account_api.url_prefix}]
    return jsonify(doc)


@account_api.get("/apps")
@csrf.exempt
@customer_token
def apps():
    return no_store(jsonify({"apps": [app_json(a) for a in service.connected_apps(g.customer)]}))


@account_api.delete("/apps/<client_id>")
@csrf.exempt
@customer_token
def withdraw_app(client_id):
    # Withdrawing from the calling app itself revokes this very token; the request was already authorized.
    if not valid_client_id(client_id):
        return not_found("This app is not connected")
    return withdrawn(service.withdraw(g.customer, client_id=client_id, channel="api"), "This app is not connected")


@account_api.delete("/apps/<client_id>/items/<item>")
@csrf.exempt
@customer_token
def withdraw_app_item(client_id, item):
    if not valid_client_id(client_id) or not plausible(item):
        return not_found("This app does not have this item")
    return withdrawn(service.withdraw(g.customer, client_id=client_id, item=item, channel="api"),
                     "This app does not have this item")


@account_api.delete("/items/<item>")
@csrf.exempt
@customer_token
def withdraw_item(item):
    if not plausible(item):
        return not_found("No app has this item")
    return withdrawn(service.withdraw(g.customer, item=item, channel="api"), "No app has this item")


@account_api.get("/ledger")
@csrf.exempt
@customer_token
def ledger():
    return no_store(jsonify({"events": [event_json(e) for e in service.ledger(g.customer)]}))


@account_api.get("/receipts/<record_id>")
@csrf.exempt
@customer_token
def receipt(record_id):
    """The signed receipt: ``application/jwt`` when asked for, otherwise JSON carrying it."""
    event = None
    if plausible(record_id, 36):
        event = db.session.execute(
            db.select(ConsentEvent).filter_by(id=record_id, user_id=g.customer.id)).scalar_one_or_none()
    if event is None or not event.receipt:
        return not_found("No such receipt")
    if request.accept_mimetypes.best_match(["application/json", "application/jwt"]) == "application/jwt":
        resp = current_app.response_class(event.receipt, mimetype="application/jwt")
    else:
        resp = jsonify({"record_id": event.id, "receipt": event.receipt})
    return no_store(resp)


def init_app(app) -> None:
    app.before_request(json_routing_errors(account_api.url_prefix))
    app.register_blueprint(account_api)
