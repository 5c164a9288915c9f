"""The audit log: security and privacy events per customer (sign-ins, changes, exports, deletion)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from flask import has_request_context, request
from sqlalchemy.orm import Mapped, mapped_column

from .crypto import keyed_hash
from .extensions import db


class AuditEvent(db.Model):
    """One event. ``user_id`` is cleared when the account is erased; ``subject_hash`` remains as the tombstone."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"), index=True)
    subject_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    type: Mapped[str] = mapped_column(sa.String(64))
    data: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(sa.String(64))
    occurred_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))


def subject_hash(sub: str) -> str:
    return keyed_hash(sub, "subject")


def record(user, type_: str, commit: bool = True, **data) -> AuditEvent:
    """Append an event for ``user`` (never secrets: callers pass names and ids, not values)."""
    event = AuditEvent(user_id=user.id, subject_hash=subject_hash(user.sub), type=type_, data=data,
                       ip=request.remote_addr if has_request_context() else None, occurred_at=int(time.time()))
    db.session.add(event)
    if commit:
        db.session.commit()
    return event
