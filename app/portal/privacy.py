"""Privacy: download my data (GDPR Art. 15/20) and delete my account (Art. 17).

Deleting needs proof that the person at the keyboard is the customer: the
current password in the same form, or for an account without a password a
sign-in within the last five minutes. The export builder lives in ``export``,
the erasure in ``accounts.erasure``; these views only check and compose.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from flask import Response, current_app, g, render_template, request, session, url_for
from flask_babel import gettext as _

from .. import audit
from ..accounts import erasure, passwords
from ..extensions import limiter
from . import bp, export, login_required, recently_authenticated

log = logging.getLogger(__name__)


def _page(error: str | None = None, status: int = 200):
    return render_template("portal/privacy.html", has_password=g.user.password_hash is not None,
                           recent=recently_authenticated(), error=error,
                           reauth_url=url_for("accounts.login", next=url_for("portal.privacy"))), status


@bp.get("/privacy")
@login_required
def privacy():
    return _page()


@bp.get("/privacy/export")
@login_required
def export_data():
    # Recorded first, so the export lists its own request among the audit events.
    audit.record(g.user, "data_exported", channel="account_centre")
    document = export.build(g.user)
    body = json.dumps(document, ensure_ascii=False, indent=2, sort_keys=False)
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    resp = Response(body, mimetype="application/json")
    resp.headers["Content-Disposition"] = f'attachment; filename="my-account-data-{day}.json"'
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


def _delete_limit():
    return current_app.config["IDP_RATELIMIT_SIGNIN"]


@bp.post("/privacy/delete")
@limiter.limit(_delete_limit)  # the password field must not become a guessing oracle
@login_required
def delete_account():
    user = g.user
    if user.password_hash is not None:
        if not passwords.verify(user.password_hash, request.form.get("password", "")[:passwords.MAX_LENGTH]):
            return _page(_("That password is not correct. Your account was not deleted."), 400)
    elif not recently_authenticated():
        return _page(_("For your security, sign in again, then delete your account within five minutes. "
                       "Your account was not deleted."), 400)
    result = erasure.erase(user, channel="account_centre")
    log.info("account deleted (tokens revoked=%d, sessions ended=%d)", result.tokens_revoked, result.sessions_ended)
    # Sign this browser out: the session row is gone with the account; forget the cookie and any state.
    g.login_session = None
    g.clear_session_cookie = True
    session.clear()
    return render_template("portal/goodbye.html", title=_("Your account was deleted"),
                           message=_("Your account and your personal data were deleted, and every app was "
                                     "signed out. Thank you for having been with us."), sign_in=False)
