"""The device flow's HTTP surface: ``POST /device_authorization`` and the verification pages.

Anti-phishing (RFC 8628 §5.4): a code, even one arriving prefilled from
``verification_uri_complete``, only ever leads to a confirmation page that
names the app (with its logo), what it will receive, and where and when the
request was made (the device's IP address, its approximate place and the
time), with a warning never to enter a code someone else sent; nothing is
approved without pressing Approve. Guessing (§5.1): code entry is limited per
IP address (Flask-Limiter) and per browser (a store counter, so every node
sees it); wrong attempts are counted and logged, never the codes.
"""

from __future__ import annotations

import io
import logging

import segno
from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from werkzeug.exceptions import HTTPException

from .. import audit, geo
from ..accounts import sessions
from ..consent import purposes
from ..consent import service as consent_service
from ..crypto import random_token
from ..errors import json_error
from ..extensions import csrf, limiter
from ..http import client_ip
from ..oauth2 import clients
from ..oauth2.views import _form_endpoint, _server, _token_limit  # the token endpoint's common checks
from ..oidc import claims as oidc_claims
from ..store import store
from . import state, user_codes

log = logging.getLogger(__name__)
bp = Blueprint("device", __name__)
api = Blueprint("device_api", __name__)

SESSION_KEY = "device_user_code"
ENTRY_WINDOW = 900  # seconds over which one browser's code entries are counted


def _entry_limit() -> str:
    return current_app.config.get("IDP_RATELIMIT_DEVICE", "10 per minute")


def _browser_attempts() -> int:
    return int(current_app.config.get("IDP_DEVICE_ENTRY_ATTEMPTS", 10))


# -- the device's endpoint ---------------------------------------------------------------------------------------

@api.post("/device_authorization")
@csrf.exempt
@limiter.limit(_token_limit)
def device_authorization():
    return _form_endpoint(lambda: _server().create_endpoint_response("device_authorization"))


@api.errorhandler(HTTPException)
def _api_error(e: HTTPException):
    """Devices read JSON (RFC 6749 §5.2 shape), also for a rate limit or an oversized body."""
    code = "rate_limited" if e.code == 429 else "invalid_request"
    return json_error(code, e.description or e.name, e.code or 400)


@api.get("/device/qr")
def qr():
    """A QR code of ``verification_uri_complete`` for device makers (``format=svg`` (default) or ``png``).

    The code's format is checked but not looked up, so this is no oracle for guessing live codes.
    """
    code = user_codes.normalise(request.args.get("user_code"))
    kind = request.args.get("format", "svg")
    if code is None or kind not in ("svg", "png"):
        return json_error("invalid_request", "user_code must be a code such as BCDF-GHJK; format svg or png", 400)
    uri = f"{current_app.config['IDP_ISSUER']}/device?user_code={user_codes.display(code)}"
    buf = io.BytesIO()
    segno.make(uri, error="m").save(buf, kind=kind, scale=6, border=2)
    mimetype = "image/svg+xml" if kind == "svg" else "image/png"
    return buf.getvalue(), 200, {"Content-Type": mimetype, "Cache-Control": "no-store"}


# -- the customer's pages ----------------------------------------------------------------------------------------

def _browser_id() -> str:
    # The same browser id as interactions.py: one per Flask session.
    if "bid" not in session:
        session["bid"] = random_token(16)
    return session["bid"]


def _enter_page(code: str = "", error: str | None = None, status: int = 200):
    return render_template("device/enter.html", code=code, error=error), status


def _invalid_page():
    session.pop(SESSION_KEY, None)
    return render_template("device/invalid.html"), 400


@bp.route("/device", methods=["GET", "POST"])
@limiter.limit(_entry_limit, methods=["POST"])
def enter():
    if request.method == "GET":
        code = user_codes.normalise(request.args.get("user_code"))
        return _enter_page(user_codes.display(code) if code else "")
    typed = request.form.get("user_code", "")[:32]
    bid = _browser_id()
    # Every entry counts (an atomic counter shared by all nodes): past the limit even a right code waits.
    if store().incr("device-entry:" + bid, ENTRY_WINDOW) > _browser_attempts():
        log.warning("device code entry refused: too many attempts from this browser ip=%s", client_ip())
        return _enter_page(typed, _("Too many attempts. Wait a few minutes, then try again."), 429)
    code = user_codes.normalise(typed)
    found = state.pending(code)
    if found is None:
        wrong = store().incr("device-wrong:" + bid, ENTRY_WINDOW)
        log.info("device code entry failed ip=%s wrong_attempts=%d", client_ip(), wrong)
        return _enter_page(typed, _("That code is not valid. It may have expired, been used already or been "
                                    "mistyped. Check the code on your device, or start again there."), 400)
    session[SESSION_KEY] = code
    if sessions.current() is None:
        # The sign-in page only returns to /account paths: a small hop there comes back to /device/confirm.
        return redirect(url_for("portal.device_continue"), code=303)
    return redirect(url_for("device.confirm"), code=303)


def _describe_scopes(scopes: list[str]) -> list[str]:
    return [str(oidc_claims.SCOPE_TEXT.get(s, s)) for s in scopes if purposes.get(s) is None]


@bp.route("/device/confirm", methods=["GET", "POST"])
def confirm():
    current = sessions.current()
    if current is None:
        return redirect(url_for("portal.device_continue"), code=303)
    code = session.get(SESSION_KEY)
    found = state.pending(code)
    if found is None:
        return _invalid_page()
    h, record = found
    client = clients.read(record["client_id"])
    if client is None:
        return _invalid_page()
    scopes = record["scope"].split()
    asked = [purposes.get(s) for s in scopes if purposes.get(s) is not None]
    if request.method == "POST":
        if request.form.get("user_code") != code:
            return _invalid_page()  # a stale tab for another code: decide nothing
        user = current.user
        session.pop(SESSION_KEY, None)
        if request.form.get("decision") == "allow":
            optional = {p.id for p in asked if not p.required}
            declined = optional - set(request.form.getlist("purpose"))
            granted = [s for s in scopes if s not in declined]
            consent_service.grant(user, client, granted, channel="consent_page")
            if not state.decide(h, record, approved=True, user=user, session=current, scope=" ".join(granted)):
                return _invalid_page()
            audit.record(user, "device_approved", client_id=client.client_id, channel="consent_page")
            log.info("device request approved user=%s client=%s", user.sub, client.client_id)
            return render_template("device/done.html", client=client, approved=True)
        if not state.decide(h, record, approved=False):
            return _invalid_page()
        audit.record(user, "device_denied", client_id=client.client_id, channel="consent_page")
        log.info("device request denied user=%s client=%s", user.sub, client.client_id)
        return render_template("device/done.html", client=client, approved=False)
    gpc = purposes.gpc_requested(request.headers)
    return render_template("device/confirm.html", client=client, user=current.user, code=code,
                           shown_code=user_codes.display(code), items=_describe_scopes(scopes),
                           purposes=purposes.choices(asked, gpc), gpc=gpc, ip=record.get("ip"),
                           place=geo.place(record.get("ip")), requested_at=record["created_at"])


def init_app(app) -> None:
    from ..portal import devices  # noqa: F401  (adds /account/devices to the portal blueprint before it registers)

    app.register_blueprint(api)
    app.register_blueprint(bp)
