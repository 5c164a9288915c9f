"""Client credentials grant (RFC 6749 §4.4): machine-to-machine tokens, no user, no refresh, no ID token."""

from __future__ import annotations

from joserfc import jwt
from joserfc.jwk import KeySet


def _m2m(app, scope="profile email"):
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("Batch", [], grant_types=["client_credentials"], scope=scope)
        return c.client_id, secret


def test_client_credentials_token_is_a_revocable_jwt(app, client):
    cid, secret = _m2m(app)
    resp = client.post("/token", data={"grant_type": "client_credentials", "scope": "email"}, auth=(cid, secret))
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["scope"] == "email" and "refresh_token" not in body and "id_token" not in body
    claims = jwt.decode(body["access_token"], KeySet.import_key_set(client.get("/jwks.json").get_json()),
                        algorithms=["RS256"]).claims
    assert claims["sub"] == cid and claims["client_id"] == cid and claims["iss"] == "http://localhost"
    intro = client.post("/introspect", data={"token": body["access_token"]}, auth=(cid, secret)).get_json()
    assert intro["active"] is True and intro["sub"] == cid
    assert client.post("/revoke", data={"token": body["access_token"]}, auth=(cid, secret)).status_code == 200
    assert client.post("/introspect", data={"token": body["access_token"]}, auth=(cid, secret)).get_json() == {
        "active": False}


def test_client_credentials_refusals(app, client, public_rp, rp):
    cid, secret = _m2m(app)
    bad_scope = client.post("/token", data={"grant_type": "client_credentials", "scope": "phone"}, auth=(cid, secret))
    assert bad_scope.status_code == 400 and bad_scope.get_json()["error"] == "invalid_scope"
    wrong = client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret + "x"))
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_client"
    assert "Basic" in wrong.headers.get("WWW-Authenticate", "")
    public = client.post("/token", data={"grant_type": "client_credentials", "client_id": public_rp["client_id"]})
    assert public.status_code in (400, 401) and public.get_json()["error"] == "invalid_client"
    not_allowed = _m2m  # a client without the grant type
    from app.cli import create_client

    with app.app_context():
        c, s = create_client("Web only", ["https://w.example/cb"])
        wid = c.client_id
    resp = client.post("/token", data={"grant_type": "client_credentials"}, auth=(wid, s))
    assert resp.status_code == 400 and resp.get_json()["error"] == "unauthorized_client"
    assert not_allowed


def _count_tokens(app) -> int:
    from app.extensions import db
    from app.oauth2.models import Token

    with app.app_context():
        return db.session.execute(db.select(db.func.count()).select_from(Token)).scalar_one()


def test_a_client_credentials_token_writes_no_row_and_its_revocation_reaches_every_check(app, client):
    """No customer hangs on a machine token, so none is stored; revoking it still ends it everywhere."""
    cid, secret = _m2m(app, scope="admin email")
    before = _count_tokens(app)
    body = client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret)).get_json()
    assert _count_tokens(app) == before
    token = body["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/admin/api/users?email=x@example.com", headers=bearer).status_code == 404
    intro = client.post("/introspect", data={"token": token}, auth=(cid, secret)).get_json()
    assert intro["active"] is True and intro["client_id"] == cid and intro["scope"] == "admin email"
    assert intro["jti"] and intro["exp"] > intro["iat"]
    # Another client may not revoke it (RFC 7009 §2.1): the token stays active.
    other, other_secret = _m2m(app)
    client.post("/revoke", data={"token": token}, auth=(other, other_secret))
    assert client.post("/introspect", data={"token": token}, auth=(cid, secret)).get_json()["active"] is True
    assert client.post("/revoke", data={"token": token}, auth=(cid, secret)).status_code == 200
    assert client.post("/introspect", data={"token": token}, auth=(cid, secret)).get_json() == {"active": False}
    refused = client.get("/admin/api/users?email=x@example.com", headers=bearer)
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    # A fresh token of the same client is unaffected; revoking twice is still 200.
    fresh = client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret)).get_json()
    assert client.post("/introspect", data={"token": fresh["access_token"]}, auth=(cid, secret)).get_json()["active"]
    assert client.post("/revoke", data={"token": token}, auth=(cid, secret)).status_code == 200


def test_a_client_credentials_token_ends_with_its_client(make_app):
    app = make_app(IDP_CLIENT_CACHE_TTL=0)
    client = app.test_client()
    cid, secret = _m2m(app)
    rs, rs_secret = _m2m(app)  # a resource server that introspects
    token = client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret)).get_json()
    assert client.post("/introspect", data={"token": token["access_token"]}, auth=(rs, rs_secret)).get_json()["active"]
    assert app.test_cli_runner().invoke(args=["clients", "delete", cid]).exit_code == 0
    assert client.post("/introspect", data={"token": token["access_token"]},
                       auth=(rs, rs_secret)).get_json() == {"active": False}
