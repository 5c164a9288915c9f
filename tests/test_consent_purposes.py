"""Brand purposes: optional ones can be unticked, tokens carry exactly the granted set, GPC, the ledger and receipts."""

from __future__ import annotations

import time

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.browser import Customer, callback_params, pkce_pair

SCOPE = "openid email phone offline_access marketing analytics share_purchase_history"


def _brand_app(app, name, uri, scope=SCOPE):
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client(name, [uri], scope=scope)
        return {"client_id": c.client_id, "client_secret": secret, "redirect_uri": uri}


def _keys(client):
    return KeySet.import_key_set(client.get("/jwks.json").get_json())


def _consent_page(client, customer, rp, scope=SCOPE, headers=None):
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    page = who.follow(client.get("/authorize", query_string=dict(
        response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"], scope=scope,
        code_challenge=challenge, code_challenge_method="S256", nonce="n"), headers=headers or {}), consent=None)
    return who, page, verifier


def _finish(client, who, page, rp, verifier, purposes=None):
    resp = who.follow(who.submit_consent(page, "allow", purposes=purposes))
    code = callback_params(resp)["code"]
    return client.post("/token", data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                       "redirect_uri": rp["redirect_uri"]},
                       auth=(rp["client_id"], rp["client_secret"])).get_json()


def test_unticked_purpose_is_not_granted_and_tokens_carry_exactly_the_granted_set(app, client, customer):
    rp = _brand_app(app, "Web Shop", "https://shop.example/cb")
    who, page, verifier = _consent_page(client, customer, rp)
    html = page.get_data(as_text=True)
    assert "Marketing messages" in html and "Usage analytics" in html
    tok = _finish(client, who, page, rp, verifier, purposes=["marketing"])
    assert set(tok["scope"].split()) == {"openid", "email", "phone", "offline_access", "marketing"}
    at = jwt.decode(tok["access_token"], _keys(client), algorithms=["RS256"]).claims
    assert at["scope"] == tok["scope"]
    idt = jwt.decode(tok["id_token"], _keys(client), algorithms=["RS256"]).claims
    assert set(idt["consented_purposes"]) == {"marketing"}
    assert abs(idt["consented_purposes"]["marketing"]["granted_at"] - time.time()) < 60
    info = client.get("/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]}).get_json()
    assert set(info["consented_purposes"]) == {"marketing"} and info["phone_number"]
    intro = client.post("/introspect", data={"token": tok["access_token"]},
                        auth=(rp["client_id"], rp["client_secret"])).get_json()
    assert set(intro["consented_purposes"]) == {"marketing"}


def test_global_privacy_control_preunticks_sale_or_sharing(app, client, customer):
    rp = _brand_app(app, "Web Shop", "https://shop.example/cb")
    client.environ_base["HTTP_SEC_GPC"] = "1"  # a browser with Global Privacy Control sends it on every request
    _, page, _ = _consent_page(client, customer, rp)
    html = page.get_data(as_text=True)
    assert 'value="share_purchase_history">' in html  # unticked
    assert 'value="marketing" checked>' in html
    _, plain, _ = _consent_page(Customer(app.test_client()).client, customer, rp)
    assert 'value="share_purchase_history" checked>' in plain.get_data(as_text=True)


def test_narrowing_one_purpose_everywhere_reaches_the_next_refresh_and_the_ledger_is_signed(app, client, customer):
    a = _brand_app(app, "App A", "https://a.example/cb")
    b = _brand_app(app, "App B", "https://b.example/cb")
    who, page, v = _consent_page(client, customer, a)
    tok_a = _finish(client, who, page, a, v, purposes=["marketing", "analytics"])
    who, page, v = _consent_page(client, customer, b)
    tok_b = _finish(client, who, page, b, v, purposes=["marketing", "analytics"])
    with app.app_context():
        from app.accounts.models import User
        from app.consent import service
        from app.extensions import db

        user = db.session.get(User, customer["id"])
        service.withdraw(user, item="phone", channel="account_centre")
        service.withdraw(user, item="analytics", channel="account_centre")
    for rp, tok in ((a, tok_a), (b, tok_b)):
        info = client.get("/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]}).get_json()
        assert "phone_number" not in info and set(info["consented_purposes"]) == {"marketing"}
        ref = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                          auth=(rp["client_id"], rp["client_secret"]))
        assert ref.status_code == 200, ref.get_json()
        new = ref.get_json()
        assert "phone" not in new["scope"].split() and "analytics" not in new["scope"].split()
        idt = jwt.decode(new["id_token"], _keys(client), algorithms=["RS256"]).claims
        assert set(idt["consented_purposes"]) == {"marketing"}
    with app.app_context():
        from app.consent import service

        user = db.session.get(User, customer["id"])
        events = service.ledger(user)
        assert [(e.client_name, e.action) for e in events] == [
            ("App A", "granted"), ("App B", "granted"),
            ("App A", "withdrawn"), ("App B", "withdrawn"), ("App A", "withdrawn"), ("App B", "withdrawn")]
        assert events[2].items == ["phone"] and events[4].items == ["analytics"]
        receipts = [(e.id, e.receipt) for e in events]
    keys = _keys(client)
    for record_id, receipt in receipts:
        claims = jwt.decode(receipt, keys, algorithms=["RS256"]).claims
        assert claims["record_id"] == record_id and claims["sub"] == customer["sub"]
        assert claims["controller"]["name"] and claims["withdrawal"]["uri"].endswith("/account/apps")


def test_required_purpose_cannot_be_unticked(make_app, customer, tmp_path):
    import json

    path = tmp_path / "purposes.json"
    path.write_text(json.dumps({"loyalty": {"title": {"en": "Loyalty points", "tr": "Sadakat puanı"},
                                            "description": {"en": "Collect points.", "tr": "Puan toplayın."},
                                            "required": True}}))
    app = make_app(IDP_PURPOSES_FILE=str(path))
    client = app.test_client()
    rp = _brand_app(app, "Club", "https://club.example/cb", scope="openid loyalty")
    with app.app_context():
        from app.accounts.service import create_user

        create_user("club@example.com", "club password 1")
    who, page, verifier = _consent_page(client, {"email": "club@example.com", "password": "club password 1"}, rp,
                                        scope="openid loyalty")
    assert 'value="loyalty" checked disabled>' in page.get_data(as_text=True)
    tok = _finish(client, who, page, rp, verifier, purposes=[])  # a disabled box is never sent
    assert "loyalty" in tok["scope"].split()
