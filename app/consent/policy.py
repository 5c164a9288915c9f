"""What each customer has allowed each app: what is missing, what to record.

Items are OIDC scopes, or ``claim:<name>`` for a claim an app asked for one by
one (the ``claims`` parameter). ``openid`` needs no consent of its own: it only
names the sign-in. Trusted (first-party) apps are allowed everything they ask
for without a consent page, unless the request says ``prompt=consent``.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..accounts.models import User
from ..extensions import db
from .models import ConsentGrant

IMPLICIT = {"openid"}


def grants_of(user_id, client_id):
    """A scalar subquery: the items ``user_id`` allows ``client_id``, space-separated (NULL when none).

    Items never contain a space (scope names, ``claim:<name>``). It lets a query that loads a customer, or a
    token with its customer, bring their consent in the same round trip (see ``split``).
    """
    return (sa.select(sa.func.aggregate_strings(ConsentGrant.item, " "))
            .where(ConsentGrant.user_id == user_id, ConsentGrant.client_id == client_id)
            .scalar_subquery())


def grants_held(user_id, client_id):
    """``grants_of``, reading the consent rows with a lock (FOR KEY SHARE; PostgreSQL) held until the statement's
    transaction ends. A withdrawal deletes those rows, so it waits for a statement that holds them, and a statement
    that comes while a withdrawal is under way waits for it and then finds the rows gone. For a statement that
    writes tokens on the strength of the consent it reads (a code exchange): either the withdrawal's revocation
    sees the new tokens, or the statement sees the withdrawal. Bound values only (a CTE is not correlated).
    """
    held = (sa.select(ConsentGrant.item)
            .where(ConsentGrant.user_id == user_id, ConsentGrant.client_id == client_id)
            .with_for_update(read=True, key_share=True).cte("held"))
    return sa.select(sa.func.aggregate_strings(held.c.item, " ")).scalar_subquery()


def split(items: str | None) -> set[str]:
    """The value of a ``grants_of`` column as a set of items."""
    return set(items.split()) if items else set()


# A customer (``b_user``) and the items they allow an app (``b_client``): one statement, built once. (On
# PostgreSQL a code exchange reads them in the statement that writes its token row: tokens.save_with_customer.)
_CUSTOMER_WITH_GRANTS = sa.select(User, grants_of(User.id, sa.bindparam("b_client"))).where(
    User.id == sa.bindparam("b_user"))


def customer_with_grants(user_id: int | None, client) -> tuple[User | None, set[str]]:
    """The customer and the items they allow ``client``, in one round trip; (None, set()) if they are gone."""
    if user_id is None:
        return None, set()
    found = db.session.execute(_CUSTOMER_WITH_GRANTS, {"b_user": user_id, "b_client": client.client_id}).first()
    return (None, set()) if found is None else (found[0], split(found[1]))


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


def allows_all(user, client, scopes: list[str], granted: set[str] | None = None) -> bool:
    """Whether the customer still allows ``client`` every one of ``scopes`` (a code or device code redeemed)."""
    return len(still_granted(user, client, scopes, granted)) == len(scopes)


def still_granted(user, client, scopes: list[str], granted: set[str] | None = None) -> list[str]:
    """The subset of ``scopes`` the customer still allows (used at refresh).

    ``granted``: the items already read with the customer (``customer_with_grants``), else they are read here.
    """
    if client.trusted:
        return list(scopes)
    have = (set(granted_items(user, client)) if granted is None else granted) | IMPLICIT
    return [s for s in scopes if s in have]
