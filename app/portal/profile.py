"""Profile: the customer edits their OpenID Connect standard claims (Core §5.1) and changes their email.

Empty fields are stored as NULL, so userinfo omits them rather than returning "" (Core §5.3.2).
A new email address takes effect only after the link sent to it is used (email_flows).
"""

from __future__ import annotations

import logging

from flask import current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from .. import audit, mail
from ..accounts import email_flows, service
from ..accounts.forms import ChangeEmailForm, ConfirmLinkForm, ProfileForm
from ..extensions import db, limiter
from . import bp, login_required

log = logging.getLogger(__name__)


def _mail_limit():
    """Each of these sends an email: held to the registration rate so a session cannot flood a mailbox."""
    return current_app.config["IDP_RATELIMIT_REGISTER"]


def _profile_form(user) -> ProfileForm:
    form = ProfileForm(formdata=None)
    for name in ProfileForm.PROFILE_FIELDS:
        getattr(form, name).data = getattr(user, name)
    for name in ProfileForm.ADDRESS_FIELDS:
        getattr(form, name).data = (user.address or {}).get(name)
    return form


def render_index(form: ProfileForm | None = None, email_form: ChangeEmailForm | None = None, status: int = 200):
    """The account home with the profile and email forms (portal.index uses it too)."""
    return render_template("portal/index.html", user=g.user, form=form or _profile_form(g.user),
                           email_form=email_form or ChangeEmailForm(formdata=None),
                           verify_form=ConfirmLinkForm(formdata=None)), status


@bp.post("/profile")
@login_required
def profile_save():
    form = ProfileForm()
    if not form.validate_on_submit():
        return render_index(form=form, status=400)
    user = g.user
    changed = []
    for name in ProfileForm.PROFILE_FIELDS:
        value = getattr(form, name).data
        if getattr(user, name) != value:
            setattr(user, name, value)
            changed.append(name)
    if "phone_number" in changed:
        user.phone_number_verified = False  # a new number has not been proven
    address = {k: getattr(form, k).data for k in ProfileForm.ADDRESS_FIELDS if getattr(form, k).data is not None}
    if (user.address or None) != (address or None):
        user.address = address or None
        changed.append("address")
    if changed:
        audit.record(user, "profile_updated", commit=False, fields=changed)  # names only, never values
        db.session.commit()
    flash(_("Your profile is saved."))
    return redirect(url_for("portal.index"), code=303)


@bp.post("/email")
@limiter.limit(_mail_limit)
@login_required
def email_change():
    form = ChangeEmailForm()
    if not form.validate_on_submit():
        form.new_email.errors = [_("Enter a valid email address.")]
        return render_index(email_form=form, status=400)
    try:
        email_flows.start_email_change(g.user, form.new_email.data)
    except email_flows.LinkError as exc:
        form.new_email.errors = [_(str(exc))]
        return render_index(email_form=form, status=400)
    except mail.MailError:
        form.new_email.errors = [_("We could not send the email just now. Please try again later.")]
        return render_index(email_form=form, status=503)
    flash(_("We sent a link to %(email)s. Your email address changes when you open it; until then, keep using "
            "%(old)s.", email=service.normalise_email(form.new_email.data), old=g.user.email))
    return redirect(url_for("portal.index"), code=303)


@bp.route("/email/confirm", methods=["GET", "POST"])
@login_required
def email_confirm():
    """The link sent to the new address. Signing in first means a mistyped address cannot take the account."""
    form = ConfirmLinkForm()
    token = request.values.get("token")
    invalid = render_template("accounts/message.html", title=_("This link cannot be used"),
                              message=_("It has expired, was already used, or belongs to another account. "
                                        "Ask for a new one from your account page."),
                              link=(url_for("portal.index"), _("Go to your account")))
    if request.method == "GET":
        data = email_flows.change_target(token, g.user)
        if data is None:
            return invalid, 400
        form.token.data = token
        return render_template("accounts/confirm_link.html", form=form, action=url_for("portal.email_confirm"),
                               title=_("Confirm your new email address"),
                               message=_("Use %(email)s for your account from now on?", email=data["new_email"]),
                               button=_("Use this email address"))
    if not form.validate_on_submit():
        return invalid, 400
    outcome = email_flows.confirm_email_change(form.token.data, g.user)
    if outcome == "taken":
        flash(_("That email address now belongs to another account, so your address was not changed."))
        return redirect(url_for("portal.index"), code=303)
    if outcome != "ok":
        return invalid, 400
    flash(_("Your email address is now %(email)s.", email=g.user.email))
    return redirect(url_for("portal.index"), code=303)


@bp.post("/email/verify")
@limiter.limit(_mail_limit)
@login_required
def resend_verification():
    form = ConfirmLinkForm()
    if not form.validate_on_submit():
        return redirect(url_for("portal.index"), code=303)
    if g.user.email_verified:
        flash(_("Your email address is already confirmed."))
        return redirect(url_for("portal.index"), code=303)
    try:
        email_flows.send_verification(g.user)
    except mail.MailError:
        flash(_("We could not send the email just now. Please try again later."))
    else:
        flash(_("We sent a new link to %(email)s.", email=g.user.email))
    return redirect(url_for("portal.index"), code=303)
