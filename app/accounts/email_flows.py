"""Single-use, expiring email links: verify an address, reset a password, change the address.

The pattern of NIST SP 800-63B §5.1.1.2 / OWASP Forgot Password Cheat Sheet: the link carries a
256-bit random token; the store keeps only its keyed hash (per link kind, so a verification token
can never be replayed as a reset token), with a TTL; redeeming uses ``store().consume`` so exactly
one request wins, and the key is then deleted so the link shows as used. Links are built from
``IDP_ISSUER``, never from the ``Host`` header (a forged Host must not redirect the secret).

Pages first show the link's purpose with a button (GET never consumes): mail scanners that prefetch
links must not burn them.
"""

from __future__ import annotations

import logging
import time

from flask import current_app, has_request_context, render_template, request, url_for
from sqlalchemy.exc import IntegrityError
from flask_babel import gettext as _

from .. import audit, mail
from ..crypto import keyed_hash, random_token
from ..extensions import db
from ..store import store
from . import passwords, service, sessions
from .models import LoginSession, User

log = logging.getLogger(__name__)
VERIFY, RESET, CHANGE = "verify", "reset", "change"
RESET_TTL = 3600


class LinkError(ValueError):
    """A customer-facing problem with a submitted email change; str() is the English msgid."""


# -- links --------------------------------------------------------------------------------------------------------


def _key(kind: str, token: str) -> str:
    return f"email-link:{kind}:{keyed_hash(token, 'email-link:' + kind)}"


def _issue(kind: str, ttl: int, **data) -> str:
    token = random_token(32)
    store().put(_key(kind, token), {"kind": kind, "issued_at": int(time.time()), **data}, ttl)
    return token


def _plausible(token: str | None) -> bool:
    return bool(token) and len(token) <= 128


def peek(kind: str, token: str | None) -> dict | None:
    """The link's data while it is valid and unused (never consumes)."""
    return store().get(_key(kind, token)) if _plausible(token) else None


def _redeem(kind: str, token: str | None) -> dict | None:
    """Consume the link: its data for the first use only, None when expired, used or unknown."""
    if not _plausible(token):
        return None
    key = _key(kind, token)
    value, first_use = store().consume(key)
    if value is None or not first_use:
        return None
    store().delete(key)  # peek() now says "used" as well
    return value


def link(endpoint: str, token: str) -> str:
    """An absolute link under the issuer (the path without any script root, which the issuer already holds)."""
    path = url_for(endpoint, token=token)
    root = request.script_root if has_request_context() else ""
    if root and path.startswith(root):
        path = path[len(root):]
    return current_app.config["IDP_ISSUER"] + path


def _mail(to: str, template: str, subject: str, **context) -> None:
    context.setdefault("brand", current_app.config["IDP_CONTROLLER_NAME"])
    text = render_template(f"email/{template}.txt", **context)
    html = render_template(f"email/{template}.html", **context)
    mail.send(to, subject, text, html)


def _password_stamp(user: User) -> str:
    """Changes whenever the password does, so older reset links die with it."""
    return keyed_hash(user.password_hash or "", "reset-stamp")[:32]


# -- (a) verification after sign-up -------------------------------------------------------------------------------


