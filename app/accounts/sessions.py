"""Single sign-on sessions, stored server-side so they can be listed and ended.

The browser holds a random secret in an HttpOnly, SameSite=Lax cookie (Lax, not
Strict, or SSO would not work on the top-level navigation from an app); the
database holds its keyed hash. The session's ``id`` is the public ``sid``.
"""

from __future__ import annotations

import time

from flask import current_app, g, request

from .. import observability
from ..crypto import keyed_hash, random_token
from ..extensions import commit_keeping_loaded, db
from .models import LoginSession, User

COOKIE = "idp_session"


def current() -> LoginSession | None:
    """The live session of this browser, or None."""
    if "login_session" not in g:
        g.login_session = _load(request.cookies.get(COOKIE))
    return g.login_session


def _load(secret: str | None) -> LoginSession | None:
    if not secret or len(secret) > 128:
        return None
    row = db.session.execute(
        db.select(LoginSession).filter_by(secret_hash=keyed_hash(secret, "session"))
    ).scalar_one_or_none()
    if row is None or row.ended_at is not None or row.expires_at <= time.time():
        return None
    return row


def by_sid(sid: str) -> LoginSession | None:
    row = db.session.get(LoginSession, sid) if sid else None
    return row if row is not None and row.ended_at is None else None


def start(user: User, amr: list[str], acr: str | None) -> LoginSession:
    """Record a fresh authentication. Re-authentication of the same customer keeps the sid."""
    observability.signed_in(amr)
    now = int(time.time())
    existing = current()
    if existing is not None and existing.user_id == user.id:
        # Strictly later auth_time after prompt=login / max_age (OIDC conformance).
        existing.auth_time = max(now, existing.auth_time + 1)
        existing.amr, existing.acr, existing.last_seen_at = amr, acr, now
        commit_keeping_loaded()
        return existing
    if existing is not None:
        end(existing)
    secret = random_token(32)
    row = LoginSession(
        id=random_token(24),
        secret_hash=keyed_hash(secret, "session"),
        user_id=user.id,
        auth_time=now,
        amr=amr,
        acr=acr,
        created_at=now,
        last_seen_at=now,
        expires_at=now + current_app.config["IDP_SESSION_TTL"],
        ip=request.remote_addr,
        user_agent=(request.user_agent.string or "")[:512],
    )
    db.session.add(row)
    commit_keeping_loaded()
    g.login_session = row
    g.set_session_cookie = secret
    return row


def end(row: LoginSession | None) -> None:
    """End a session (and forget it in this browser if it is this browser's)."""
    if row is not None and row.ended_at is None:
        row.ended_at = int(time.time())
        db.session.commit()
        _announce_end(row)
    if row is None or g.get("login_session") is row:
        g.login_session = None
        g.clear_session_cookie = True


def _announce_end(row: LoginSession) -> None:
    """After the commit: tell subscribers (back-channel logout) which apps took part in this session."""
    from ..events import session_ended
    from ..oauth2.models import Token

    client_ids = list(db.session.execute(
        db.select(Token.client_id).where(Token.sid == row.id).distinct()).scalars())
    session_ended.send(None, user_id=row.user_id, sub=row.user.sub, sid=row.id, client_ids=client_ids)


def apply_cookie(response):
    """after_request: write or clear the session cookie decided during the request."""
    secure = current_app.config["IDP_COOKIE_SECURE"]
    if g.get("set_session_cookie"):
        response.set_cookie(COOKIE, g.set_session_cookie, max_age=current_app.config["IDP_SESSION_TTL"],
                            httponly=True, secure=secure, samesite="Lax", path="/")
    elif g.get("clear_session_cookie"):
        response.delete_cookie(COOKIE, path="/", httponly=True, secure=secure, samesite="Lax")
    return response
