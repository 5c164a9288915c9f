"""Account centre privacy: download my data (checked against the database) and delete my account."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.browser import csrf_token
from tests.test_portal_apps import _brand_app, _sign_in_app

IP = "198.51.100.77"
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"


def _browser(app):
    b = app.test_client()
    b.environ_base.update(REMOTE_ADDR=IP, HTTP_USER_AGENT=UA)
    return b


def _set_up(app, customer):
    """A customer who signed in to a brand app (tokens, grants, ledger) and withdrew one item."""
    b = _browser(app)
    rp = _brand_app(app)
    tokens = _sign_in_app(b, customer, rp, "openid email phone offline_access marketing")
    assert "access_token" in tokens and "refresh_token" in tokens
    page = b.get("/account/apps").get_data(as_text=True)
    resp = b.post("/account/apps/withdraw", data={"csrf_token": csrf_token(page), "client_id": rp["client_id"],
                                                  "item": "phone"})
    assert resp.status_code == 303
    return b, rp, tokens


UPSTREAM_SUBJECT = "google-oauth2|1180033955"


def _seed_credentials(app, customer):
    """A passkey and a linked upstream account, as the passkey and federation features store them."""
    from app.extensions import db
    from app.federation.models import FederatedIdentity
    from app.passkeys.models import PasskeyCredential

    with app.app_context():
        db.session.add(PasskeyCredential(user_id=customer["id"], credential_id="cred-ada-1", public_key=b"\x01\x02",
                                         sign_count=0, transports=["internal"], name="Ada's phone"))
        db.session.add(FederatedIdentity(user_id=customer["id"], provider="google", subject=UPSTREAM_SUBJECT,
                                         email=customer["email"]))
        db.session.commit()


def _counts(app) -> dict:
    from app.extensions import db

    with app.app_context():
        return {t.name: db.session.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                for t in db.metadata.sorted_tables}


def _userinfo(b, tokens):
    return b.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})


# -- export -------------------------------------------------------------------------------------------------

def test_export_contains_every_category_and_matches_the_database(app, customer):
    from app.accounts.models import LoginSession
    from app.audit import AuditEvent
    from app.consent.models import ConsentEvent, ConsentGrant
    from app.extensions import db
    from app.oauth2.models import Token

    b, rp, tokens = _set_up(app, customer)
    _seed_credentials(app, customer)
    page = b.get("/account/privacy")
    assert page.status_code == 200 and "Download my data" in page.get_data(as_text=True)
    resp = b.get("/account/privacy/export")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="my-account-data-')
    assert "no-store" in resp.headers["Cache-Control"]
    data = json.loads(resp.get_data(as_text=True))
    assert set(data) >= {"export", "profile", "email_verified", "consents", "consent_history", "receipts",
                         "sessions", "audit_events", "tokens", "passkeys", "linked_accounts"}
    assert data["export"]["issuer"] == "http://localhost" and data["export"]["generated_at"].endswith("Z")

    profile = data["profile"]
    assert "password_hash" not in profile and "password_hash" not in resp.get_data(as_text=True)
    assert profile["email"] == customer["email"] and profile["sub"] == customer["sub"]
    assert profile["name"] == "Ada Lovelace" and profile["phone_number"] == "+44 20 7946 0000"
    assert profile["address"]["locality"] == "London"
    assert data["email_verified"] is True

    with app.app_context():
        uid = customer["id"]
        grants = {(g.client_id, g.item) for g in db.session.execute(
            db.select(ConsentGrant).filter_by(user_id=uid)).scalars()}
        ledger = list(db.session.execute(
            db.select(ConsentEvent).filter_by(user_id=uid).order_by(ConsentEvent.seq)).scalars())
        n_sessions = db.session.execute(
            sa.select(sa.func.count()).select_from(LoginSession).where(LoginSession.user_id == uid)).scalar()
        audit_types = [e.type for e in db.session.execute(
            db.select(AuditEvent).filter_by(user_id=uid).order_by(AuditEvent.occurred_at, AuditEvent.id)).scalars()]
        now = int(time.time())
        active = sum(1 for t in db.session.execute(db.select(Token).filter_by(user_id=uid)).scalars()
                     if t.access_active(now) or t.refresh_active(now))
        ledger_rows = [(e.id, e.action, e.items, e.channel) for e in ledger]

    assert {(c["client_id"], i["item"]) for c in data["consents"] for i in c["items"]} == grants
    assert ("phone" not in {i["item"] for c in data["consents"] for i in c["items"]})
    assert all(i["granted_at"] and i["description"] for c in data["consents"] for i in c["items"])
    assert len(ledger_rows) == 2
    assert [(e["record_id"], e["action"], e["items"], e["channel"]) for e in data["consent_history"]] == ledger_rows
    assert [e["seq"] for e in data["consent_history"]] == sorted(e["seq"] for e in data["consent_history"])

    keys = KeySet.import_key_set(b.get("/jwks.json").get_json())
    assert [r["record_id"] for r in data["receipts"]] == [row[0] for row in ledger_rows]
    for receipt in data["receipts"]:
        claims = jwt.decode(receipt["receipt"], keys).claims
        assert claims["sub"] == customer["sub"] and claims["record_id"] == receipt["record_id"]

    assert len(data["sessions"]) == n_sessions == 1
    s = data["sessions"][0]
    assert s["ip"] == IP and s["device"] == "Firefox on Linux" and s["active"] is True and s["signed_in_at"]
    assert [e["type"] for e in data["audit_events"]] == audit_types
    assert "data_exported" in audit_types

    assert [t["client_id"] for t in data["tokens"]] == [rp["client_id"]]
    assert data["tokens"][0]["active_tokens"] == active >= 1
    assert data["tokens"][0]["last_issued_at"].endswith("Z") and data["tokens"][0]["app"] == "Web Shop"
    assert [p["name"] for p in data["passkeys"]] == ["Ada's phone"]
    assert "public_key" not in data["passkeys"][0]
    assert data["linked_accounts"] == [{"provider": "google", "subject": UPSTREAM_SUBJECT, "email": customer["email"],
                                        "linked_at": data["linked_accounts"][0]["linked_at"],
                                        "last_sign_in_at": None}]


def test_export_requires_sign_in(client):
    resp = client.get("/account/privacy/export")
    assert resp.status_code == 303 and "/login" in resp.headers["Location"]


# -- deletion -----------------------------------------------------------------------------------------------

def test_wrong_password_or_missing_csrf_deletes_nothing(app, customer):
    b, rp, tokens = _set_up(app, customer)
    before = _counts(app)
    page = b.get("/account/privacy").get_data(as_text=True)
    assert "Delete my account" in page and "Your current password" in page
    resp = b.post("/account/privacy/delete", data={"csrf_token": csrf_token(page), "password": "wrong password!"})
    assert resp.status_code == 400
    assert "That password is not correct. Your account was not deleted." in resp.get_data(as_text=True)
    resp = b.post("/account/privacy/delete", data={"csrf_token": csrf_token(page)})
    assert resp.status_code == 400
    resp = b.post("/account/privacy/delete", data={"password": customer["password"]})
    assert resp.status_code == 400 and "This form has expired" in resp.get_data(as_text=True)
    assert _counts(app) == before
    assert _userinfo(b, tokens).status_code == 200
    assert b.get("/account").status_code == 200


def _personal_strings(customer):
    return {"email": customer["email"], "name": "Ada Lovelace", "family name": "Lovelace",
            "phone": "+44 20 7946 0000", "street": "St James", "sub": customer["sub"], "ip": IP,
            "passkey": "cred-ada-1", "upstream subject": UPSTREAM_SUBJECT}


def _scan(app, needles: dict) -> list[str]:
    """Every text and JSON value of every table, searched for the customer's personal strings."""
    from app.extensions import db

    found = []
    with app.app_context():
        for table in db.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, (sa.String, sa.Text, sa.JSON))]
            if not columns:
                continue
            for row in db.session.execute(sa.select(*columns)).all():
                for column, value in zip(columns, row):
                    if value is None:
                        continue
                    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                    found += [f"{table.name}.{column.name} holds the {what}"
                              for what, needle in needles.items() if needle.lower() in text.lower()]
    return found


