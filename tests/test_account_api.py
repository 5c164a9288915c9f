"""The Account API (/account/api): connected apps, withdrawals, ledger and receipts over RFC 6750 bearer tokens."""

from __future__ import annotations

import json

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.browser import Customer, callback_params, pkce_pair

SCOPE = "openid email offline_access account marketing analytics"


def _brand_app(app, name, uri, **meta):
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client(name, [uri], scope=SCOPE, **meta)
        return {"client_id": c.client_id, "client_secret": secret, "redirect_uri": uri}


def _sign_in(client, customer, rp, scope):
    """The real journey: authorize, sign in (or SSO), consent, exchange the code."""
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    cb = callback_params(who.follow(who.authorize(
        response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"], scope=scope,
        code_challenge=challenge, code_challenge_method="S256")))
    resp = client.post("/token", data={"grant_type": "authorization_code", "code": cb["code"],
                                       "redirect_uri": rp["redirect_uri"], "code_verifier": verifier},
                       auth=(rp["client_id"], rp["client_secret"]))
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _bearer(tok):
    return {"Authorization": "Bearer " + (tok["access_token"] if isinstance(tok, dict) else tok)}


def _two_apps(app, client, customer):
    shop = _brand_app(app, "Web Shop", "https://shop.example/cb", logo_uri="https://shop.example/logo.png")
    tv = _brand_app(app, "TV Box", "https://tv.example/cb")
    shop_tok = _sign_in(client, customer, shop, "openid email account marketing offline_access")
    tv_tok = _sign_in(client, customer, tv, "openid email analytics offline_access")
    return shop, tv, shop_tok, tv_tok


def _keyset(client):
    return KeySet.import_key_set(client.get("/jwks.json").get_json())


def test_lists_connected_apps_with_scopes_purposes_and_times(app, client, customer):
    shop, tv, shop_tok, _ = _two_apps(app, client, customer)
    resp = client.get("/account/api/apps", headers=_bearer(shop_tok))
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    apps = resp.get_json()["apps"]
    assert [a["name"] for a in apps] == ["TV Box", "Web Shop"]
    by_id = {a["client_id"]: a for a in apps}
    s = by_id[shop["client_id"]]
    assert s["logo_uri"] == "https://shop.example/logo.png" and by_id[tv["client_id"]]["logo_uri"] is None
    assert {i["item"] for i in s["items"]["scopes"]} == {"email", "account", "offline_access"}
    assert all(i["description"] for i in s["items"]["scopes"])  # openid needs no consent, so it is not listed
    assert [(p["item"], p["title"]) for p in s["items"]["purposes"]] == [("marketing", "Marketing messages")]
    assert s["items"]["claims"] == []
    assert [p["item"] for p in by_id[tv["client_id"]]["items"]["purposes"]] == ["analytics"]
    for a in apps:
        assert isinstance(a["granted_at"], int) and isinstance(a["last_used_at"], int)
        assert all(i["granted_at"] >= a["granted_at"] for kind in a["items"].values() for i in kind)
    tr = client.get("/account/api/apps", headers={**_bearer(shop_tok), "Accept-Language": "tr"}).get_json()["apps"]
    titles = {p["item"]: p["title"] for a in tr for p in a["items"]["purposes"]}
    assert titles == {"marketing": "Pazarlama iletileri", "analytics": "Kullanım analizi"}
    xx = client.get("/account/api/apps", headers={**_bearer(shop_tok), "Accept-Language": "xx"}).get_json()["apps"]
    assert {p["title"] for a in xx for p in a["items"]["purposes"]} == {"Marketing messages", "Usage analytics"}


