"""The consent centre end to end: two brand apps, each with a real back-channel logout listener.

The customer consents to both; withdraws everything from app A (A's tokens die within the request, A gets a
valid logout token, B keeps working); withdraws `phone` from every app (B's next refresh has no phone claim and
its purposes claim changed); deletes the account (both apps are notified, nothing personal remains). Every
event's receipt verifies against the JWKS and the ledger shows them in order.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.browser import Customer, callback_params, csrf_token, pkce_pair
from tests.support.listener import Listener

EVENT = "http://schemas.openid.net/event/backchannel-logout"
SCOPE = "openid profile email phone offline_access marketing analytics"


def _app(app, name, uri, listener):
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client(name, [uri], scope=SCOPE, backchannel_logout_uri=listener.url())
        return {"client_id": c.client_id, "client_secret": secret, "redirect_uri": uri}


def _sign_in(client, customer, rp):
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    resp = who.follow(who.authorize(response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"],
                                    scope=SCOPE, code_challenge=challenge, code_challenge_method="S256", nonce="n"))
    tok = client.post("/token", data={"grant_type": "authorization_code", "code": callback_params(resp)["code"],
                                      "redirect_uri": rp["redirect_uri"], "code_verifier": verifier},
                      auth=(rp["client_id"], rp["client_secret"]))
    assert tok.status_code == 200, tok.get_json()
    return tok.get_json()


def _keys(client):
    return KeySet.import_key_set(client.get("/jwks.json").get_json())


def _claims(client, token):
    return jwt.decode(token, _keys(client), algorithms=["RS256", "ES256"]).claims


def _userinfo(client, tok):
    return client.get("/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]})


def _refresh(client, rp, tok):
    return client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                       auth=(rp["client_id"], rp["client_secret"]))


def _logout_token(client, hit, rp):
    assert list(hit.form) == ["logout_token"]
    decoded = jwt.decode(hit.form["logout_token"][0], _keys(client), algorithms=["RS256", "ES256"])
    c = decoded.claims
    assert decoded.header["typ"] == "logout+jwt" and c["aud"] == rp["client_id"] and c["iss"] == "http://localhost"
    assert c["events"] == {EVENT: {}} and "nonce" not in c and c["jti"] and ("sub" in c or "sid" in c)
    return c


def test_withdraw_narrow_and_delete_reach_every_app(make_app, customer):
    app = make_app(IDP_OUTBOX_WORKER="thread", IDP_OUTBOX_BASE_DELAY=0.2)
    client = app.test_client()
    with Listener() as bcl_a, Listener() as bcl_b:
        a = _app(app, "App A", "https://a.example/cb", bcl_a)
        b = _app(app, "App B", "https://b.example/cb", bcl_b)
        tok_a, tok_b = _sign_in(client, customer, a), _sign_in(client, customer, b)
        assert set(_claims(client, tok_b["id_token"])["consented_purposes"]) == {"marketing", "analytics"}

        # 1. Everything from app A, in the account centre: A's tokens die within that request.
        page = client.get("/account/apps").get_data(as_text=True)
        resp = client.post("/account/apps/withdraw", data={"csrf_token": csrf_token(page), "client_id": a["client_id"]})
        assert resp.status_code == 303
        assert _userinfo(client, tok_a).status_code == 401
        assert client.post("/introspect", data={"token": tok_a["access_token"]},
                           auth=(a["client_id"], a["client_secret"])).get_json() == {"active": False}
        assert _refresh(client, a, tok_a).get_json()["error"] == "invalid_grant"
        claims = _logout_token(client, bcl_a.wait_for(1)[0], a)
        assert claims["sub"] == customer["sub"]
        assert _userinfo(client, tok_b).status_code == 200  # B keeps working
        assert bcl_b.hits == []

        # 2. Stop sharing the phone number with every app: B's next refresh has no phone and fewer purposes.
        page = client.get("/account/apps").get_data(as_text=True)
        assert client.post("/account/apps/withdraw", data={"csrf_token": csrf_token(page), "item": "phone"}
                           ).status_code == 303
        page = client.get("/account/apps").get_data(as_text=True)
        assert client.post("/account/apps/withdraw", data={"csrf_token": csrf_token(page), "client_id": b["client_id"],
                                                           "item": "analytics"}).status_code == 303
        fresh = _refresh(client, b, tok_b)
        assert fresh.status_code == 200, fresh.get_json()
        new_b = fresh.get_json()
        assert "phone" not in new_b["scope"].split()
        assert "phone_number" not in _userinfo(client, new_b).get_json()
        assert set(_claims(client, new_b["id_token"])["consented_purposes"]) == {"marketing"}

        # The ledger shows every event in order, and every receipt verifies against the JWKS.
        with app.app_context():
            from app.accounts.models import User
            from app.consent import service
            from app.extensions import db

            user = db.session.get(User, customer["id"])
            events = [(e.client_name, e.action, sorted(e.items), e.channel, e.id, e.receipt) for e in service.ledger(user)]
        assert [(n, act) for n, act, *_ in events] == [
            ("App A", "granted"), ("App B", "granted"), ("App A", "withdrawn"), ("App B", "withdrawn"),
            ("App B", "withdrawn")]
        assert events[3][2] == ["phone"] and events[4][2] == ["analytics"]
        assert [e[3] for e in events] == ["consent_page", "consent_page", "account_centre", "account_centre",
                                          "account_centre"]
        for _, _, _, _, record_id, receipt in events:
            assert _claims(client, receipt)["record_id"] == record_id

        # 3. Delete the account: both apps are notified, nothing personal remains.
        page = client.get("/account/privacy").get_data(as_text=True)
        resp = client.post("/account/privacy/delete", data={"csrf_token": csrf_token(page),
                                                             "password": customer["password"]})
        assert resp.status_code in (200, 303), resp.status_code
        assert _logout_token(client, bcl_b.wait_for(1)[-1], b)["sub"] == customer["sub"]
        assert len(bcl_a.wait_for(2)) >= 2  # A, which the customer had used, hears of the deletion too
        assert _userinfo(client, new_b).status_code == 401
        with app.app_context():
            from app import outbox
            from app.extensions import db

            outbox.deliver_due()
            leftovers = _personal_data(db, customer)
        assert leftovers == [], leftovers


def _personal_data(db, customer) -> list:
    """Every (table, column) whose text still holds the customer's email, name, phone or sub."""
    needles = [customer["email"], "Ada Lovelace", "+44 20 7946 0000", customer["sub"]]
    found = []
    with db.engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            cols = [c for c in table.columns if isinstance(c.type, (sa.String, sa.Text, sa.JSON))]
            for row in conn.execute(sa.select(*cols)) if cols else []:
                for col, value in zip(cols, row):
                    text = json.dumps(value) if not isinstance(value, str) else value
                    if value is not None and any(n in text for n in needles):
                        found.append((table.name, col.name))
    return found
