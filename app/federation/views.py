"""Blueprint "federation": Continue with Google / Apple / Microsoft / GitHub / Facebook / any OIDC provider.

Routes (thin; the upstream leg is flow.py, the linking policy linking.py):

* ``GET  /federation/<name>/start?interaction=…`` — off to the provider (state, nonce, PKCE).
* ``GET  /federation/<name>/callback`` — the provider's answer (query response mode).
* ``POST /federation/<name>/callback`` — the same by ``response_mode=form_post`` (Apple). A cross-site
  POST carries no SameSite=Lax cookies, so it is parked and re-entered as a top-level GET, where
  the browser binding and the session are visible again. CSRF-exempt: the state is the check.
* ``/federation/email`` — first sign-in without an email from the provider: ask for one.
* ``/federation/confirm`` — an account with this email exists: prove it is yours, then we link.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from .. import interactions, observability
from ..accounts import service, sessions
from ..crypto import random_token, same
from ..extensions import csrf, limiter
from ..store import store
from . import flow, linking, providers

bp = Blueprint("federation", __name__, url_prefix="/federation")
log = logging.getLogger(__name__)
PENDING_PREFIX = "fed:pending:"
POSTED_PREFIX = "fed:posted:"
PENDING_TTL = 900
MAX_PROOF_ATTEMPTS = 5
_KEY = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
FED_ACR = "1"


def _safe_next(target: str | None) -> str | None:
    """Only account-centre paths of this server (no open redirect)."""
    if target and re.fullmatch(r"/account(/[A-Za-z0-9/_-]*)?(\?[A-Za-z0-9=&_%-]*)?", target):
        return target
    return None


def _login_url(pending: dict | None) -> str:
    iid = (pending or {}).get("interaction")
    return url_for("accounts.login", interaction=iid) if iid else url_for("accounts.login")


def _problem(title: str, message: str, status: int, pending: dict | None = None):
    """A friendly page with a way back to the sign-in page (of the same app request when there is one)."""
    back = url_for("portal.identities") if (pending or {}).get("mode") == "link" else _login_url(pending)
    return render_template("federation/error.html", title=title, message=message, back=back), status


def _unknown_provider():
    return _problem(_("This sign-in option is not available"),
                    _("Choose another way to sign in."), 404)


def _failed(pending: dict | None) -> None:
    """Count a failed federated sign-in, once per failure page (linking in the account centre is no sign-in)."""
    if (pending or {}).get("mode") != "link":
        observability.signin_failed("federation")


def _unavailable(up, exc, pending: dict | None = None):
    log.warning("upstream %s unavailable: %s", up.name, exc)
    _failed(pending)
    return _problem(_("%(name)s is not available right now", name=up.label),
                    _("Please try again in a moment, or choose another way to sign in."), 502)


# -- start ----------------------------------------------------------------------------------------------------------

@bp.get("/<name>/start")
def start(name):
    up = providers.get(name)
    if up is None:
        return _unknown_provider()
    iid = request.args.get("interaction") or None
    if iid and interactions.load(iid) is None:
        return _problem(_("This sign-in request has expired"), _("Go back to the app and start signing in again."),
                        400)
    try:
        url = flow.start(up, mode="signin", interaction=iid, next_url=_safe_next(request.args.get("next")))
    except providers.ProviderError as exc:
        return _unavailable(up, exc)
    return redirect(url, code=303)


# -- callback -------------------------------------------------------------------------------------------------------

@bp.post("/<name>/callback")
@csrf.exempt
def callback_post(name):
    if providers.get(name) is None:
        return _unknown_provider()
    fields = {k: v for k, v in request.form.items() if k in ("code", "state", "error", "error_description", "iss",
                                                                "user")}
    key = random_token(24)
    store().put(POSTED_PREFIX + key, fields, 120)
    return redirect(url_for("federation.callback", name=name, posted=key), code=303)


@bp.get("/<name>/callback")
def callback(name):
    up = providers.get(name)
    if up is None:
        return _unknown_provider()
    params = request.args.to_dict()
    if "posted" in params:
        stashed, first = store().consume(POSTED_PREFIX + params["posted"]) if _KEY.match(params["posted"]) \
            else (None, False)
        if stashed is None or not first:
            return _refused(up, "posted response unknown or replayed")
        params = stashed
    try:
        identity, pending = flow.complete(up, params)
    except flow.Cancelled as exc:
        log.info("upstream %s answered error=%s", up.name, exc.error)
        if exc.error == "access_denied":  # the customer said no: a cancel, like a dismissed passkey prompt
            return _problem(_("Sign-in with %(name)s was cancelled", name=up.label),
                            _("Nothing was shared. You can try again or choose another way to sign in."), 400,
                            exc.pending)
        _failed(exc.pending)
        return _problem(_("%(name)s could not sign you in", name=up.label),
                        _("Please try again, or choose another way to sign in."), 400, exc.pending)
    except flow.Refused as exc:
        return _refused(up, exc.reason, exc.pending)
    except providers.ProviderError as exc:
        return _unavailable(up, exc, exc.pending)
    if pending["mode"] == "link":
        return _link_signed_in(up, identity, pending)
    return _sign_in(identity, pending)


def _refused(up, reason: str, pending: dict | None = None):
    log.warning("federated sign-in with %s refused: %s", up.name, reason)
    _failed(pending)
    return _problem(_("This sign-in could not be completed"),
                    _("The answer from %(name)s was not valid for this browser, or it was already used. "
                      "Start again from the sign-in page.", name=up.label), 400)


def _sign_in(identity: flow.Identity, pending: dict):
    try:
        decision = linking.decide(identity)
    except (service.AccountError, linking.LinkError) as exc:  # a concurrent sign-in won the race
        _failed(pending)
        return _problem(_("This sign-in could not be completed"), _(str(exc)), 409, pending)
    if decision.action == linking.SIGN_IN:
        return _finish(decision.user, identity, pending)
    key = _park(identity, pending, user_id=decision.user.id if decision.user else None)
    if decision.action == linking.ASK_EMAIL:
        return redirect(url_for("federation.email", p=key), code=303)
    return redirect(url_for("federation.confirm", p=key), code=303)


def _link_signed_in(up, identity: flow.Identity, pending: dict):
    current = sessions.current()
    if current is None or current.user_id != pending.get("user_id"):
        return _refused(up, "link finished by another customer or after sign-out", pending)
    try:
        linking.link(current.user, identity, how="account_centre")
    except linking.LinkError as exc:
        flash(_(str(exc)))
    else:
        flash(_("%(name)s is now linked to your account.", name=up.label))
    return redirect(url_for("portal.identities"), code=303)


def _finish(user, identity: flow.Identity, pending: dict, extra_amr: tuple[str, ...] = ()):
    amr = list(dict.fromkeys(["fed", *extra_amr, *identity.amr]))
    session = sessions.start(user, amr=amr, acr=FED_ACR)
    log.info("sign-in succeeded user=%s method=fed provider=%s", user.sub, identity.provider)
    iid = pending.get("interaction")
    interaction = interactions.load(iid) if iid else None
    if interaction is not None:
        interactions.update(interaction, login_at=session.auth_time, account_selected=True)
        from ..oauth2.authorize import resume_url

        return redirect(resume_url(interaction["id"]), code=303)
    if iid:  # the app's request expired meanwhile: the customer is signed in all the same
        flash(_("You are signed in. Go back to the app to continue."))
    return redirect(pending.get("next") or url_for("portal.index"), code=303)


# -- pending first sign-in steps -------------------------------------------------------------------------------------

def _park(identity: flow.Identity, pending: dict, user_id: int | None) -> str:
    key = random_token(24)
    store().put(PENDING_PREFIX + key, {
        "identity": dataclasses.asdict(identity), "interaction": pending.get("interaction"),
        "next": pending.get("next"), "bid": flow.browser_id(), "user_id": user_id, "attempts": 0,
    }, PENDING_TTL)
    return key


def _pending(key: str | None) -> dict | None:
    if not key or not _KEY.match(key):
        return None
    data = store().get(PENDING_PREFIX + key)
    if not data or not same(data.get("bid", ""), flow.browser_id()):
        return None
    data["key"] = key
    return data


def _expired():
    return _problem(_("This sign-in has expired"), _("Start again from the sign-in page."), 400)


def _label(identity: dict) -> str:
    up = providers.get(identity["provider"])
    return up.label if up else identity["provider"]


@bp.route("/email", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["IDP_RATELIMIT_REGISTER"], methods=["POST"])
def email():
    pending = _pending(request.values.get("p"))
    if pending is None or pending["user_id"] is not None:
        return _expired()
    identity = flow.Identity(**pending["identity"])
    error = None
    if request.method == "POST":
        value = service.normalise_email(request.form.get("email", ""))
        if not service.valid_email(value):
            error = _("Enter a valid email address.")
        else:
            try:
                decision = linking.with_email(identity, value)
            except (service.AccountError, linking.LinkError) as exc:
                error = _(str(exc))
            else:
                if decision.action == linking.PROVE:
                    store().delete(PENDING_PREFIX + pending["key"])
                    key = _park(identity, pending, user_id=decision.user.id)
                    return redirect(url_for("federation.confirm", p=key), code=303)
                store().delete(PENDING_PREFIX + pending["key"])
                _send_verification(decision.user)
                return _finish(decision.user, identity, pending)
    return render_template("federation/email.html", key=pending["key"], provider=_label(pending["identity"]),
                           error=error, back=_login_url(pending)), 400 if error else 200


def _send_verification(user) -> None:
    from .. import mail
    from ..accounts import email_flows

    try:
        email_flows.send_verification(user)
    except mail.MailError:
        pass  # logged by the mailer; the account centre offers to send the link again


@bp.route("/confirm", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["IDP_RATELIMIT_SIGNIN"], methods=["POST"])
def confirm():
    from ..accounts.models import User
    from ..extensions import db

    pending = _pending(request.values.get("p"))
    user = db.session.get(User, pending["user_id"]) if pending and pending["user_id"] else None
    if user is None:
        return _expired()
    identity = flow.Identity(**pending["identity"])
    error = None
    if request.method == "POST":
        if linking.prove_with_password(user, request.form.get("password", "")):
            store().delete(PENDING_PREFIX + pending["key"])
            try:
                linking.link(user, identity, how="password_proof")
            except linking.LinkError as exc:
                _failed(pending)
                return _problem(_("This sign-in could not be completed"), _(str(exc)), 409, pending)
            return _finish(user, identity, pending, extra_amr=("pwd",))
        _failed(pending)  # each wrong password, as on the sign-in page
        pending["attempts"] += 1
        if pending["attempts"] >= MAX_PROOF_ATTEMPTS:
            store().delete(PENDING_PREFIX + pending["key"])
            return _expired()
        store().put(PENDING_PREFIX + pending["key"], {k: v for k, v in pending.items() if k != "key"}, PENDING_TTL)
        error = _("Incorrect password.")
    return render_template("federation/confirm.html", key=pending["key"], provider=_label(pending["identity"]),
                           email=user.email, has_password=bool(user.password_hash), error=error,
                           back=_login_url(pending)), 401 if error else 200


# -- wiring ---------------------------------------------------------------------------------------------------------

def buttons() -> list[providers.Upstream]:
    """Providers for the sign-in page (never fails the page)."""
    try:
        return providers.all_providers()
    except Exception:  # noqa: BLE001 — a broken provider row must not take the sign-in page down
        log.exception("could not list upstream providers")
        return []


def init_app(app) -> None:
    """Register the blueprint, the account-centre page and the providers of IDP_UPSTREAMS_FILE."""
    from ..config import ConfigError
    from ..portal import identities  # noqa: F401  (adds /account/identities to the portal blueprint)

    path = app.config.get("IDP_UPSTREAMS_FILE")
    if path:
        try:
            app.extensions["idp_upstreams_file"] = providers.load_file(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"IDP_UPSTREAMS_FILE {path}: {exc}") from exc
    app.register_blueprint(bp)
    app.jinja_env.globals["federation_buttons"] = buttons
