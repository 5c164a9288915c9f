"""Blueprint "accounts": sign in, register, choose the account, and the emailed links (verify, reset password).

Pages finish interactions; they never answer apps.
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask_babel import gettext as _

from .. import interactions, mail, observability
from ..extensions import limiter, without_transaction
from ..http import allow_form_action
from ..oauth2.authorize import resume_url
from ..oauth2 import clients
from . import email_flows, service, sessions
from .forms import ChoiceForm, ConfirmLinkForm, ForgotPasswordForm, LoginForm, RegisterForm, ResetPasswordForm

bp = Blueprint("accounts", __name__)
log = logging.getLogger(__name__)
PASSWORD_ACR = "1"


def _context():
    """The pending interaction named by the request, and the app it is for."""
    iid = request.values.get("interaction")
    interaction = interactions.load(iid) if iid else None
    client = None
    if interaction is not None:
        client = clients.lookup(interaction["client_id"])  # its name and logo, for the page
        redirect_uri = interaction["params"].get("redirect_uri")
        if redirect_uri:
            allow_form_action(redirect_uri)
    return interaction, client


def _safe_next() -> str | None:
    """Only account-centre paths of this server (no open redirect)."""
    target = request.args.get("next", "")
    if re.fullmatch(r"/account(/[A-Za-z0-9/_-]*)?(\?[A-Za-z0-9=&_%-]*)?", target):
        return target
    return None


def _after_login(interaction, session):
    if interaction is None:
        return redirect(_safe_next() or url_for("web.home"), code=303)
    interactions.update(interaction, login_at=session.auth_time, account_selected=True)
    return redirect(resume_url(interaction["id"]), code=303)


def _signin_limit():
    return current_app.config["IDP_RATELIMIT_SIGNIN"]


def _register_limit():
    return current_app.config["IDP_RATELIMIT_REGISTER"]


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_signin_limit, methods=["POST"])
def login():
    without_transaction()  # reads, and at most one new row (the session): each statement commits alone
    interaction, client = _context()
    form = LoginForm()
    error = None
    if request.method == "GET":
        form.interaction.data = request.args.get("interaction", "")
        if interaction:
            form.email.data = interaction["params"].get("login_hint", "")[:320]
    elif form.validate_on_submit():
        user = service.authenticate(form.email.data, form.password.data)
        if user is not None:
            session = sessions.start(user, amr=["pwd"], acr=PASSWORD_ACR)
            log.info("sign-in succeeded user=%s method=pwd", user.sub)
            return _after_login(interaction, session)
        log.info("sign-in failed method=pwd")
        observability.signin_failed("password")
        error = _("Incorrect email or password.")
    else:
        error = _("Enter your email and password.")
    status = 401 if error and request.method == "POST" else 200
    return render_template("accounts/login.html", form=form, client=client, error=error), status


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(_register_limit, methods=["POST"])
def register():
    interaction, client = _context()
    form = RegisterForm()
    error = None
    if request.method == "GET":
        form.interaction.data = request.args.get("interaction", "")
    elif form.validate_on_submit():
        try:
            user = service.create_user(form.email.data, form.password.data, form.name.data)
        except service.AccountError as exc:
            error = _(str(exc))
        else:
            session = sessions.start(user, amr=["pwd"], acr=PASSWORD_ACR)
            try:
                email_flows.send_verification(user)
            except mail.MailError:
                pass  # logged; the account works, and the account centre offers to send the link again
            return _after_login(interaction, session)
    else:
        error = _("Enter a valid email and a password of at least 8 characters.")
    status = 400 if error else 200
    return render_template("accounts/register.html", form=form, client=client, error=error), status


@bp.route("/select-account", methods=["GET", "POST"])
def select_account():
    interaction, client = _context()
    session = sessions.current()
    if interaction is None:
        return redirect(url_for("web.home"), code=303)
    form = ChoiceForm()
    if request.method == "POST" and form.validate_on_submit():
        if request.form.get("choice") == "continue" and session is not None:
            interactions.update(interaction, account_selected=True)
            return redirect(resume_url(interaction["id"]), code=303)
        sessions.end(session)
        return redirect(url_for("accounts.login", interaction=interaction["id"]), code=303)
    if session is None:
        return redirect(url_for("accounts.login", interaction=interaction["id"]), code=303)
    form.interaction.data = interaction["id"]
    return render_template("accounts/select_account.html", form=form, client=client, user=session.user)


def _message(title: str, message: str, status: int = 200, link: tuple[str, str] | None = None):
    return render_template("accounts/message.html", title=title, message=message, link=link), status


def _invalid_link():
    return _message(_("This link cannot be used"),
                    _("It has expired or was already used. Ask for a new one and use the newest email."), 400,
                    link=(url_for("accounts.login"), _("Go to sign in")))


@bp.route("/email/verify", methods=["GET", "POST"])
def verify_email():
    """The link from the sign-up email: a button confirms (GET shows it and uses nothing up)."""
    form = ConfirmLinkForm()
    token = request.values.get("token")
    if request.method == "GET":
        if email_flows.verify_target(token) is None:
            return _invalid_link()
        form.token.data = token
        return render_template("accounts/confirm_link.html", form=form, action=url_for("accounts.verify_email"),
                               title=_("Confirm your email address"),
                               message=_("Press the button to confirm that this email address is yours."),
                               button=_("Confirm my email address"))
    if not form.validate_on_submit():
        return _invalid_link()
    user = email_flows.verify_email(form.token.data)
    if user is None:
        return _invalid_link()
    log.info("email verified user=%s", user.sub)
    return _message(_("Email address confirmed"), _("Thank you. Your email address is confirmed."),
                    link=(url_for("portal.index"), _("Go to your account")))


@bp.route("/password/forgot", methods=["GET", "POST"])
@limiter.limit(_signin_limit, methods=["POST"])
def forgot_password():
    form = ForgotPasswordForm()
    if request.method == "POST":
        if form.validate_on_submit():
            email_flows.start_reset(form.email.data)
            # The same answer whether or not an account has this address (no account enumeration).
            return _message(_("Check your email"),
                            _("If an account exists for that address, we sent it a link to choose a new password. "
                              "The link works once, for one hour."),
                            link=(url_for("accounts.login"), _("Back to sign in")))
        return render_template("accounts/forgot.html", form=form,
                               error=_("Enter the email address of your account.")), 400
    return render_template("accounts/forgot.html", form=form, error=None)


@bp.route("/password/reset", methods=["GET", "POST"])
@limiter.limit(_signin_limit, methods=["POST"])
def reset_password():
    form = ResetPasswordForm()
    if request.method == "GET":
        token = request.args.get("token")
        if email_flows.reset_target(token) is None:
            return _invalid_link()
        form.token.data = token
        return render_template("accounts/reset.html", form=form, errors=[])
    if not form.is_submitted() or not form.validate():
        if form.csrf_token.errors or email_flows.reset_target(form.token.data) is None:
            return _invalid_link()
        errors = [e for name in ("password", "confirm") for e in getattr(form, name).errors]
        return render_template("accounts/reset.html", form=form, errors=errors), 400
    user = email_flows.reset_password(form.token.data, form.password.data)
    if user is None:
        return _invalid_link()
    return _message(_("Your password was changed"),
                    _("Sign in with your new password. You were signed out everywhere else."),
                    link=(url_for("accounts.login"), _("Sign in")))


def init_app(app) -> None:
    app.register_blueprint(bp)
