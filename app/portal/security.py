"""Security: change the password (current password required; NIST SP 800-63B §5.1.1.2 minimum of 8).

Passkeys and linked accounts get their own sections on this page later.
"""

from __future__ import annotations

import logging

from flask import current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from .. import audit
from ..accounts import email_flows, passwords
from ..accounts.forms import ChangePasswordForm
from ..extensions import db, limiter
from . import bp, login_required

log = logging.getLogger(__name__)


def _limit():
    # The current-password check is a password guess like a sign-in: the same limit.
    return current_app.config["IDP_RATELIMIT_SIGNIN"]


@bp.route("/security", methods=["GET", "POST"])
@limiter.limit(_limit, methods=["POST"])
@login_required
def security():
    form = ChangePasswordForm()
    errors: list[str] = []
    if request.method == "POST":
        if form.validate_on_submit():
            if passwords.verify(g.user.password_hash, form.current_password.data):
                g.user.password_hash = passwords.hash_password(form.new_password.data)
                audit.record(g.user, "password_changed", commit=False)
                db.session.commit()
                log.info("password changed user=%s", g.user.sub)
                email_flows.notify_password_changed(g.user)
                flash(_("Your password was changed."))
                return redirect(url_for("portal.security"), code=303)
            log.info("password change refused (wrong current password) user=%s", g.user.sub)
            form.current_password.errors = [_("Your current password is not correct.")]
        errors = [e for f in (form.current_password, form.new_password, form.confirm) for e in f.errors]
        if not errors:
            errors = [_("Fill in every field.")]
    return render_template("portal/security.html", form=form, errors=errors), 400 if errors else 200