def test_withdraw_everything_from_another_app_ends_its_tokens(app, client, customer):
    shop, tv, shop_tok, tv_tok = _two_apps(app, client, customer)
    assert client.get("/userinfo", headers=_bearer(tv_tok)).status_code == 200
    resp = client.delete(f"/account/api/apps/{tv['client_id']}", headers=_bearer(shop_tok))
    assert resp.status_code == 200, resp.get_json()
    (event,) = resp.get_json()["events"]
    assert event["client_id"] == tv["client_id"] and event["action"] == "withdrawn" and event["channel"] == "api"
    assert set(event["items"]) == {"email", "analytics", "offline_access"}
    claims = jwt.decode(event["receipt"], _keyset(client), algorithms=["RS256"]).claims
    assert claims["record_id"] == event["id"] and claims["event"]["channel"] == "api"
    assert client.get("/userinfo", headers=_bearer(tv_tok)).status_code == 401
    ref = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tv_tok["refresh_token"]},
                      auth=(tv["client_id"], tv["client_secret"]))
    assert ref.status_code == 400 and ref.get_json()["error"] == "invalid_grant"
    listed = client.get("/account/api/apps", headers=_bearer(shop_tok)).get_json()["apps"]
    assert [a["client_id"] for a in listed] == [shop["client_id"]]
    again = client.delete(f"/account/api/apps/{tv['client_id']}", headers=_bearer(shop_tok))
    assert again.status_code == 404 and again.get_json()["error"] == "not_found"
    assert client.delete("/account/api/apps/no-such-app", headers=_bearer(shop_tok)).status_code == 404
    assert client.get("/userinfo", headers=_bearer(shop_tok)).status_code == 200  # the other app is untouched


def test_withdraw_everything_from_the_calling_app_still_answers(app, client, customer):
    shop, _, shop_tok, _ = _two_apps(app, client, customer)
    resp = client.delete(f"/account/api/apps/{shop['client_id']}", headers=_bearer(shop_tok))
    assert resp.status_code == 200 and resp.get_json()["events"][0]["client_id"] == shop["client_id"]
    assert client.get("/userinfo", headers=_bearer(shop_tok)).status_code == 401
    dead = client.get("/account/api/apps", headers=_bearer(shop_tok))
    assert dead.status_code == 401 and 'error="invalid_token"' in dead.headers["WWW-Authenticate"]


def test_narrowing_one_item_from_one_app_and_one_item_everywhere(app, client, customer):
    shop, tv, shop_tok, tv_tok = _two_apps(app, client, customer)
    assert "marketing" in client.get("/userinfo", headers=_bearer(shop_tok)).get_json()["consented_purposes"]
    resp = client.delete(f"/account/api/apps/{shop['client_id']}/items/marketing", headers=_bearer(shop_tok))
    assert resp.status_code == 200
    (event,) = resp.get_json()["events"]
    assert event["items"] == ["marketing"] and event["channel"] == "api"
    info = client.get("/userinfo", headers=_bearer(shop_tok))
    assert info.status_code == 200 and "consented_purposes" not in info.get_json()  # narrowed, not ended
    apps = {a["client_id"]: a for a in client.get("/account/api/apps", headers=_bearer(shop_tok)).get_json()["apps"]}
    assert apps[shop["client_id"]]["items"]["purposes"] == []
    assert client.delete(f"/account/api/apps/{shop['client_id']}/items/marketing",
                         headers=_bearer(shop_tok)).status_code == 404
    assert client.delete(f"/account/api/apps/{tv['client_id']}/items/marketing",
                         headers=_bearer(shop_tok)).status_code == 404  # never granted there

    everywhere = client.delete("/account/api/items/email", headers=_bearer(shop_tok))
    assert everywhere.status_code == 200
    ended = sorted(e["client_id"] for e in everywhere.get_json()["events"])
    assert ended == sorted([shop["client_id"], tv["client_id"]])
    for tok in (shop_tok, tv_tok):
        body = client.get("/userinfo", headers=_bearer(tok)).get_json()
        assert "email" not in body and body["sub"] == customer["sub"]
    assert client.delete("/account/api/items/email", headers=_bearer(shop_tok)).status_code == 404

    # Withdrawing `account` itself from the calling app: the API refuses that token from now on.
    assert client.delete(f"/account/api/apps/{shop['client_id']}/items/account",
                         headers=_bearer(shop_tok)).status_code == 200
    refused = client.get("/account/api/apps", headers=_bearer(shop_tok))
    assert refused.status_code == 403 and refused.get_json()["error"] == "insufficient_scope"
    assert 'scope="account"' in refused.headers["WWW-Authenticate"]


