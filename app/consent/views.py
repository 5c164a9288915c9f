"""Blueprint "consent": the page that asks the customer what an app may use."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request
from flask_babel import gettext as _

from .. import interactions
from ..accounts import sessions
from ..accounts.forms import ChoiceForm
from ..errors import error_page
from ..extensions import without_transaction
from ..http import allow_form_action
from ..oauth2.authorize import resume_url
from ..oauth2 import clients
from ..oidc import claims as oidc_claims
from . import purposes, service

bp = Blueprint("consent", __name__)


def requested_items(interaction, client) -> list[str]:
    """What the pending request asks of the customer, limited to what the app may ask at all."""
    params = interaction["params"]
    allowed = set(client.scope.split())
    scopes = [s for s in dict.fromkeys((params.get("scope") or "").split())
              if s in allowed and s in purposes.supported_scopes()]
    if "offline_access" in scopes and not client.check_grant_type("refresh_token"):
        scopes.remove("offline_access")  # as authorize.py does: no refresh token for this app
    try:
        claims_request = oidc_claims.restrict(oidc_claims.parse_claims_request(params.get("claims")), allowed)
    except oidc_claims.ClaimsRequestError:
        claims_request = {}
    return scopes + oidc_claims.requested_claim_items(claims_request, set(scopes))


def _describe(item: str) -> str:
    if item.startswith("claim:"):
        return str(oidc_claims.CLAIM_TEXT.get(item[6:], item[6:]))
    return str(oidc_claims.SCOPE_TEXT.get(item, item))


@bp.route("/consent", methods=["GET", "POST"])
def show():
    if request.method == "GET":
        without_transaction()  # the page only reads; a decision writes its ledger entry and grants together
    interaction = interactions.load(request.values.get("interaction"))
    session = sessions.current()
    client = None
    if interaction is not None:  # read fresh, not from the client cache: the decision writes grants for it
        client = clients.read(interaction["client_id"])
    if interaction is None or session is None or client is None:  # no client: deleted since the sign-in began
        return error_page(_("This sign-in request has expired"),
                          _("Go back to the app and start signing in again."), 400)
    allow_form_action(interaction["params"].get("redirect_uri", ""))
    items = requested_items(interaction, client)
    asked_purposes = [purposes.get(i) for i in items if purposes.get(i)]
    optional = {p.id for p in asked_purposes if not p.required}
    form = ChoiceForm()
    if request.method == "POST" and form.validate_on_submit():
        if request.form.get("decision") == "allow":
            ticked = set(request.form.getlist("purpose"))
            declined = sorted(optional - ticked)
            service.grant(session.user, client, [i for i in items if i not in declined], channel="consent_page")
            interactions.update(interaction, consent_done=True, declined=declined)
        else:
            interactions.update(interaction, denied=True)
        return redirect(resume_url(interaction["id"]), code=303)
    form.interaction.data = interaction["id"]
    gpc = purposes.gpc_requested(request.headers)
    purpose_rows = purposes.choices(asked_purposes, gpc)
    descriptions = [_describe(i) for i in items if purposes.get(i) is None]
    return render_template("consent/consent.html", form=form, client=client, user=session.user,
                           items=descriptions, purposes=purpose_rows, gpc=gpc)


def init_app(app) -> None:
    app.register_blueprint(bp)
