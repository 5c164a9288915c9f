"""Blueprint "consent": the page that asks the customer what an app may use."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request
from flask_babel import gettext as _

from .. import interactions
from ..accounts import sessions
from ..accounts.forms import ChoiceForm
from ..errors import error_page
from ..extensions import db
from ..http import allow_form_action
from ..oauth2.authorize import resume_url
from ..oauth2.models import Client
from ..oidc import claims as oidc_claims
from . import policy

bp = Blueprint("consent", __name__)


def _items(interaction, client) -> list[str]:
    params = interaction["params"]
    scopes = list(dict.fromkeys((params.get("scope") or "").split()))
    try:
        claims_request = oidc_claims.restrict(oidc_claims.parse_claims_request(params.get("claims")),
                                              set(client.scope.split()))
    except oidc_claims.ClaimsRequestError:
        claims_request = {}
    return scopes + oidc_claims.requested_claim_items(claims_request, set(scopes))


def _describe(item: str) -> str:
    if item.startswith("claim:"):
        return str(oidc_claims.CLAIM_TEXT.get(item[6:], item[6:]))
    return str(oidc_claims.SCOPE_TEXT.get(item, item))


@bp.route("/consent", methods=["GET", "POST"])
def show():
    interaction = interactions.load(request.values.get("interaction"))
    session = sessions.current()
    if interaction is None or session is None:
        return error_page(_("This sign-in request has expired"),
                          _("Go back to the app and start signing in again."), 400)
    client = db.session.execute(db.select(Client).filter_by(client_id=interaction["client_id"])).scalar_one()
    allow_form_action(interaction["params"].get("redirect_uri", ""))
    items = [i for i in _items(interaction, client) if i in oidc_claims.SUPPORTED_SCOPES or i.startswith("claim:")]
    allowed = set(client.scope.split())
    items = [i for i in items if i.startswith("claim:") or i in allowed]
    if "offline_access" in items and not client.check_grant_type("refresh_token"):
        items.remove("offline_access")  # as authorize.py does: no refresh token for this app
    form = ChoiceForm()
    if request.method == "POST" and form.validate_on_submit():
        if request.form.get("decision") == "allow":
            policy.record(session.user, client, items)
            interactions.update(interaction, consent_done=True)
        else:
            interactions.update(interaction, denied=True)
        return redirect(resume_url(interaction["id"]), code=303)
    form.interaction.data = interaction["id"]
    descriptions = [_describe(i) for i in items]
    return render_template("consent/consent.html", form=form, client=client, user=session.user,
                           items=descriptions)


def init_app(app) -> None:
    app.register_blueprint(bp)
