"""The customer's data export ("Download my data"): everything held about them, as one JSON document.

Implements the right of access and to data portability (GDPR Art. 15 and 20):
a structured, machine-readable copy. Times are ISO 8601 in UTC. Secrets are
never exported: no password hash, no session secret hash, no refresh token
hash, no token values (the tokens appear as a per-app summary).
"""

from __future__ import annotations

import time
from datetime import date, datetime, timezone

from flask import current_app

from ..accounts.models import LoginSession, User
from ..audit import AuditEvent
from ..consent import service as consent
from ..extensions import db
from ..oauth2.models import Client, Token
from .. import geo

FORMAT = "customer-data-export/1"
_SECRET_USER_COLUMNS = {"password_hash"}


def iso(value) -> str | None:
    """Epoch seconds or a datetime as ISO 8601 UTC (``2025-01-31T12:00:00Z``)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(int(value), tz=timezone.utc)
    if isinstance(value, datetime):
        if value.tzinfo is None:  # SQLite returns naive datetimes; they were stored in UTC
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _profile(user: User) -> dict:
    out = {}
    for column in User.__table__.columns:
        if column.key in _SECRET_USER_COLUMNS:
            continue
        value = getattr(user, column.key)
        out[column.key] = iso(value) if isinstance(value, (datetime, date)) else value
    out["has_password"] = user.password_hash is not None
    return out


def _consents(user: User) -> list[dict]:
    from .apps import describe

    return [{"client_id": app["client_id"], "app": app["client_name"], "granted_at": iso(app["granted_at"]),
             "last_used_at": iso(app["last_used_at"]),
             "items": [{"item": item, "description": str(describe(item)), "granted_at": iso(at)}
                       for item, at in sorted(app["items"].items())]}
            for app in consent.connected_apps(user)]


def _ledger(events) -> list[dict]:
    return [{"seq": e.seq, "record_id": e.id, "client_id": e.client_id, "app": e.client_name, "action": e.action,
             "items": list(e.items or []), "channel": e.channel, "occurred_at": iso(e.occurred_at)}
            for e in events]


def _sessions(user: User) -> list[dict]:
    from .sessions_page import describe_device

    now = time.time()
    rows = db.session.execute(
        db.select(LoginSession).filter_by(user_id=user.id).order_by(LoginSession.created_at)).scalars()
    return [{"sid": r.id, "device": describe_device(r.user_agent), "user_agent": r.user_agent, "ip": r.ip,
             "place": geo.place(r.ip), "signed_in_at": iso(r.created_at), "authenticated_at": iso(r.auth_time),
             "authentication_methods": list(r.amr or []), "last_seen_at": iso(r.last_seen_at),
             "expires_at": iso(r.expires_at), "ended_at": iso(r.ended_at),
             "active": r.ended_at is None and r.expires_at > now} for r in rows]


def _audit(user: User) -> list[dict]:
    rows = db.session.execute(
        db.select(AuditEvent).filter_by(user_id=user.id).order_by(AuditEvent.occurred_at, AuditEvent.id)).scalars()
    return [{"type": r.type, "occurred_at": iso(r.occurred_at), "ip": r.ip, "data": r.data or {}} for r in rows]


def _tokens(user: User) -> list[dict]:
    """Per app: how many issued tokens can still be used (access or refresh) and when the last one was issued."""
    now = int(time.time())
    per_app: dict[str, dict] = {}
    for row in db.session.execute(db.select(Token).filter_by(user_id=user.id)).scalars():
        entry = per_app.setdefault(row.client_id, {"client_id": row.client_id, "active_tokens": 0,
                                                    "issued_tokens": 0, "last_issued_at": 0})
        entry["issued_tokens"] += 1
        entry["last_issued_at"] = max(entry["last_issued_at"], row.issued_at)
        if row.access_active(now) or row.refresh_active(now):
            entry["active_tokens"] += 1
    names = dict(db.session.execute(
        db.select(Client.client_id, Client.client_name).where(Client.client_id.in_(list(per_app) or [""]))).all())
    return [{**e, "app": names.get(cid), "last_issued_at": iso(e["last_issued_at"])}
            for cid, e in sorted(per_app.items())]


def _passkeys(user: User) -> list[dict]:
    from ..passkeys.models import PasskeyCredential

    rows = db.session.execute(
        db.select(PasskeyCredential).filter_by(user_id=user.id).order_by(PasskeyCredential.created_at)).scalars()
    # The public key is not personal data worth exporting; the name and times are what the customer knows.
    return [{"name": r.name, "credential_id": r.credential_id, "authenticator": r.aaguid,
             "synced": bool(r.backup_state), "created_at": iso(r.created_at), "last_used_at": iso(r.last_used_at)}
            for r in rows]


def _linked_accounts(user: User) -> list[dict]:
    from ..federation.models import FederatedIdentity

    rows = db.session.execute(
        db.select(FederatedIdentity).filter_by(user_id=user.id).order_by(FederatedIdentity.linked_at)).scalars()
    return [{"provider": r.provider, "subject": r.subject, "email": r.email, "linked_at": iso(r.linked_at),
             "last_sign_in_at": iso(r.last_login_at)} for r in rows]


def build(user: User) -> dict:
    """The export document of ``user`` (read-only; the caller records the audit event)."""
    events = consent.ledger(user)
    return {
        "export": {"format": FORMAT, "generated_at": iso(time.time()), "issuer": current_app.config["IDP_ISSUER"],
                   "controller": {"name": current_app.config["IDP_CONTROLLER_NAME"],
                                  "contact": current_app.config["IDP_CONTROLLER_CONTACT"]}},
        "profile": _profile(user),
        "email_verified": bool(user.email_verified),
        "consents": _consents(user),
        "consent_history": _ledger(events),
        # Each receipt is a JWS signed by this provider: verify it with ISSUER/jwks.json.
        "receipts": [{"record_id": e.id, "receipt": e.receipt} for e in events if e.receipt],
        "sessions": _sessions(user),
        "audit_events": _audit(user),
        "tokens": _tokens(user),
        "passkeys": _passkeys(user),
        "linked_accounts": _linked_accounts(user),
    }
