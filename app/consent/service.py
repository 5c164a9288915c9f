"""Granting and withdrawing consent, with the ledger, receipts and propagation to every app.

A withdrawal is one transaction: the consent rows go, the affected tokens are
revoked and the ledger event (with its receipt) is appended; the ``grant_ended``
signal is sent only after the commit (its receivers write durable outbox rows).
"""

from __future__ import annotations

import time
import uuid

from .. import observability
from ..audit import subject_hash
from ..events import grant_ended
from ..extensions import db
from ..oauth2 import tokens
from ..oauth2.models import Client, Token
from . import receipts
from .models import ConsentEvent, ConsentGrant
from .policy import IMPLICIT, granted_items

CHANNELS = ("consent_page", "account_centre", "api", "admin", "first_party")


def _event(user, client, action: str, items: list[str], channel: str) -> ConsentEvent:
    assert channel in CHANNELS
    event = ConsentEvent(id=str(uuid.uuid4()), user_id=user.id, subject_hash=subject_hash(user.sub),
                         client_id=client.client_id, client_name=client.client_name, action=action,
                         items=list(items), channel=channel, occurred_at=int(time.time()))
    event.receipt = receipts.build(event, user.sub, list(items))
    db.session.add(event)
    return event


def grant(user, client, items: list[str], channel: str = "consent_page") -> ConsentEvent | None:
    """Record newly allowed items (a ledger event only when something changed)."""
    have = set(granted_items(user, client))
    new = [i for i in dict.fromkeys(items) if i not in IMPLICIT and i not in have]
    if not new:
        return None
    now = int(time.time())
    for item in new:
        db.session.add(ConsentGrant(user_id=user.id, client_id=client.client_id, item=item, granted_at=now))
    event = _event(user, client, "granted", new, channel)
    db.session.commit()
    observability.count_consent("granted", channel)
    return event


def withdraw(user, client_id: str | None = None, item: str | None = None,
             channel: str = "account_centre") -> list[ConsentEvent]:
    """Withdraw ``item`` (or everything) from one app (or every app). Returns the ledger events.

    Everything from an app ends its grant: every token is revoked now and the
    next sign-in asks again. One item only narrows the grant: the app's next
    refresh (and userinfo call) no longer carries it.
    """
    query = db.select(ConsentGrant).filter_by(user_id=user.id)
    if client_id is not None:
        query = query.filter_by(client_id=client_id)
    if item is not None:
        query = query.filter_by(item=item)
    rows = db.session.execute(query).scalars().all()
    by_client: dict[str, list[str]] = {}
    for row in rows:
        by_client.setdefault(row.client_id, []).append(row.item)
        db.session.delete(row)
    ended = []
    events = []
    clients = {c.client_id: c for c in db.session.execute(
        db.select(Client).where(Client.client_id.in_(list(by_client) or [""]))).scalars()}
    for cid, items in by_client.items():
        client = clients.get(cid)
        if client is None:
            continue
        events.append(_event(user, client, "withdrawn", items, channel))
        if item is None:
            tokens.revoke_where(Token.user_id == user.id, Token.client_id == cid)
            ended.append(cid)
    db.session.commit()
    observability.count_consent("withdrawn", channel, len(events))
    if ended:
        grant_ended.send(None, user_id=user.id, sub=user.sub, client_ids=ended, channel=channel)
    return events


def connected_apps(user) -> list[dict]:
    """Every app the customer has allowed, with its items, when granted and last used."""
    rows = db.session.execute(db.select(ConsentGrant).filter_by(user_id=user.id)).scalars().all()
    apps: dict[str, dict] = {}
    for row in rows:
        entry = apps.setdefault(row.client_id, {"client_id": row.client_id, "items": {}, "granted_at": row.granted_at})
        entry["items"][row.item] = row.granted_at
        entry["granted_at"] = min(entry["granted_at"], row.granted_at)
    if not apps:
        return []
    clients = {c.client_id: c for c in db.session.execute(
        db.select(Client).where(Client.client_id.in_(list(apps)))).scalars()}
    last_used = dict(db.session.execute(
        db.select(Token.client_id, db.func.max(Token.issued_at)).where(
            Token.user_id == user.id, Token.client_id.in_(list(apps))).group_by(Token.client_id)).all())
    out = []
    for cid, entry in apps.items():
        client = clients.get(cid)
        if client is None:
            continue
        entry.update(client_name=client.client_name, logo_uri=client.meta.get("logo_uri"),
                     last_used_at=last_used.get(cid))
        out.append(entry)
    return sorted(out, key=lambda e: e["client_name"].lower())


def ledger(user) -> list[ConsentEvent]:
    return list(db.session.execute(
        db.select(ConsentEvent).filter_by(user_id=user.id).order_by(ConsentEvent.seq)
    ).scalars())
