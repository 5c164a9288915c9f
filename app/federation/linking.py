"""Account linking policy: the one place that decides which customer an upstream identity signs in as.

1. A known upstream identity (provider + subject) signs straight in as its customer.
2. A new identity whose email matches no account creates one (email unverified unless the
   provider is trusted for addresses and asserted ``email_verified``); without an email the
   customer is asked for one, which starts unverified.
3. A new identity whose email matches an existing account is linked automatically ONLY when the
   provider is trusted for addresses (``trust_email``; for Google also the hosted-domain rule),
   it asserted the address verified, AND our copy of the address is verified. Otherwise the customer
   must first prove they own that account (its password) — an upstream account with the same
   address is not proof (pre-account-takeover; OWASP, "Pre-hijacked accounts", Sudhodanan & Paverd 2022).
4. A signed-in customer may link another identity unless it already belongs to someone else.
5. Unlinking never removes the last way to sign in (password, passkeys, linked identities).

Every link and unlink is written to the audit log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from .. import audit
from ..accounts import service
from ..accounts.models import User
from ..accounts.service import N_
from ..accounts.methods import sign_in_methods
from ..extensions import db
from . import mapping
from .flow import Identity
from .models import FederatedIdentity

SIGN_IN, ASK_EMAIL, PROVE = "sign_in", "ask_email", "prove"


@dataclass
class Decision:
    action: str                 # SIGN_IN | ASK_EMAIL | PROVE
    user: User | None = None    # SIGN_IN: who; PROVE: the existing account to prove
    created: bool = False


class LinkError(Exception):
    """A link or unlink the policy refuses; str() is the English msgid shown (translated) to the customer."""


def find(provider: str, subject: str) -> FederatedIdentity | None:
    return db.session.execute(
        db.select(FederatedIdentity).filter_by(provider=provider, subject=subject)
    ).scalar_one_or_none()


def identities_of(user: User) -> list[FederatedIdentity]:
    return list(db.session.execute(
        db.select(FederatedIdentity).filter_by(user_id=user.id).order_by(FederatedIdentity.linked_at)
    ).scalars())


def decide(identity: Identity) -> Decision:
    """Rules 1–3 for a sign-in (not signed in yet)."""
    row = find(identity.provider, identity.subject)
    if row is not None:
        user = db.session.get(User, row.user_id)
        row.last_login_at = int(time.time())
        if identity.email:
            row.email = identity.email
        db.session.commit()
        return Decision(SIGN_IN, user)
    if not identity.email:
        return Decision(ASK_EMAIL)
    existing = service.find_by_email(identity.email)
    if existing is None:
        return Decision(SIGN_IN, create_account(identity, identity.email, verified=identity.email_trusted),
                        created=True)
    if identity.email_trusted and existing.email_verified:
        link(existing, identity, how="verified_email")
        return Decision(SIGN_IN, existing)
    return Decision(PROVE, existing)


def with_email(identity: Identity, email: str) -> Decision:
    """Rule 2 for an identity without an email: the address the customer typed (never trusted)."""
    email = service.normalise_email(email)
    existing = service.find_by_email(email)
    if existing is not None:
        return Decision(PROVE, existing)
    return Decision(SIGN_IN, create_account(identity, email, verified=False), created=True)


def create_account(identity: Identity, email: str, *, verified: bool) -> User:
    """A new customer from an upstream identity (no password); raises service.AccountError."""
    user = service.create_user(email, None, identity.profile.get("name"), email_verified=verified)
    mapping.apply(user, identity.profile)
    audit.record(user, "account_created", commit=False, provider=identity.provider, method="federation")
    db.session.commit()
    link(user, identity, how="new_account")
    return user


def prove_with_password(user: User, password: str) -> bool:
    """The customer proved they own ``user`` (the same constant-work check as the sign-in page)."""
    found = service.authenticate(user.email, password or "")
    return found is not None and found.id == user.id


def link(user: User, identity: Identity, *, how: str) -> FederatedIdentity:
    """Rule 4: attach the identity to ``user``; raises LinkError if it belongs to another customer."""
    row = find(identity.provider, identity.subject)
    if row is not None:
        if row.user_id != user.id:
            raise LinkError(N_("This account is already linked to another customer."))
        return row
    now = int(time.time())
    row = FederatedIdentity(user_id=user.id, provider=identity.provider, subject=identity.subject,
                            email=identity.email, linked_at=now, last_login_at=now)
    db.session.add(row)
    if mapping.apply(user, identity.profile):
        audit.record(user, "profile_updated", commit=False, source=identity.provider)
    audit.record(user, "identity_linked", commit=False, provider=identity.provider, how=how)
    try:
        db.session.commit()
    except IntegrityError as exc:  # linked concurrently by another request
        db.session.rollback()
        raise LinkError(N_("This account is already linked to another customer.")) from exc
    return row


def unlink(user: User, identity_id: int) -> FederatedIdentity:
    """Rule 5; raises LinkError."""
    row = db.session.get(FederatedIdentity, identity_id)
    if row is None or row.user_id != user.id:
        raise LinkError(N_("That sign-in method was not found."))
    if sign_in_methods(user) <= 1:
        raise LinkError(N_("This is your only way to sign in. Add a password or another sign-in method first."))
    provider = row.provider
    db.session.delete(row)
    audit.record(user, "identity_unlinked", commit=False, provider=provider)
    db.session.commit()
    return row
