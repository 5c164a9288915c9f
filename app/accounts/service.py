"""Customer accounts: create, find, authenticate by password."""

from __future__ import annotations

from ..extensions import db
from . import passwords
from .models import User


def N_(message: str) -> str:
    """Mark a message for extraction (pybabel's default keywords include N_) without translating it here.

    AccountError is raised from the CLI too, where there is no request to pick a language from, so the
    exception keeps the English msgid: str(exc) is always plain English, and the web pages translate it
    where they show it (accounts.views: ``_(str(exc))``).
    """
    return message


class AccountError(ValueError):
    """A customer-facing problem with the submitted account data; str() is the English msgid."""


def normalise_email(email: str) -> str:
    return (email or "").strip().lower()


def valid_email(email: str) -> bool:
    local, _, domain = email.partition("@")
    return bool(local) and "." in domain and len(email) <= 320 and " " not in email


def find_by_email(email: str) -> User | None:
    return db.session.execute(db.select(User).filter_by(email=normalise_email(email))).scalar_one_or_none()


def create_user(email: str, password: str | None, name: str | None = None, email_verified: bool = False) -> User:
    """Create a customer; raises AccountError for bad input or a taken email."""
    email = normalise_email(email)
    if not valid_email(email):
        raise AccountError(N_("Enter a valid email address."))
    if password is not None and not (passwords.MIN_LENGTH <= len(password) <= passwords.MAX_LENGTH):
        raise AccountError(N_("Use a password of at least 8 characters."))
    if find_by_email(email):
        raise AccountError(N_("An account with this email already exists. Sign in instead."))
    user = User(
        email=email,
        email_verified=email_verified,
        password_hash=passwords.hash_password(password) if password else None,
        name=(name or "").strip()[:255] or None,
    )
    db.session.add(user)
    db.session.commit()
    return user


def authenticate(email: str, password: str) -> User | None:
    """The customer for these credentials, or None; the same work either way. Rehashes on parameter change."""
    user = find_by_email(email) if valid_email(normalise_email(email)) else None
    ok = passwords.verify(user.password_hash if user else None, password or "")
    if not (ok and user):
        return None
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
        db.session.commit()
    return user
