"""Registered apps (RFC 7591 metadata) and issued tokens."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

import sqlalchemy as sa
from authlib.oauth2.rfc6749 import ClientMixin
from sqlalchemy.orm import Mapped, mapped_column

from ..crypto import keyed_hash, same
from ..extensions import db

CLIENT_ID = re.compile(r"^[\x20-\x7e]{1,64}$")  # RFC 6749 Appendix A.1 (VSCHAR); no NUL for PostgreSQL


def valid_client_id(value) -> bool:
    return isinstance(value, str) and bool(CLIENT_ID.match(value))


AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials", "urn:ietf:params:oauth:grant-type:device_code")


class Client(db.Model, ClientMixin):
    """A relying party. Metadata names follow RFC 7591 / OpenID Connect Dynamic Client Registration."""

    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    client_secret_hash: Mapped[str | None] = mapped_column(sa.String(64))
    token_endpoint_auth_method: Mapped[str] = mapped_column(sa.String(32))
    client_name: Mapped[str] = mapped_column(sa.String(255))
    trusted: Mapped[bool] = mapped_column(default=False)
    meta: Mapped[dict] = mapped_column("metadata", sa.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=lambda: datetime.now(timezone.utc)
    )

    # -- metadata accessors ------------------------------------------------
    @property
    def redirect_uris(self) -> list[str]:
        return self.meta.get("redirect_uris", [])

    @property
    def post_logout_redirect_uris(self) -> list[str]:
        return self.meta.get("post_logout_redirect_uris", [])

    @property
    def grant_types(self) -> list[str]:
        return self.meta.get("grant_types", ["authorization_code"])

    @property
    def scope(self) -> str:
        return self.meta.get("scope", "")

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"

    @property
    def id_token_alg(self) -> str:
        return self.meta.get("id_token_signed_response_alg", "RS256")

    def public_metadata(self) -> dict:
        """RFC 7591 client information (no secret material)."""
        return {
            "client_id": self.client_id,
            "client_name": self.client_name,
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "trusted": self.trusted,
            **self.meta,
        }

    # -- authlib ClientMixin -------------------------------------------------
    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        # Never fall back to a default: a request without redirect_uri is handled in authorize.py.
        return None

    def get_allowed_scope(self, scope):
        if not scope:
            return ""
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri):
        # Exact string comparison (OAuth 2.0 Security BCP §4.1.3).
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        if not self.client_secret_hash or not isinstance(client_secret, str):
            return False
        return same(keyed_hash(client_secret, "client-secret"), self.client_secret_hash)

    def check_endpoint_auth_method(self, method, endpoint):
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type):
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


class Token(db.Model):
    """One issuance: a JWT access token (``id`` is its ``jti``) and, optionally, a refresh token.

    ``family_id`` ties together every token that descends from one authorization
    (the code exchange and each refresh rotation), so code reuse and refresh
    token reuse can revoke all of them in one statement.
    """

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    client_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    grant_type: Mapped[str] = mapped_column(sa.String(64))
    scope: Mapped[str] = mapped_column(sa.Text, default="")  # the access token's
    # The refresh token's (the grant's) scope where a refresh narrowed the access token's (RFC 6749 §6); NULL: same.
    refresh_scope: Mapped[str | None] = mapped_column(sa.Text)
    claims: Mapped[dict | None] = mapped_column(sa.JSON)
    sid: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    auth_time: Mapped[int | None] = mapped_column(sa.BigInteger)
    amr: Mapped[list | None] = mapped_column(sa.JSON)
    acr: Mapped[str | None] = mapped_column(sa.String(64))
    issued_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))
    access_expires_at: Mapped[int] = mapped_column(sa.BigInteger)
    refresh_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    refresh_expires_at: Mapped[int | None] = mapped_column(sa.BigInteger)
    rotated_at: Mapped[int | None] = mapped_column(sa.BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(sa.BigInteger)

    # authlib TokenMixin parts used by the refresh grant
    def check_client(self, client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        """The refresh token's scope: what a refresh may ask for, and gets when it asks for nothing (Authlib's
        refresh grant calls this). Never the access token's: that is ``scope``, which may be narrower."""
        return self.scope if self.refresh_scope is None else self.refresh_scope

    # used by Authlib's introspection endpoint; ``kind`` is set by the endpoint's lookup
    def is_expired(self) -> bool:
        now = time.time()
        if getattr(self, "kind", "access_token") == "refresh_token":
            return now >= (self.refresh_expires_at or 0)
        return now >= self.access_expires_at

    def is_revoked(self) -> bool:
        if getattr(self, "kind", "access_token") == "refresh_token":
            return self.revoked_at is not None or self.rotated_at is not None
        return self.revoked_at is not None

    def access_active(self, now: int | None = None) -> bool:
        return self.revoked_at is None and (now or time.time()) < self.access_expires_at

    def refresh_active(self, now: int | None = None) -> bool:
        return (
            self.refresh_hash is not None
            and self.revoked_at is None
            and self.rotated_at is None
            and (now or time.time()) < (self.refresh_expires_at or 0)
        )
