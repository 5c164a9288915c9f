"""A durable outbox for outbound HTTP deliveries (back-channel logout tokens).

Rows are written in the same transaction as the change that causes them, so a
crash never loses a delivery; workers claim due rows with a lease, deliver,
and retry with exponential backoff.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db


class OutboxMessage(db.Model):
    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    target: Mapped[str] = mapped_column(sa.String(2048))
    payload: Mapped[str] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    locked_until: Mapped[int | None] = mapped_column(sa.BigInteger)
    delivered_at: Mapped[int | None] = mapped_column(sa.BigInteger)
    failed_at: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_error: Mapped[str | None] = mapped_column(sa.String(512))
    created_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))
