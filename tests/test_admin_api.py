"""The Admin API (/admin/api, client-credentials tokens with `admin`) and `flask consents export`."""

from __future__ import annotations

import json

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.test_account_api import _bearer, _brand_app, _sign_in


def _machine(app, client, scope="admin", name="Operations"):
    """A client-credentials app, as `clients create --grant-type client_credentials --scope …`; returns a token."""
    res = app.test_cli_runner().invoke(args=["clients", "create", "--name", name, "--grant-type", "client_credentials",
                                             "--scope", scope, "--json"])
    assert res.exit_code == 0, res.output
    creds = json.loads(res.output)
    resp = client.post("/token", data={"grant_type": "client_credentials"},
                       auth=(creds["client_id"], creds["client_secret"]))
    assert resp.status_code == 200, resp.get_json()
    return {**resp.get_json(), "client_id": creds["client_id"], "client_secret": creds["client_secret"]}


def _connected(app, client, customer):
    shop = _brand_app(app, "Web Shop", "https://shop.example/cb")
    tok = _sign_in(client, customer, shop, "openid email marketing offline_access")
    return shop, tok


def test_find_customer_consents_ledger_and_withdraw(app, client, customer):
    shop, tok = _connected(app, client, customer)
    admin = _machine(app, client)
    h = _bearer(admin)

    found = client.get("/admin/api/users?email=ADA@example.com", headers=h)
    assert found.status_code == 200 and found.headers["Cache-Control"] == "no-store"
    body = found.get_json()
    assert body["sub"] == customer["sub"] and body["email"] == customer["email"] and isinstance(body["created_at"], int)
    assert client.get(f"/admin/api/users/{customer['sub']}", headers=h).get_json() == body
    missing = client.get("/admin/api/users?email=nobody@example.com", headers=h)
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
    no_email = client.get("/admin/api/users", headers=h)
    assert no_email.status_code == 400 and no_email.get_json()["error"] == "invalid_request"
    assert client.get("/admin/api/users/no-such-sub/consents", headers=h).status_code == 404
    assert client.get("/admin/api/users/%00/ledger", headers=h).status_code == 404

    consents = client.get(f"/admin/api/users/{customer['sub']}/consents", headers=h).get_json()
    assert consents["sub"] == customer["sub"]
    (entry,) = consents["apps"]
    assert entry["client_id"] == shop["client_id"] and entry["name"] == "Web Shop"
    assert {i["item"] for i in entry["items"]["scopes"]} == {"email", "offline_access"}
    assert [p["item"] for p in entry["items"]["purposes"]] == ["marketing"]

    gone = client.delete(f"/admin/api/users/{customer['sub']}/apps/{shop['client_id']}", headers=h)
    assert gone.status_code == 200, gone.get_json()
    (event,) = gone.get_json()["events"]
    assert event["channel"] == "admin" and event["action"] == "withdrawn" and event["client_id"] == shop["client_id"]
    assert client.get("/userinfo", headers=_bearer(tok)).status_code == 401  # the app's tokens are dead
    assert client.get(f"/admin/api/users/{customer['sub']}/consents", headers=h).get_json()["apps"] == []
    again = client.delete(f"/admin/api/users/{customer['sub']}/apps/{shop['client_id']}", headers=h)
    assert again.status_code == 404

    events = client.get(f"/admin/api/users/{customer['sub']}/ledger", headers=h).get_json()["events"]
    assert [(e["action"], e["channel"]) for e in events] == [("granted", "consent_page"), ("withdrawn", "admin")]
    keys = KeySet.import_key_set(client.get("/jwks.json").get_json())
    for e in events:
        assert jwt.decode(e["receipt"], keys, algorithms=["RS256"]).claims["record_id"] == e["id"]

    with app.app_context():
        from app.audit import AuditEvent
        from app.extensions import db

        audit = db.session.execute(db.select(AuditEvent).filter_by(
            user_id=customer["id"], type="consent_withdrawn_by_admin")).scalar_one()
        assert audit.data["operator"] == admin["client_id"] and audit.data["record_ids"] == [event["id"]]


def test_admin_api_refuses_everything_but_an_admin_machine_token(app, client, customer):
    shop = _brand_app(app, "Web Shop", "https://shop.example/cb")
    customer_tok = _sign_in(client, customer, shop, "openid email account")
    path = f"/admin/api/users/{customer['sub']}/consents"

    none = client.get(path)
    assert none.status_code == 401 and none.headers["WWW-Authenticate"] == 'Bearer realm="admin"'
    bad = client.get(path, headers=_bearer("garbage"))
    assert bad.status_code == 401 and bad.get_json()["error"] == "invalid_token"

    as_customer = client.get(path, headers=_bearer(customer_tok))
    assert as_customer.status_code == 403 and as_customer.get_json()["error"] == "insufficient_scope"
    assert 'scope="admin"' in as_customer.headers["WWW-Authenticate"]
    no_admin = _machine(app, client, scope="email", name="Reports")
    for method, url in (("get", path), ("get", "/admin/api/users?email=ada@example.com"),
                        ("delete", f"/admin/api/users/{customer['sub']}/apps/{shop['client_id']}")):
        resp = getattr(client, method)(url, headers=_bearer(no_admin))
        assert resp.status_code == 403 and resp.get_json()["error"] == "insufficient_scope", url
    assert client.get("/userinfo", headers=_bearer(customer_tok)).status_code == 200  # nothing was withdrawn

    admin = _machine(app, client)
    assert client.get(path, headers=_bearer(admin)).status_code == 200
    assert client.get(path + "?access_token=" + admin["access_token"]).status_code == 400  # never in the URL
    client.post("/revoke", data={"token": admin["access_token"]}, auth=(admin["client_id"], admin["client_secret"]))
    assert client.get(path, headers=_bearer(admin)).status_code == 401
    unknown = client.get("/admin/api/nothing-here", headers=_bearer(admin))
    assert unknown.status_code == 404 and unknown.is_json
    wrong = client.put(path, headers=_bearer(admin))
    assert wrong.status_code == 405 and wrong.is_json


def test_cli_export_prints_customer_consents_and_ledger(app, client, customer):
    shop, _ = _connected(app, client, customer)
    assert client.delete("/account/api/items/marketing").status_code == 401  # no token: nothing changes
    runner = app.test_cli_runner()
    res = runner.invoke(args=["consents", "export", "--email", customer["email"]])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data) == {"customer", "consents", "ledger"}
    assert data["customer"]["sub"] == customer["sub"] and data["customer"]["email"] == customer["email"]
    (entry,) = data["consents"]
    assert entry["client_id"] == shop["client_id"]
    assert {i["item"] for i in entry["items"]["scopes"]} == {"email", "offline_access"}
    assert [(p["item"], p["title"]) for p in entry["items"]["purposes"]] == [("marketing", "Marketing messages")]
    (granted,) = data["ledger"]
    assert granted["action"] == "granted" and granted["receipt"].count(".") == 2
    keys = KeySet.import_key_set(client.get("/jwks.json").get_json())
    assert jwt.decode(granted["receipt"], keys, algorithms=["RS256"]).claims["sub"] == customer["sub"]

    unknown = runner.invoke(args=["consents", "export", "--email", "nobody@example.com"])
    assert unknown.exit_code != 0 and "no customer" in unknown.output