def test_deleting_the_account_erases_every_personal_trace(app, customer):
    from app.audit import AuditEvent
    from app.consent.models import ConsentEvent
    from app.events import account_deleted
    from app.extensions import db

    b, rp, tokens = _set_up(app, customer)
    _seed_credentials(app, customer)
    other = _brand_app(app, "TV Box", "https://tv.example/cb")
    tv_tokens = _sign_in_app(b, customer, other, "openid email")
    assert b.get("/account/privacy/export").status_code == 200  # leaves an audit row with the IP
    # The scan finds what it looks for while the account exists.
    assert {"users.email holds the email", "login_sessions.ip holds the ip"} <= set(
        _scan(app, _personal_strings(customer)))
    with app.app_context():
        n_ledger = db.session.execute(sa.select(sa.func.count()).select_from(ConsentEvent)).scalar()
        sids = [r[0] for r in db.session.execute(sa.text(
            "SELECT id FROM login_sessions WHERE user_id = :u"), {"u": customer["id"]})]

    received = []

    def receiver(sender, **kwargs):
        received.append(kwargs)

    account_deleted.connect(receiver)
    try:
        page = b.get("/account/privacy").get_data(as_text=True)
        resp = b.post("/account/privacy/delete", data={"csrf_token": csrf_token(page),
                                                       "password": customer["password"]})
    finally:
        account_deleted.disconnect(receiver)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Your account was deleted" in html
    assert "idp_session=;" in resp.headers.get("Set-Cookie", "")

    assert received == [{"sub": customer["sub"], "client_ids": sorted([rp["client_id"], other["client_id"]]),
                         "sids": sids}]
    # This browser is signed out, the tokens are dead.
    back = b.get("/account")
    assert back.status_code == 303 and "/login" in back.headers["Location"]
    assert _userinfo(b, tokens).status_code == 401
    assert _userinfo(b, tv_tokens).status_code == 401
    ref = b.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                 auth=(rp["client_id"], rp["client_secret"]))
    assert ref.status_code == 400 and ref.get_json()["error"] == "invalid_grant"
    # Nothing personal anywhere.
    assert _scan(app, _personal_strings(customer)) == []
    with app.app_context():
        ledger = list(db.session.execute(db.select(ConsentEvent)).scalars())
        assert len(ledger) == n_ledger >= 3
        assert all(e.user_id is None and e.receipt is None and e.subject_hash for e in ledger)
        assert {e.client_id for e in ledger} == {rp["client_id"], other["client_id"]}
        events = list(db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id)).scalars())
        assert all(e.user_id is None and e.ip is None for e in events)
        tomb = events[-1]
        assert tomb.type == "account_deleted" and tomb.subject_hash == ledger[0].subject_hash
        assert tomb.data["channel"] == "account_centre"
        assert tomb.data["client_ids"] == sorted([rp["client_id"], other["client_id"]])
        for table in ("users", "login_sessions", "tokens", "consent_grants", "passkey_credentials",
                      "federated_identities"):
            assert db.session.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 0, table
    # The email is free again: a new registration is a new, unrelated account.
    from app.accounts.service import create_user

    with app.app_context():
        assert create_user(customer["email"], "a brand new password").sub != customer["sub"]


