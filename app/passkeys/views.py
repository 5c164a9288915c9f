"""Blueprint "passkeys": the WebAuthn ceremonies as JSON endpoints, and the passkeys page of the account centre.

JSON endpoints (POST, CSRF token in the ``X-CSRFToken`` header, rate limited):

* ``/passkeys/register/options`` + ``/passkeys/register/verify``: add a passkey (signed in, recently).
* ``/passkeys/signup/options`` + ``/passkeys/signup/verify``: a new account with a passkey and no password.
* ``/passkeys/login/options`` + ``/passkeys/login/verify``: username-less sign-in (button or autofill).

Each ``verify`` also accepts ``{"cancelled": true, "challenge": …}``: the browser
reports a cancelled ceremony, the challenge is spent, and the answer is the
``cancelled`` error. Errors are ``400 {"error": code, "message": text}``.

Pages: ``GET /account/passkeys``; ``POST /account/passkeys/<id>/rename`` and ``…/delete``.
"""

from __future__ import annotations

import logging
import uuid

from flask import Blueprint, current_app, g, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import HTTPException

from .. import interactions, observability
from ..accounts import service as accounts
from ..accounts import sessions
from ..accounts.models import User
from ..errors import error_page
from ..extensions import db, limiter
from ..oauth2.authorize import acr_satisfied, requested_acr, resume_url
from ..oidc import claims as oidc_claims
from ..portal import login_required, recently_authenticated
from . import ceremony, service
from .ceremony import N_, PasskeyError

bp = Blueprint("passkeys", __name__)
log = logging.getLogger(__name__)
JSON_PREFIX = "/passkeys/"


def _limit():
    return current_app.config.get("IDP_RATELIMIT_PASSKEY", "30 per minute")


# -- errors ---------------------------------------------------------------------------------------------------------

def _json_error(code: str, message: str, status: int = 400, **extra):
    resp = jsonify({"error": code, "message": message, **extra})
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.errorhandler(PasskeyError)
def _passkey_error(e: PasskeyError):
    observability.passkey_error(e.code)
    return _json_error(e.code, _(e.message), e.status, **e.extra)


@bp.errorhandler(CSRFError)
def _csrf_error(e):
    if request.path.startswith(JSON_PREFIX):
        return _json_error("csrf", _("This page has expired. Reload it and try again."))
    return error_page(_("This form has expired"), _("Go back, reload the page and try again."), 400)


@bp.errorhandler(HTTPException)
def _http_error(e: HTTPException):
    if not request.path.startswith(JSON_PREFIX):
        # The account-centre pages answer like every other page: the application's own handler.
        handler = current_app.error_handler_spec.get(None, {}).get(None, {}).get(HTTPException)
        return handler(e) if handler else e
    if e.code == 429:
        return _json_error("rate_limited", _("Too many attempts. Please wait a minute and try again."), 429)
    return _json_error("invalid_request", _("This request could not be understood."), e.code or 400)


def _body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise PasskeyError("invalid_request", N_("This request could not be understood."))
    return data


def _cancelled(body: dict, kind: str):
    """The browser says the customer cancelled: spend the challenge, answer ``cancelled``."""
    if body.get("cancelled"):
        ceremony.cancel(body.get("challenge"), kind)
        raise PasskeyError("cancelled", N_("Cancelled"))


def _interaction_id(body: dict) -> str | None:
    """A pending authorization request of this browser named by the page, or None."""
    iid = body.get("interaction")
    return iid if isinstance(iid, str) and interactions.load(iid) is not None else None


def _signed_in(user: User, cred) -> dict:
    """Start (or step up) the SSO session, then send the browser on: back to the app's flow, or the account."""
    amr, acr = service.amr_acr(cred)
    session = sessions.start(user, amr=amr, acr=acr)
    log.info("sign-in succeeded user=%s method=passkey acr=%s", user.sub, acr)
    iid = g.get("passkey_interaction")
    interaction = interactions.load(iid) if iid else None
    if interaction is not None:
        interactions.update(interaction, login_at=session.auth_time, account_selected=True)
        return {"redirect": resume_url(interaction["id"])}
    return {"redirect": url_for("portal.index")}