def test_ledger_in_order_with_verifiable_receipts(app, client, customer, make_app):
    shop, tv, shop_tok, _ = _two_apps(app, client, customer)
    client.delete(f"/account/api/apps/{shop['client_id']}/items/marketing", headers=_bearer(shop_tok))
    client.delete(f"/account/api/apps/{tv['client_id']}", headers=_bearer(shop_tok))
    resp = client.get("/account/api/ledger", headers=_bearer(shop_tok))
    assert resp.status_code == 200
    events = resp.get_json()["events"]
    assert [(e["client_id"], e["action"], e["channel"]) for e in events] == [
        (shop["client_id"], "granted", "consent_page"), (tv["client_id"], "granted", "consent_page"),
        (shop["client_id"], "withdrawn", "api"), (tv["client_id"], "withdrawn", "api")]
    assert set(events[0]["items"]) == {"email", "account", "marketing", "offline_access"}
    assert events[2]["items"] == ["marketing"]
    assert [e["occurred_at"] for e in events] == sorted(e["occurred_at"] for e in events)
    keys = _keyset(client)
    for e in events:
        token = jwt.decode(e["receipt"], keys, algorithms=["RS256"])
        assert token.header["typ"] == "consent-receipt+jwt"
        c = token.claims
        assert c["record_id"] == c["jti"] == e["id"] and c["sub"] == customer["sub"] and c["iss"] == "http://localhost"
        assert c["event"] == {"type": e["action"], "timestamp": e["occurred_at"], "channel": e["channel"]}
        assert c["processor"]["client_id"] == e["client_id"]

    record = events[2]["id"]
    as_jwt = client.get(f"/account/api/receipts/{record}", headers={**_bearer(shop_tok), "Accept": "application/jwt"})
    assert as_jwt.status_code == 200 and as_jwt.mimetype == "application/jwt"
    assert as_jwt.get_data(as_text=True) == events[2]["receipt"]
    as_json = client.get(f"/account/api/receipts/{record}", headers=_bearer(shop_tok))
    assert as_json.status_code == 200 and as_json.get_json() == {"record_id": record, "receipt": events[2]["receipt"]}
    assert client.get("/account/api/receipts/not-a-record", headers=_bearer(shop_tok)).status_code == 404

    # Another customer sees only their own ledger, and not this customer's receipts.
    from app.accounts.service import create_user

    with app.app_context():
        create_user("grace@example.com", "another good password", "Grace Hopper", email_verified=True)
    other = app.test_client()
    grace = {"email": "grace@example.com", "password": "another good password"}
    grace_tok = _sign_in(other, grace, shop, "openid account")
    mine = client.get("/account/api/ledger", headers=_bearer(grace_tok)).get_json()["events"]
    assert len(mine) == 1 and mine[0]["items"] == ["account"]
    theirs = other.get(f"/account/api/receipts/{record}", headers=_bearer(grace_tok))
    assert theirs.status_code == 404 and theirs.get_json()["error"] == "not_found"


