"""Passkeys of a customer: store, find, rename, delete, and what a passkey sign-in tells apps.

What apps learn (``amr`` per RFC 8176, ``acr`` per OpenID EAP ACR Values 1.0)
after a passkey sign-in, which always has user verification:

* ``amr``: ``hwk`` for a device-bound passkey (not backup eligible: the key
  cannot leave the authenticator hardware), ``swk`` for a synced one (backup
  eligible: the key is copied by a passkey provider, so we cannot claim
  hardware protection); ``user`` because the authenticator tested the user's
  presence; ``mfa`` because user verification (PIN or biometric on the device)
  is a second factor on top of possession of the key. RFC 8176's ``pin``/``fpt``/
  ``face`` are not used: WebAuthn does not say which method the device used.
* ``acr``: ``phrh`` (phishing-resistant, hardware-protected) for a device-bound
  passkey, ``phr`` (phishing-resistant) for a synced one. Password sign-ins keep
  ``acr`` ``1``.
"""

from __future__ import annotations

import time

from ..accounts.methods import sign_in_methods
from .. import audit
from ..accounts.models import User
from ..extensions import db
from .ceremony import N_, NewCredential, PasskeyError, default_name
from .models import PasskeyCredential

MAX_NAME = 64


def amr_acr(cred: PasskeyCredential) -> tuple[list[str], str]:
    device_bound = not cred.backup_eligible
    return ["hwk" if device_bound else "swk", "user", "mfa"], ("phrh" if device_bound else "phr")


def user_handle(user: User) -> bytes:
    """The WebAuthn user.id: the random public ``sub`` (no email, nothing personal, stable for the account)."""
    return user.sub.encode()


def for_user(user: User) -> list[PasskeyCredential]:
    return list(db.session.execute(
        db.select(PasskeyCredential).filter_by(user_id=user.id).order_by(PasskeyCredential.created_at,
                                                                          PasskeyCredential.id)
    ).scalars())


def find(credential_id: str) -> PasskeyCredential | None:
    return db.session.execute(
        db.select(PasskeyCredential).filter_by(credential_id=credential_id)
    ).scalar_one_or_none()


def owned(user: User, passkey_id: int) -> PasskeyCredential | None:
    row = db.session.get(PasskeyCredential, passkey_id)
    return row if row is not None and row.user_id == user.id else None


def add(user: User, new: NewCredential, *, commit: bool = True) -> PasskeyCredential:
    if find(new.credential_id) is not None:
        raise PasskeyError("already_registered", N_("This passkey is already registered."))
    row = PasskeyCredential(
        user_id=user.id, credential_id=new.credential_id, public_key=new.public_key, sign_count=new.sign_count,
        transports=new.transports, aaguid=new.aaguid, backup_eligible=new.backup_eligible,
        backup_state=new.backup_state, name=default_name(new.aaguid), created_at=int(time.time()),
    )
    db.session.add(row)
    db.session.flush()
    audit.record(user, "passkey_added", commit=False, passkey=row.id, synced=new.backup_eligible)
    if commit:
        db.session.commit()
    return row


def record_use(row: PasskeyCredential, sign_count: int, backup_state: bool) -> None:
    row.sign_count, row.backup_state, row.last_used_at = sign_count, backup_state, int(time.time())
    db.session.commit()


def row_user(row: PasskeyCredential) -> User:
    return db.session.get(User, row.user_id)


def rename(row: PasskeyCredential, name: str) -> None:
    clean = " ".join((name or "").split())[:MAX_NAME]
    if not clean:
        raise PasskeyError("invalid_name", N_("Give the passkey a name."))
    row.name = clean
    audit.record(row_user(row), "passkey_renamed", commit=False, passkey=row.id)
    db.session.commit()


def delete(user: User, row: PasskeyCredential) -> None:
    """Refuse to remove the last way into the account (password, passkeys and linked accounts counted)."""
    if sign_in_methods(user) <= 1:
        raise PasskeyError("last_sign_in_method", N_(
            "This is the only way to sign in to your account. Add another passkey or set a password first."))
    audit.record(user, "passkey_removed", commit=False, passkey=row.id)
    db.session.delete(row)
    db.session.commit()