# -- add a passkey (signed in) --------------------------------------------------------------------------------------

def _current_user() -> User:
    session = sessions.current()
    if session is None:
        raise PasskeyError("login_required", N_("Sign in first."), 401)
    g.session, g.user = session, session.user
    return session.user


@bp.post("/passkeys/register/options")
@limiter.limit(_limit)
def register_options():
    user = _current_user()
    if not recently_authenticated():
        # Adding a way into the account is sensitive: a borrowed, long-lived session must not be enough.
        raise PasskeyError("reauthentication_required", N_("For your security, sign in again to add a passkey."),
                           403, redirect=url_for("accounts.login", next=url_for("passkeys.manage")))
    options = ceremony.registration_options(
        user_handle=service.user_handle(user), user_name=user.email, display_name=user.name or user.email,
        exclude=[p.credential_id for p in service.for_user(user)], state={"mode": "add", "user_id": user.id})
    return jsonify(options)


@bp.post("/passkeys/register/verify")
@limiter.limit(_limit)
def register_verify():
    body = _body()
    _cancelled(body, "register")
    user = _current_user()
    new, state = ceremony.finish_registration(body.get("credential"))
    if state.get("mode") != "add" or state.get("user_id") != user.id:
        raise PasskeyError("challenge_expired", N_("This passkey request has expired. Try again."))
    row = service.add(user, new)
    log.info("passkey added user=%s synced=%s", user.sub, row.backup_eligible)
    return jsonify({"ok": True, "name": row.name, "redirect": url_for("passkeys.manage")})


# -- sign up with a passkey only -------------------------------------------------------------------------------------

@bp.post("/passkeys/signup/options")
@limiter.limit(_limit)
def signup_options():
    body = _body()
    email = accounts.normalise_email(body.get("email") if isinstance(body.get("email"), str) else "")
    name = (body.get("name") if isinstance(body.get("name"), str) else "").strip()[:255]
    if not accounts.valid_email(email):
        raise PasskeyError("invalid_email", N_("Enter a valid email address."))
    if accounts.find_by_email(email):
        raise PasskeyError("email_taken", N_("An account with this email already exists. Sign in instead."))
    sub = str(uuid.uuid4())  # the future account's subject, which is also its WebAuthn user handle
    options = ceremony.registration_options(
        user_handle=sub.encode(), user_name=email, display_name=name or email, exclude=[],
        state={"mode": "signup", "email": email, "name": name, "sub": sub, "interaction": _interaction_id(body)})
    return jsonify(options)


@bp.post("/passkeys/signup/verify")
@limiter.limit(_limit)
def signup_verify():
    body = _body()
    _cancelled(body, "register")
    new, state = ceremony.finish_registration(body.get("credential"))
    if state.get("mode") != "signup":
        raise PasskeyError("challenge_expired", N_("This passkey request has expired. Try again."))
    if accounts.find_by_email(state["email"]):
        raise PasskeyError("email_taken", N_("An account with this email already exists. Sign in instead."))
    if service.find(new.credential_id) is not None:
        raise PasskeyError("already_registered", N_("This passkey is already registered."))
    # One transaction: the account never exists without its passkey.
    user = User(sub=state["sub"], email=state["email"], password_hash=None, name=state.get("name") or None)
    db.session.add(user)
    try:
        db.session.flush()
        cred = service.add(user, new)
    except IntegrityError:
        db.session.rollback()
        raise PasskeyError("email_taken", N_("An account with this email already exists. Sign in instead."))
    log.info("account created with a passkey user=%s", user.sub)
    g.passkey_interaction = state.get("interaction")
    return jsonify(_signed_in(user, cred))


# -- sign in --------------------------------------------------------------------------------------------------------

@bp.post("/passkeys/login/options")
@limiter.limit(_limit)
def login_options():
    body = _body()
    return jsonify(ceremony.authentication_options({"interaction": _interaction_id(body)}))