def test_bearer_errors_follow_rfc_6750(app, client, customer):
    shop = _brand_app(app, "Web Shop", "https://shop.example/cb")
    no_account = _sign_in(client, customer, shop, "openid email")
    missing = client.get("/account/api/apps")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == 'Bearer realm="account"'
    assert missing.is_json and missing.get_json()["error"]
    basic = client.get("/account/api/apps", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert basic.status_code == 401 and basic.headers["WWW-Authenticate"].startswith("Bearer ")
    bad = client.get("/account/api/apps", headers=_bearer("not.a.token"))
    assert bad.status_code == 401 and bad.get_json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
    two = client.get("/account/api/apps", headers={"Authorization": "Bearer a b"})
    assert two.status_code == 400 and two.get_json()["error"] == "invalid_request"
    in_query = client.get("/account/api/apps?access_token=" + no_account["access_token"])
    assert in_query.status_code == 400 and in_query.get_json()["error"] == "invalid_request"
    scope = client.get("/account/api/apps", headers=_bearer(no_account))
    assert scope.status_code == 403 and scope.get_json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in scope.headers["WWW-Authenticate"]
    assert 'scope="account"' in scope.headers["WWW-Authenticate"]
    assert client.delete(f"/account/api/apps/{shop['client_id']}", headers=_bearer(no_account)).status_code == 403

    with_account = _sign_in(client, customer, shop, "openid account offline_access")
    assert client.get("/account/api/apps", headers=_bearer(with_account)).status_code == 200
    assert client.post("/revoke", data={"token": with_account["access_token"]},
                       auth=(shop["client_id"], shop["client_secret"])).status_code == 200
    revoked = client.get("/account/api/ledger", headers=_bearer(with_account))
    assert revoked.status_code == 401 and revoked.get_json()["error"] == "invalid_token"

    # A machine token (no customer) is not an account token, even with the scope.
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("Batch", [], grant_types=["client_credentials"], scope="account")
        batch_id = c.client_id
    m2m = client.post("/token", data={"grant_type": "client_credentials"}, auth=(batch_id, secret)).get_json()
    assert client.get("/account/api/apps", headers=_bearer(m2m)).status_code == 403


def test_unknown_paths_methods_and_odd_values_get_json_not_500(app, client, customer):
    shop = _brand_app(app, "Web Shop", "https://shop.example/cb")
    tok = _sign_in(client, customer, shop, "openid account")
    nowhere = client.get("/account/api/nowhere", headers=_bearer(tok))
    assert nowhere.status_code == 404 and nowhere.get_json()["error"] == "not_found"
    wrong = client.post("/account/api/apps", headers=_bearer(tok))
    assert wrong.status_code == 405 and wrong.get_json()["error"] and "GET" in wrong.headers["Allow"]
    for path in ("/account/api/apps/%00", "/account/api/apps/x%00y/items/email", "/account/api/items/%00",
                 "/account/api/items/" + "e" * 500, "/account/api/apps/" + "c" * 300):
        resp = client.delete(path, headers=_bearer(tok))
        assert resp.status_code == 404 and resp.is_json, path
    assert client.get("/account/api/receipts/%00", headers=_bearer(tok)).status_code == 404
    # The API is bearer-authenticated, so no CSRF token is needed (and cookies alone authorize nothing).
    assert client.delete(f"/account/api/apps/{shop['client_id']}/items/account",
                         headers=_bearer(tok)).status_code == 200
    assert client.delete(f"/account/api/apps/{shop['client_id']}").status_code == 401


def test_openapi_document_describes_every_route(app, client):
    resp = client.get("/account/api/openapi.json")
    assert resp.status_code == 200 and resp.is_json
    doc = json.loads(resp.get_data(as_text=True))
    assert doc["openapi"].startswith("3.1.") and doc["info"]["title"] and doc["info"]["version"]
    (server,) = doc["servers"]
    assert server["url"] == "http://localhost/account/api"
    prefix = "/account/api"
    registered = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("account_api."):
            path = rule.rule[len(prefix):].replace("<", "{").replace(">", "}")
            registered[path] = {m.lower() for m in rule.methods} - {"head", "options"}
    documented = {path: set(ops) - {"parameters"} for path, ops in doc["paths"].items()}
    assert documented == registered

    def resolve(ref):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                assert resolve(node["$ref"]) is not None
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    for path, ops in doc["paths"].items():
        names = {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
        for op in ops.values():
            params = [resolve(p["$ref"]) if "$ref" in p else p for p in op.get("parameters", [])]
            assert {p["name"] for p in params if p["in"] == "path"} == names, path
            assert op["operationId"] and "200" in op["responses"]