def test_account_without_password_needs_a_recent_sign_in(app):
    from flask import g

    from app.accounts import sessions
    from app.accounts.models import LoginSession, User
    from app.accounts.service import create_user
    from app.extensions import db

    with app.app_context():
        user = create_user("nopass@example.com", None, "No Password")
        uid = user.id
        with app.test_request_context("/", environ_base={"REMOTE_ADDR": IP}):
            row = sessions.start(user, amr=["otp"], acr=None)
            secret, sid = g.set_session_cookie, row.id
    b = _browser(app)
    b.set_cookie("idp_session", secret)
    page = b.get("/account/privacy").get_data(as_text=True)
    assert "Your current password" not in page
    # A sign-in older than five minutes is not enough.
    with app.app_context():
        db.session.get(LoginSession, sid).auth_time = int(time.time()) - 600
        db.session.commit()
    page = b.get("/account/privacy").get_data(as_text=True)
    assert "sign in again" in page.lower()
    resp = b.post("/account/privacy/delete", data={"csrf_token": csrf_token(page)})
    assert resp.status_code == 400 and "Your account was not deleted." in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(User, uid) is not None
        db.session.get(LoginSession, sid).auth_time = int(time.time()) - 10
        db.session.commit()
    resp = b.post("/account/privacy/delete", data={"csrf_token": csrf_token(page)})
    assert resp.status_code == 200 and "Your account was deleted" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(User, uid) is None
