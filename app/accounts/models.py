"""Customers and their sign-in sessions."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


def _now() -> datetime:
    return datetime.now(timezone.utc)


class User(db.Model):
    """A customer. ``sub`` is the stable, public subject identifier given to apps."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    sub: Mapped[str] = mapped_column(sa.String(64), unique=True, default=lambda: str(uuid.uuid4()))
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)
    email_verified: Mapped[bool] = mapped_column(default=False)
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    name: Mapped[str | None] = mapped_column(sa.String(255))
    given_name: Mapped[str | None] = mapped_column(sa.String(255))
    family_name: Mapped[str | None] = mapped_column(sa.String(255))
    middle_name: Mapped[str | None] = mapped_column(sa.String(255))
    nickname: Mapped[str | None] = mapped_column(sa.String(255))
    preferred_username: Mapped[str | None] = mapped_column(sa.String(255))
    profile: Mapped[str | None] = mapped_column(sa.String(2048))
    picture: Mapped[str | None] = mapped_column(sa.String(2048))
    website: Mapped[str | None] = mapped_column(sa.String(2048))
    gender: Mapped[str | None] = mapped_column(sa.String(64))
    birthdate: Mapped[str | None] = mapped_column(sa.String(10))
    zoneinfo: Mapped[str | None] = mapped_column(sa.String(64))
    locale: Mapped[str | None] = mapped_column(sa.String(35))
    phone_number: Mapped[str | None] = mapped_column(sa.String(64))
    phone_number_verified: Mapped[bool] = mapped_column(default=False)
    address: Mapped[dict | None] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now, onupdate=_now)


class LoginSession(db.Model):
    """A single sign-on session. ``id`` is the public ``sid``; the browser holds a secret whose hash is stored."""

    __tablename__ = "login_sessions"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    auth_time: Mapped[int] = mapped_column(sa.BigInteger)
    amr: Mapped[list] = mapped_column(sa.JSON, default=list)
    acr: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))
    last_seen_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))
    expires_at: Mapped[int] = mapped_column(sa.BigInteger)
    ended_at: Mapped[int | None] = mapped_column(sa.BigInteger)
    ip: Mapped[str | None] = mapped_column(sa.String(64))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))

    user: Mapped[User] = db.relationship(lazy="joined")
