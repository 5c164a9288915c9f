"""Erasing a customer account (GDPR Art. 17, right to erasure).

``erase(user, channel)`` runs as one database transaction:

1. collect the apps the customer used (``client_id`` of their tokens and consent
   grants) and the ids (``sid``) of their live sessions;
2. revoke every token, end every session;
3. strip personal data from the rows that are kept as evidence: consent ledger
   rows (``consent_events``) lose ``user_id`` and the signed ``receipt`` (it names
   the ``sub``); audit rows (``audit_events``) lose ``user_id``, ``ip`` and every
   ``data`` entry except the non-personal keys in ``KEPT_AUDIT_KEYS``;
4. append the tombstone: an ``account_deleted`` audit row without ``user_id``;
5. delete the tokens, consent grants, sessions, every other row that references
   the customer (passkeys, linked upstream accounts: whatever table has a foreign
   key to ``users``) and the customer row — explicitly, although the foreign
   keys also cascade on PostgreSQL and on SQLite with ``PRAGMA foreign_keys=ON``;

then commits, and only then sends ``events.account_deleted`` (sub, client_ids,
sids) so that every app gets a back-channel logout for the gone account.

What remains afterwards, and nothing else:

* ``audit_events`` rows of this customer, and the tombstone, each with
  ``subject_hash`` (a keyed hash of the old ``sub``: it links the rows together
  but reveals nothing without the server's ``SECRET_KEY``), the event ``type``,
  its time and the kept ``data`` keys (app ids, channel, counts, methods);
* ``consent_events`` rows (the consent ledger) with ``subject_hash``, app id and
  app name, action (granted/withdrawn), items (scopes and purposes), channel
  and time.

No email, name, profile field, IP address, user agent, ``sub`` or receipt stays
in the database. (Copies an app already received are the app's to erase: the
``account_deleted`` signal tells it.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from ..audit import AuditEvent, subject_hash
from ..consent.models import ConsentEvent, ConsentGrant
from ..events import account_deleted
from ..extensions import db
from ..oauth2 import tokens
from ..oauth2.models import Token
from .models import LoginSession, User

#: Audit ``data`` keys that carry no personal data (ids of apps, how something happened, counts).
KEPT_AUDIT_KEYS = frozenset({"client_id", "client_ids", "channel", "method", "methods", "amr", "acr", "items",
                             "item", "reason", "scope", "count", "tokens_revoked", "sessions_ended"})
#: Tables ``erase`` handles by name; every other reference to ``users`` is swept by its foreign key.
_HANDLED = frozenset({"tokens", "consent_grants", "login_sessions", "consent_events", "audit_events"})


def _sweep_references(uid: int) -> None:
    """Every other table that points at the customer (passkeys, linked upstream accounts, …), as its FK says.

    Done explicitly rather than trusting the database, so that a SQLite connection
    without ``PRAGMA foreign_keys=ON`` cannot leave orphans full of personal data.
    """
    users = User.__table__
    for table in reversed(db.metadata.sorted_tables):
        if table is users or table.name in _HANDLED:
            continue
        for fk in table.foreign_keys:
            if fk.column.table is not users:
                continue
            if (fk.ondelete or "").upper() == "SET NULL":
                db.session.execute(sa.update(table).where(fk.parent == uid).values({fk.parent.name: None}))
            else:  # CASCADE (or none: the row cannot outlive the customer anyway)
                db.session.execute(sa.delete(table).where(fk.parent == uid))


@dataclass(frozen=True)
class Erasure:
    """What ``erase`` did (also what the ``account_deleted`` signal carried)."""

    sub: str
    client_ids: list[str]
    sids: list[str]
    tokens_revoked: int
    sessions_ended: int


def erase(user: User, channel: str) -> Erasure:
    """Delete ``user`` and every personal trace of them; see the module docstring for what remains."""
    now = int(time.time())
    uid, sub = user.id, user.sub
    s = db.session
    try:
        client_ids = sorted(
            set(s.execute(db.select(Token.client_id).where(Token.user_id == uid).distinct()).scalars())
            | set(s.execute(db.select(ConsentGrant.client_id).where(ConsentGrant.user_id == uid).distinct()).scalars())
        )
        sids = list(s.execute(db.select(LoginSession.id).where(
            LoginSession.user_id == uid, LoginSession.ended_at.is_(None), LoginSession.expires_at > now)).scalars())

        tokens_revoked = tokens.revoke_where(Token.user_id == uid)
        s.execute(db.update(LoginSession).where(LoginSession.user_id == uid, LoginSession.ended_at.is_(None))
                  .values(ended_at=now))

        s.execute(db.update(ConsentEvent).where(ConsentEvent.user_id == uid).values(user_id=None, receipt=None))
        for event in s.execute(db.select(AuditEvent).where(AuditEvent.user_id == uid)).scalars():
            event.user_id, event.ip = None, None
            event.data = {k: v for k, v in (event.data or {}).items() if k in KEPT_AUDIT_KEYS}
        s.add(AuditEvent(user_id=None, subject_hash=subject_hash(sub), type="account_deleted", ip=None,
                         occurred_at=now, data={"channel": channel, "client_ids": client_ids,
                                                "tokens_revoked": tokens_revoked, "sessions_ended": len(sids)}))

        s.execute(db.delete(Token).where(Token.user_id == uid))
        s.execute(db.delete(ConsentGrant).where(ConsentGrant.user_id == uid))
        s.execute(db.delete(LoginSession).where(LoginSession.user_id == uid))
        _sweep_references(uid)
        s.flush()
        s.execute(db.delete(User).where(User.id == uid))
        s.commit()
    except Exception:
        s.rollback()
        raise
    account_deleted.send(None, sub=sub, client_ids=client_ids, sids=sids)
    return Erasure(sub=sub, client_ids=client_ids, sids=sids, tokens_revoked=tokens_revoked,
                   sessions_ended=len(sids))
