"""The ways a customer can sign in: one rule for "never remove the last one"."""

from __future__ import annotations

from ..extensions import db


def sign_in_methods(user) -> int:
    """How many ways into the account: a password, each passkey, each linked upstream identity."""
    from ..federation.models import FederatedIdentity
    from ..passkeys.models import PasskeyCredential

    passkeys = db.session.execute(
        db.select(db.func.count()).select_from(PasskeyCredential).filter_by(user_id=user.id)).scalar_one()
    identities = db.session.execute(
        db.select(db.func.count()).select_from(FederatedIdentity).filter_by(user_id=user.id)).scalar_one()
    return (1 if user.password_hash else 0) + passkeys + identities
