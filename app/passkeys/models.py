"""Passkeys (WebAuthn discoverable credentials) registered by customers."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class PasskeyCredential(db.Model):
    __tablename__ = "passkey_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[str] = mapped_column(sa.String(1400), unique=True)  # base64url
    public_key: Mapped[bytes] = mapped_column(sa.LargeBinary)
    sign_count: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    transports: Mapped[list] = mapped_column(sa.JSON, default=list)
    aaguid: Mapped[str | None] = mapped_column(sa.String(36))
    backup_eligible: Mapped[bool] = mapped_column(default=False)
    backup_state: Mapped[bool] = mapped_column(default=False)
    name: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))
    last_used_at: Mapped[int | None] = mapped_column(sa.BigInteger)
