"""The operator's consent tools: the Admin API (/admin/api) and ``flask consents export``.

The Admin API answers only client-credentials access tokens (RFC 6749 §4.4; no
customer behind them) whose scope contains ``admin`` — an app registered with
``clients create --grant-type client_credentials --scope admin``. It finds a
customer, shows their current consents and ledger, and withdraws an app's
consent on their behalf (ledger channel ``admin``, audited). The export command
prints everything known about one customer's consents as one JSON object, e.g.
to answer a GDPR Art. 15 access request.
"""

from __future__ import annotations

import json

import click
from flask import Blueprint, g, jsonify, request
from flask.cli import AppGroup
from flask_babel import force_locale

from .accounts.models import User
from .accounts.service import find_by_email
from .audit import record
from .bearer import BearerError, require
from .consent import service
from .consent.purposes import ADMIN_SCOPE
from .extensions import csrf, db
from .oauth2 import clients
from .oauth2.models import valid_client_id
from .errors import json_error
from .portal.api import app_json, event_json, json_routing_errors, no_store, not_found, plausible, withdrawn

admin_api = Blueprint("admin_api", __name__, url_prefix="/admin/api")
consents_cli = AppGroup("consents", help="Customers' consents: export one customer's consents and ledger.")
REALM = "admin"


def _operator(claims, row) -> None:
    """The token's app must still exist and still be registered for ``admin`` (its scope may have been narrowed)."""
    client = clients.read(row.client_id)
    if client is None:
        raise BearerError(401, "invalid_token", "The access token is no longer valid")
    if ADMIN_SCOPE not in client.scope.split():
        raise BearerError(403, "insufficient_scope", "This app is no longer allowed the admin scope", ADMIN_SCOPE)


admin_token = require(ADMIN_SCOPE, REALM, subject="client", check=_operator)


def customer_json(user: User) -> dict:
    return {"sub": user.sub, "email": user.email, "email_verified": user.email_verified,
            "created_at": int(user.created_at.timestamp()) if user.created_at else None}


def _by_sub(sub: str) -> User | None:
    if not plausible(sub, 64):
        return None
    return db.session.execute(db.select(User).filter_by(sub=sub)).scalar_one_or_none()


def export(user: User) -> dict:
    """One customer's consents: who they are, what each app may use now, and the full ledger with receipts."""
    return {"customer": customer_json(user), "consents": [app_json(a) for a in service.connected_apps(user)],
            "ledger": [event_json(e) for e in service.ledger(user)]}


@admin_api.get("/users")
@csrf.exempt
@admin_token
def find_user():
    email = request.args.get("email", "")
    if not email:
        return json_error("invalid_request", "The email query parameter is required", 400)
    user = find_by_email(email) if len(email) <= 320 and "\x00" not in email else None
    if user is None:
        return not_found("No customer has this email address")
    return no_store(jsonify(customer_json(user)))


@admin_api.get("/users/<sub>")
@csrf.exempt
@admin_token
def show_user(sub):
    user = _by_sub(sub)
    return not_found("No such customer") if user is None else no_store(jsonify(customer_json(user)))


@admin_api.get("/users/<sub>/consents")
@csrf.exempt
@admin_token
def consents(sub):
    user = _by_sub(sub)
    if user is None:
        return not_found("No such customer")
    return no_store(jsonify({"sub": user.sub, "apps": [app_json(a) for a in service.connected_apps(user)]}))


@admin_api.get("/users/<sub>/ledger")
@csrf.exempt
@admin_token
def ledger(sub):
    user = _by_sub(sub)
    if user is None:
        return not_found("No such customer")
    return no_store(jsonify({"sub": user.sub, "events": [event_json(e) for e in service.ledger(user)]}))


@admin_api.delete("/users/<sub>/apps/<client_id>")
@csrf.exempt
@admin_token
def withdraw_app(sub, client_id):
    user = _by_sub(sub)
    if user is None:
        return not_found("No such customer")
    if not valid_client_id(client_id):
        return not_found("This app is not connected")
    events = service.withdraw(user, client_id=client_id, channel="admin")
    if events:
        # Who acted on the customer's behalf belongs in their audit trail (ids only).
        record(user, "consent_withdrawn_by_admin", operator=g.token.client_id, client_id=client_id,
               record_ids=[e.id for e in events])
    return withdrawn(events, "This app is not connected")


@consents_cli.command("export")
@click.option("--email", required=True, help="The customer's email address.")
def consents_export(email):
    """Print one customer's consents per app and full ledger with receipts as one JSON object."""
    user = find_by_email(email)
    if user is None:
        raise click.ClickException(f"no customer with email {email}")
    with force_locale("en"):  # no request to choose a language from; the record language is English
        data = export(user)
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def init_app(app) -> None:
    app.before_request(json_routing_errors(admin_api.url_prefix))
    app.register_blueprint(admin_api)
