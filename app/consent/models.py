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