@bp.post("/passkeys/login/verify")
@limiter.limit(_limit)
def login_verify():
    body = _body()
    _cancelled(body, "login")
    credential = body.get("credential")
    cid, challenge, state = ceremony.begin_assertion(credential)
    row = service.find(cid)
    owner = db.session.get(User, row.user_id) if row is not None else None
    if row is None or owner is None:
        log.info("passkey sign-in refused: unknown credential")
        raise PasskeyError("unknown_credential", N_(
            "This passkey is not registered with us (it may have been deleted). Use another passkey or your "
            "password."), credential_id=cid, rp_id=ceremony.rp_id())
    result = ceremony.finish_assertion(credential, challenge, public_key=row.public_key,
                                       stored_sign_count=row.sign_count or 0, log_ref=str(row.id))
    if result.user_handle is not None and result.user_handle != service.user_handle(owner):
        log.warning("passkey sign-in refused: user handle does not match credential=%s", row.id)
        raise PasskeyError("unknown_credential", N_(
            "This passkey is not registered with us (it may have been deleted). Use another passkey or your "
            "password."), credential_id=cid, rp_id=ceremony.rp_id())
    service.record_use(row, result.new_sign_count, result.backup_state)
    g.passkey_interaction = state.get("interaction")
    return jsonify(_signed_in(owner, row))


# -- account centre -------------------------------------------------------------------------------------------------

@bp.get("/account/passkeys")
@login_required
def manage():
    return render_template("passkeys/manage.html")


@bp.post("/account/passkeys/<int:passkey_id>/rename")
@login_required
def rename(passkey_id: int):
    row = service.owned(g.user, passkey_id)
    if row is None:
        return error_page(_("Passkey not found"), _("It may have been deleted already."), 404)
    try:
        service.rename(row, request.form.get("name", ""))
    except PasskeyError as exc:
        return render_template("passkeys/manage.html", passkey_error=_(exc.message)), 400
    return redirect(url_for("passkeys.manage", renamed=1), code=303)


@bp.post("/account/passkeys/<int:passkey_id>/delete")
@login_required
def delete(passkey_id: int):
    from flask import flash

    row = service.owned(g.user, passkey_id)
    if row is None:
        return error_page(_("Passkey not found"), _("It may have been deleted already."), 404)
    try:
        service.delete(g.user, row)
    except PasskeyError as exc:
        return render_template("passkeys/manage.html", passkey_error=_(exc.message)), 400
    flash(_("Passkey deleted. You can no longer sign in with it."))
    return redirect(url_for("passkeys.manage"), code=303)


# -- template helpers (the partials are included in pages owned by others) ------------------------------------------

def signin_context() -> dict:
    """For passkeys/_signin.html: the pending interaction, and whether it demands a passkey (acr phr/phrh)."""
    iid = request.args.get("interaction") or ""
    interaction = interactions.load(iid) if iid else None
    required = False
    if interaction is not None:
        params = interaction["params"]
        try:
            claims = oidc_claims.parse_claims_request(params.get("claims"))
        except oidc_claims.ClaimsRequestError:
            claims = {}
        required = not acr_satisfied("1", requested_acr(params, claims))
    return {"interaction": iid if interaction is not None else "", "required": required}


def manage_context() -> dict:
    """For passkeys/_manage.html: the signed-in customer's passkeys and the data the Signal API needs."""
    from webauthn.helpers import bytes_to_base64url

    session = sessions.current()
    if session is None:
        return {"passkeys": [], "user": None}
    user = session.user
    rows = service.for_user(user)
    return {
        "passkeys": rows, "user": user, "rp_id": ceremony.rp_id(),
        "user_id": bytes_to_base64url(service.user_handle(user)),
        "credential_ids": [r.credential_id for r in rows],
        "can_delete_last": bool(user.password_hash),
    }


def init_app(app) -> None:
    app.register_blueprint(bp)
    app.jinja_env.globals["passkey_signin_context"] = signin_context
    app.jinja_env.globals["passkey_manage_context"] = manage_context
