"""Blueprint "accounts": sign in, register, choose the account. Pages finish interactions; they never answer apps."""

from __future__ import annotations

import logging
import re

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask_babel import gettext as _

from .. import interactions
from ..extensions import db, limiter
from ..http import allow_form_action
from ..oauth2.authorize import resume_url
from ..oauth2.models import Client
from . import service, sessions
from .forms import ChoiceForm, LoginForm, RegisterForm

bp = Blueprint("accounts", __name__)
log = logging.getLogger(__name__)
PASSWORD_ACR = "1"


def _context():
    """The pending interaction named by the request, and the app it is for."""
    iid = request.values.get("interaction")
    interaction = interactions.load(iid) if iid else None
    client = None
    if interaction is not None:
        client = db.session.execute(
            db.select(Client).filter_by(client_id=interaction["client_id"])
        ).scalar_one_or_none()
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


def init_app(app) -> None:
    app.register_blueprint(bp)
