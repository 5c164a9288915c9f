"""What each customer has allowed each app: what is missing, what to record.

Items are OIDC scopes, or ``claim:<name>`` for a claim an app asked for one by
one (the ``claims`` parameter). ``openid`` needs no consent of its own: it only
names the sign-in. Trusted (first-party) apps are allowed everything they ask
for without a consent page, unless the request says ``prompt=consent``.
"""

from __future__ import annotations

from ..extensions import db
from .models import ConsentGrant

IMPLICIT = {"openid"}


def granted_items(user, client) -> list[str]:
    rows = db.session.execute(
        db.select(ConsentGrant.item).filter_by(user_id=user.id, client_id=client.client_id)
    ).scalars()
    return list(rows)


def missing(user, client, items: list[str]) -> list[str]:
    """The requested items this customer has not yet allowed this app."""
    wanted = [i for i in items if i not in IMPLICIT]
    if client.trusted or not wanted:
        return []
    have = set(granted_items(user, client))
    return [i for i in wanted if i not in have]


def record(user, client, items: list[str]) -> None:
    have = set(granted_items(user, client))
    for item in items:
        if item not in IMPLICIT and item not in have:
            db.session.add(ConsentGrant(user_id=user.id, client_id=client.client_id, item=item))
    db.session.commit()


def purposes_claim(user_id: int, client, scope: str) -> dict | None:
    """The ``consented_purposes`` claim: each brand purpose in ``scope`` still granted, and since when."""
    from .purposes import all_purposes

    wanted = [s for s in scope.split() if s in all_purposes()]
    if not wanted:
        return None
    rows = db.session.execute(
        db.select(ConsentGrant.item, ConsentGrant.granted_at).where(
            ConsentGrant.user_id == user_id, ConsentGrant.client_id == client.client_id,
            ConsentGrant.item.in_(wanted))).all()
    return {item: {"granted_at": at} for item, at in rows}


def still_granted(user, client, scopes: list[str]) -> list[str]:
    """The subset of ``scopes`` the customer still allows (used at refresh)."""
    if client.trusted:
        return list(scopes)
    have = set(granted_items(user, client)) | IMPLICIT
    return [s for s in scopes if s in have]
