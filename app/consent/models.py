"""What each customer allowed each app to use."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class ConsentGrant(db.Model):
    """One consented item (a scope, or ``claim:<name>`` for an individually requested claim)."""

    __tablename__ = "consent_grants"
    __table_args__ = (sa.UniqueConstraint("user_id", "client_id", "item", name="uq_consent_grants_user_client_item"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    item: Mapped[str] = mapped_column(sa.String(128))
    granted_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))


class ConsentEvent(db.Model):
    """The consent ledger: every grant, change and withdrawal, appended and never rewritten.

    Erasing an account clears ``user_id`` and the receipt text (personal data);
    the row stays as the minimal tombstone: which app, what, when, from where.
    """

    __tablename__ = "consent_events"

    seq: Mapped[int] = mapped_column(primary_key=True)  # the ledger's order
    id: Mapped[str] = mapped_column(sa.String(36), unique=True)  # the record id named in the receipt
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"), index=True)
    subject_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    client_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    client_name: Mapped[str] = mapped_column(sa.String(255))
    action: Mapped[str] = mapped_column(sa.String(16))  # granted | withdrawn
    items: Mapped[list] = mapped_column(sa.JSON, default=list)
    channel: Mapped[str] = mapped_column(sa.String(32))  # consent_page | account_centre | api | admin | first_party
    occurred_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))
    receipt: Mapped[str | None] = mapped_column(sa.Text)