def send_verification(user: User) -> None:
    """Email a verification link to the account's address. Raises mail.MailError."""
    ttl = current_app.config["IDP_EMAIL_LINK_TTL"]
    token = _issue(VERIFY, ttl, user_id=user.id, email=user.email)
    _mail(user.email, "verify", _("Confirm your email address"), link=link("accounts.verify_email", token),
          hours=max(1, ttl // 3600))
    log.info("verification email sent user=%s", user.sub)


def verify_target(token: str | None) -> User | None:
    """The customer a valid verification link is for (the address must still be theirs)."""
    data = peek(VERIFY, token)
    user = db.session.get(User, data["user_id"]) if data else None
    return user if user is not None and user.email == data["email"] else None


def verify_email(token: str | None) -> User | None:
    data = _redeem(VERIFY, token)
    user = db.session.get(User, data["user_id"]) if data else None
    if user is None or user.email != data["email"]:
        return None
    if not user.email_verified:
        user.email_verified = True
        audit.record(user, "email_verified", commit=False)
        db.session.commit()
    return user


# -- (b) password reset -------------------------------------------------------------------------------------------


def start_reset(email: str) -> None:
    """Send a reset link if an account has this address; the caller answers the same either way.

    Both paths look the address up, make and hash a token and render the message; only the hand-over
    to the mail server differs. Mail failures are logged, never shown (that would tell who has an account).
    """
    user = service.find_by_email(email) if service.valid_email(service.normalise_email(email)) else None
    token = random_token(32)
    _key(RESET, token)
    if user is None:
        render_template("email/reset.txt", link="", brand="", minutes=60)
        log.info("password reset requested for an unknown address")
        return
    token = _issue(RESET, RESET_TTL, user_id=user.id, stamp=_password_stamp(user))
    try:
        _mail(user.email, "reset", _("Reset your password"), link=link("accounts.reset_password", token),
              minutes=RESET_TTL // 60)
    except mail.MailError:
        return  # already logged by mail.send
    log.info("password reset email sent user=%s", user.sub)


def reset_target(token: str | None) -> User | None:
    data = peek(RESET, token)
    user = db.session.get(User, data["user_id"]) if data else None
    return user if user is not None and data["stamp"] == _password_stamp(user) else None


def reset_password(token: str | None, new_password: str) -> User | None:
    """Set the new password and end every other session of the customer; None if the link is no good."""
    data = _redeem(RESET, token)
    user = db.session.get(User, data["user_id"]) if data else None
    if user is None or data["stamp"] != _password_stamp(user):
        return None
    user.password_hash = passwords.hash_password(new_password)
    audit.record(user, "password_reset", commit=False)
    db.session.commit()
    ended = end_other_sessions(user)
    log.info("password reset user=%s sessions_ended=%d", user.sub, ended)
    return user


def end_other_sessions(user: User) -> int:
    """End the customer's live sessions except this browser's (someone else may hold the old password)."""
    current = sessions.current()
    rows = db.session.execute(
        db.select(LoginSession).filter(LoginSession.user_id == user.id, LoginSession.ended_at.is_(None))
    ).scalars().all()
    count = 0
    for row in rows:
        if current is not None and row.id == current.id:
            continue
        sessions.end(row)
        count += 1
    return count


# -- (c) change of address ----------------------------------------------------------------------------------------


def start_email_change(user: User, new_email: str) -> None:
    """Send a confirmation link to the NEW address; the account keeps the old one until it is clicked.

    A taken address gets no link but the same answer, so the form does not reveal who has an account
    (the confirmation refuses it as well, in case it was taken in between). Raises LinkError, mail.MailError.
    """
    new_email = service.normalise_email(new_email)
    if not service.valid_email(new_email):
        raise LinkError(service.N_("Enter a valid email address."))
    if new_email == user.email:
        raise LinkError(service.N_("This is already your email address."))
    if service.find_by_email(new_email) is not None:
        log.info("email change to a taken address not sent user=%s", user.sub)
        return
    ttl = current_app.config["IDP_EMAIL_LINK_TTL"]
    token = _issue(CHANGE, ttl, user_id=user.id, old_email=user.email, new_email=new_email)
    _mail(new_email, "change_email", _("Confirm your new email address"),
          link=link("portal.email_confirm", token), hours=max(1, ttl // 3600))
    audit.record(user, "email_change_requested")
    log.info("email change link sent user=%s", user.sub)


def change_target(token: str | None, user: User) -> dict | None:
    data = peek(CHANGE, token)
    return data if data is not None and data["user_id"] == user.id and data["old_email"] == user.email else None


def confirm_email_change(token: str | None, user: User) -> str:
    """Apply a change link of ``user``. Returns "ok", "invalid" (expired, used, someone else's) or "taken"."""
    if change_target(token, user) is None:
        return "invalid"  # not consumed: the rightful owner may still use it
    data = _redeem(CHANGE, token)
    if data is None or data["user_id"] != user.id or data["old_email"] != user.email:
        return "invalid"
    new_email, old_email = data["new_email"], user.email
    if service.find_by_email(new_email) is not None:
        log.info("email change refused: address taken meanwhile user=%s", user.sub)
        return "taken"
    user.email, user.email_verified = new_email, True
    audit.record(user, "email_changed", commit=False)
    try:
        db.session.commit()
    except IntegrityError:  # the unique constraint: a sign-up took the address at the same moment
        db.session.rollback()
        log.info("email change refused: address taken concurrently user=%s", user.sub)
        return "taken"
    try:
        _mail(old_email, "email_changed", _("Your email address was changed"), new_email=new_email)
    except mail.MailError:
        pass  # logged by mail.send; the change itself stands
    log.info("email changed user=%s", user.sub)
    return "ok"


def notify_password_changed(user: User) -> None:
    """Tell the customer their password changed (so they notice if it was not them)."""
    try:
        _mail(user.email, "password_changed", _("Your password was changed"))
    except mail.MailError:
        pass  # logged by mail.send
