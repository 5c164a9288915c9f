"""Upstream identity providers and the identities customers linked from them."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class UpstreamProvider(db.Model):
    """An upstream IdP configured by the operator (Google, Apple, Microsoft, GitHub, Facebook or any OIDC provider).

    The client secret is never stored in plain text when it can come from the
    environment: ``client_secret_env`` names the variable to read at run time.
    """

    __tablename__ = "upstream_providers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(32))  # oidc | google | apple | microsoft | github | facebook
    issuer: Mapped[str | None] = mapped_column(sa.String(2048))
    client_id: Mapped[str] = mapped_column(sa.String(255))
    client_secret: Mapped[str | None] = mapped_column(sa.Text)
    client_secret_env: Mapped[str | None] = mapped_column(sa.String(128))
    scope: Mapped[str | None] = mapped_column(sa.String(1024))
    trust_email: Mapped[bool] = mapped_column(default=False)
    settings: Mapped[dict] = mapped_column(sa.JSON, default=dict)  # preset overrides (API base URL, Apple key id …)
    created_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))


class FederatedIdentity(db.Model):
    """One upstream account linked to one customer."""

    __tablename__ = "federated_identities"
    __table_args__ = (sa.UniqueConstraint("provider", "subject", name="uq_federated_identities_provider_subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(sa.String(64))
    subject: Mapped[str] = mapped_column(sa.String(255))
    email: Mapped[str | None] = mapped_column(sa.String(320))
    linked_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))
    last_login_at: Mapped[int | None] = mapped_column(sa.BigInteger)
