"""Account centre: connected apps and withdrawals."""

from tests.support.browser import Customer, callback_params, csrf_token, pkce_pair


def _sign_in_app(client, customer, rp, scope):
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    cb = callback_params(who.follow(who.authorize(
        response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"], scope=scope,
        code_challenge=challenge, code_challenge_method="S256")))
    return client.post("/token", data={"grant_type": "authorization_code", "code": cb["code"],
                                       "redirect_uri": rp["redirect_uri"], "code_verifier": verifier},
                       auth=(rp["client_id"], rp["client_secret"])).get_json()


def test_account_centre_requires_sign_in_and_comes_back(client, customer):
    resp = client.get("/account/apps")
    assert resp.status_code == 303 and "/login?next=/account/apps" in resp.headers["Location"]
    page = client.get(resp.headers["Location"])
    back = client.post(resp.headers["Location"], data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                                       "email": customer["email"], "password": customer["password"]})
    assert back.status_code == 303 and back.headers["Location"] == "/account/apps"
    evil = client.get("/login?next=https://evil.example/")
    assert evil.status_code == 200  # the parameter is ignored, never used as a redirect target


def _brand_app(app, name="Web Shop", uri="https://shop.example/cb"):
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client(name, [uri], scope="openid email phone offline_access marketing analytics")
        return {"client_id": c.client_id, "client_secret": secret, "redirect_uri": uri}


def test_connected_apps_lists_and_withdraws_everything(app, client, customer):
    rp = _brand_app(app)
    tok = _sign_in_app(client, customer, rp, "openid email offline_access marketing")
    page = client.get("/account/apps")
    html = page.get_data(as_text=True)
    assert "Web Shop" in html and "Marketing messages" in html and "Your email address" in html
    resp = client.post("/account/apps/withdraw", data={"csrf_token": csrf_token(html), "client_id": rp["client_id"]})
    assert resp.status_code == 303
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]}).status_code == 401
    ref = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                      auth=(rp["client_id"], rp["client_secret"]))
    assert ref.status_code == 400 and ref.get_json()["error"] == "invalid_grant"
    assert "Web Shop" not in client.get("/account/apps").get_data(as_text=True)
