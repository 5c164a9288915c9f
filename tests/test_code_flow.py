"""The authorization code flow end to end: sign-in, consent, code, tokens, userinfo, refresh."""

from __future__ import annotations

import time

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.browser import Customer, callback_params, pkce_pair


def _jwks(client):
    return KeySet.import_key_set(client.get("/jwks.json").get_json())


def _login_flow(client, customer, rp, scope="openid profile email offline_access", **extra):
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    params = dict(response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"], scope=scope,
                  state="st-123", nonce="n-456", code_challenge=challenge, code_challenge_method="S256", **extra)
    resp = who.follow(who.authorize(**params))
    return callback_params(resp), verifier


def _exchange(client, rp, code, verifier):
    return client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                       "redirect_uri": rp["redirect_uri"], "code_verifier": verifier},
                       auth=(rp["client_id"], rp["client_secret"]))


def test_full_code_flow_with_pkce_nonce_userinfo_and_refresh(client, customer, rp):
    cb, verifier = _login_flow(client, customer, rp)
    assert cb["state"] == "st-123" and cb["iss"] == "http://localhost" and len(cb["code"]) >= 43
    resp = _exchange(client, rp, cb["code"], verifier)
    assert resp.status_code == 200, resp.get_json()
    assert resp.headers["Cache-Control"] == "no-store"
    tok = resp.get_json()
    assert tok["token_type"] == "Bearer" and tok["expires_in"] > 0 and tok["refresh_token"]
    idt = jwt.decode(tok["id_token"], _jwks(client), algorithms=["RS256"])
    c = idt.claims
    assert idt.header["kid"] and idt.header["alg"] == "RS256"
    assert c["iss"] == "http://localhost" and c["aud"] == rp["client_id"] and c["sub"] == customer["sub"]
    assert c["nonce"] == "n-456" and c["amr"] == ["pwd"] and c["acr"] == "1" and c["sid"]
    assert abs(c["auth_time"] - time.time()) < 60 and c["at_hash"]
    assert "email" not in c and "name" not in c  # scope claims go to userinfo in the code flow
    at = jwt.decode(tok["access_token"], _jwks(client), algorithms=["RS256"])
    assert at.header["typ"] == "at+jwt" and at.claims["client_id"] == rp["client_id"] and at.claims["jti"]

    info = client.get("/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]})
    assert info.status_code == 200
    body = info.get_json()
    assert body["sub"] == customer["sub"] and body["email"] == customer["email"] and body["email_verified"] is True
    assert body["name"] == "Ada Lovelace" and isinstance(body["updated_at"], int)
    assert "phone_number" not in body and "address" not in body  # not granted

    time.sleep(1)
    ref = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                      auth=(rp["client_id"], rp["client_secret"]))
    assert ref.status_code == 200, ref.get_json()
    new = ref.get_json()
    assert new["refresh_token"] != tok["refresh_token"] and ref.headers["Cache-Control"] == "no-store"
    c2 = jwt.decode(new["id_token"], _jwks(client), algorithms=["RS256"]).claims
    assert c2["auth_time"] == c["auth_time"] and c2["sub"] == c["sub"] and c2["iat"] > c["iat"]
    assert "nonce" not in c2


def test_an_access_token_is_not_accepted_as_id_token_hint(client, customer, rp):
    cb, verifier = _login_flow(client, customer, rp, scope="openid")
    tok = _exchange(client, rp, cb["code"], verifier).get_json()
    resp = client.get("/authorize", query_string={
        "response_type": "code", "client_id": rp["client_id"], "redirect_uri": rp["redirect_uri"], "scope": "openid",
        "prompt": "none", "id_token_hint": tok["access_token"], "state": "s"})
    assert callback_params(resp)["error"] == "invalid_request"
    ok = client.get("/authorize", query_string={
        "response_type": "code", "client_id": rp["client_id"], "redirect_uri": rp["redirect_uri"], "scope": "openid",
        "prompt": "none", "id_token_hint": tok["id_token"], "state": "s"})
    assert "code" in callback_params(ok)
    logout = client.get("/logout", query_string={"id_token_hint": tok["access_token"],
                                                 "post_logout_redirect_uri": "https://shop.example/bye"})
    assert logout.status_code == 400 and "Location" not in logout.headers


def test_a_sign_in_does_not_bring_back_a_request_finished_meanwhile_in_another_tab(app, client, customer, rp,
                                                                                    monkeypatch):
    """Two tabs of one browser on one pending request: while this tab's password is being checked, the other
    finishes the request (its code is issued, the interaction ends). This sign-in must not write the interaction
    back, or a second resume would answer the same request again."""
    from app import interactions
    from app.accounts import service
    from tests.support.browser import csrf_token, interaction_id

    page, _ = Customer(client, customer["email"], customer["password"]).start(rp, login=False)
    html = page.get_data(as_text=True)
    iid = interaction_id(html)
    check = service.authenticate

    def finished_meanwhile(email, password):
        user = check(email, password)
        interactions.finish({"id": iid})  # what the other tab's resume did, during the password check
        return user
    monkeypatch.setattr(service, "authenticate", finished_meanwhile)
    signed_in = client.post(f"/login?interaction={iid}", data={
        "csrf_token": csrf_token(html), "email": customer["email"], "password": customer["password"],
        "interaction": iid})
    assert signed_in.status_code == 303 and "/authorize/resume" in signed_in.headers["Location"]
    again = client.get(signed_in.headers["Location"].replace("http://localhost", ""))
    assert again.status_code == 400 and "Location" not in again.headers
    with app.app_context():
        from app.store import store

        assert store().get(interactions.PREFIX + iid) is None
