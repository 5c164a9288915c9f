"""private_key_jwt client authentication (RFC 7523 §2.2, OIDC Core §9): keys, audience, expiry, jti replay."""

from __future__ import annotations

import time
import uuid

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from tests.support.browser import callback_params
from tests.test_conformance_rules import ISSUER, assert_json_error, browse, id_claims

TOKEN_URL = ISSUER + "/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def rsa_key():
    return RSAKey.generate_key(2048, auto_kid=True)


def _public(key) -> dict:
    return key.as_dict(private=False)


def _register(app, **meta):
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("JWT Shop", ["https://jwt.example/cb"], auth_method="private_key_jwt",
                                  grant_types=["authorization_code", "client_credentials"], **meta)
        assert secret is None
        return c.client_id


def assertion(client_id, key, *, alg="RS256", aud=TOKEN_URL, exp_in=60, jti=None, drop=(), **override):
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + exp_in,
              "jti": jti or uuid.uuid4().hex}
    claims.update(override)
    claims = {k: v for k, v in claims.items() if k not in drop}
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


def _cc(client, client_id, token, **extra):
    return client.post("/token", data={"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                                       "client_assertion": token, "client_id": client_id, **extra})


def _refused(resp):
    assert resp.status_code in (400, 401), resp.status_code
    assert_json_error(resp, resp.status_code, "invalid_client")
    assert "access_token" not in resp.get_json()


def test_code_flow_with_inline_jwks(client, app, customer, rsa_key):
    cid = _register(app, jwks={"keys": [_public(rsa_key)]})
    rp = {"client_id": cid, "redirect_uri": "https://jwt.example/cb"}
    cb = callback_params(browse(client, customer, rp))
    resp = client.post("/token", data={"grant_type": "authorization_code", "code": cb["code"],
                                       "redirect_uri": rp["redirect_uri"], "client_assertion_type": ASSERTION_TYPE,
                                       "client_assertion": assertion(cid, rsa_key)})
    assert resp.status_code == 200, resp.get_json()
    assert id_claims(client, resp.get_json())["aud"] == cid


@pytest.mark.parametrize("aud", [TOKEN_URL, ISSUER, [TOKEN_URL], [ISSUER]])
def test_accepted_audiences(client, app, rsa_key, aud):
    cid = _register(app, jwks={"keys": [_public(rsa_key)]})
    resp = _cc(client, cid, assertion(cid, rsa_key, aud=aud))
    assert resp.status_code == 200, resp.get_json()
    assert resp.headers["Cache-Control"] == "no-store"


def test_ec_key(client, app):
    key = ECKey.generate_key("P-256", auto_kid=True)
    cid = _register(app, jwks={"keys": [_public(key)]})
    assert _cc(client, cid, assertion(cid, key, alg="ES256")).status_code == 200


@pytest.mark.parametrize("aud", [[TOKEN_URL, "https://evil.example"], ["https://evil.example", ISSUER],
                                 "https://evil.example/token", ISSUER + "/", "http://localhost:5000/token", []])
def test_foreign_audiences_are_refused(client, app, rsa_key, aud):
    cid = _register(app, jwks={"keys": [_public(rsa_key)]})
    _refused(_cc(client, cid, assertion(cid, rsa_key, aud=aud)))


def test_replayed_jti_is_refused(client, app, rsa_key):
    cid = _register(app, jwks={"keys": [_public(rsa_key)]})
    token = assertion(cid, rsa_key)
    assert _cc(client, cid, token).status_code == 200
    _refused(_cc(client, cid, token))
    # the same jti in a freshly signed assertion is a replay too
    jti = uuid.uuid4().hex
    assert _cc(client, cid, assertion(cid, rsa_key, jti=jti)).status_code == 200
    _refused(_cc(client, cid, assertion(cid, rsa_key, jti=jti, exp_in=90)))


def test_expired_assertion_is_refused(client, app, rsa_key):
    cid = _register(app, jwks={"keys": [_public(rsa_key)]})
    _refused(_cc(client, cid, assertion(cid, rsa_key, exp_in=-300)))


def test_wrong_key_is_refused(client, app, rsa_key):
    cid = _register(app, jwks={"keys": [_public(rsa_key)]})
    other = RSAKey.generate_key(2048, auto_kid=True)
    _refused(_cc(client, cid, assertion(cid, other)))
    # even when the attacker reuses the registered kid
    other_same_kid = RSAKey.import_key(other.as_dict(private=True) | {"kid": rsa_key.kid})
    _refused(_cc(client, cid, assertion(cid, other_same_kid)))


@pytest.mark.parametrize("override", [{"iss": "someone-else"}, {"drop": ("jti",)}, {"drop": ("exp",)},
                                      {"sub": 42}, {"drop": ("sub",)}, {"nbf": 4102444800}])
def test_bad_claims_are_refused(client, app, rsa_key, override):
    cid = _register(app, jwks={"keys": [_public(rsa_key)]})
    token = assertion(cid, rsa_key, **override)
    resp = _cc(client, cid, token)
    _refused(resp)


def test_unsigned_or_hmac_assertions_are_refused(client, app, rsa_key):
    import base64
    import json

    cid = _register(app, jwks={"keys": [_public(rsa_key)]})

    def b64(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    claims = {"iss": cid, "sub": cid, "aud": TOKEN_URL, "exp": int(time.time()) + 60, "jti": uuid.uuid4().hex}
    _refused(_cc(client, cid, b64({"alg": "none"}) + "." + b64(claims) + "."))
    from joserfc.jwk import OctKey

    hmac = OctKey.import_key(json.dumps(_public(rsa_key)).encode())
    forged = jwt.encode({"alg": "HS256"}, claims, hmac, algorithms=["HS256"])
    _refused(_cc(client, cid, forged))
    for garbage in ("x", "a.b.c", "e30.e30.", "." * 10):
        _refused(_cc(client, cid, garbage))


def test_secret_client_cannot_use_assertion_and_jwt_client_cannot_use_secret(client, app, rp, rsa_key):
    cid = _register(app, jwks={"keys": [_public(rsa_key)]})
    resp = client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, "anything"))
    assert_json_error(resp, 401, "invalid_client")
    _refused(_cc(client, rp["client_id"], assertion(rp["client_id"], rsa_key)))


class _FakeResponse:
    def __init__(self, data):
        self._data = data

    def raise_for_status(self):
        pass

    def json(self):
        return self._data


def test_jwks_uri_client_and_key_rotation_refetch(client, app, rsa_key, monkeypatch):
    from app.oauth2 import client_auth

    uri = "https://jwt.example/jwks-" + uuid.uuid4().hex
    served = {"keys": [_public(rsa_key)]}
    fetched = []

    def fake_get(url, **kw):
        fetched.append(url)
        return _FakeResponse(served)

    monkeypatch.setattr(client_auth.requests, "get", fake_get)
    cid = _register(app, jwks_uri=uri)
    assert _cc(client, cid, assertion(cid, rsa_key)).status_code == 200
    assert _cc(client, cid, assertion(cid, rsa_key)).status_code == 200
    assert fetched == [uri]  # cached

    # the RP rotates: a new kid must trigger one re-fetch (rate-limited, so age the cache past the limit)
    new_key = RSAKey.generate_key(2048, auto_kid=True)
    served = {"keys": [_public(new_key)]}
    at, data = client_auth._jwks_cache[uri]
    client_auth._jwks_cache[uri] = (at - client_auth.MIN_REFETCH - 1, data)
    resp = _cc(client, cid, assertion(cid, new_key))
    assert resp.status_code == 200, resp.get_json()
    assert len(fetched) == 2
    # an unknown kid right after a fetch does not hammer the RP
    stranger = RSAKey.generate_key(2048, auto_kid=True)
    _refused(_cc(client, cid, assertion(cid, stranger)))
    assert len(fetched) == 2


def test_unreachable_jwks_uri_is_invalid_client_not_500(client, app, rsa_key, monkeypatch):
    from app.oauth2 import client_auth

    def boom(url, **kw):
        raise client_auth.requests.ConnectionError("down")

    monkeypatch.setattr(client_auth.requests, "get", boom)
    cid = _register(app, jwks_uri="https://jwt.example/down-" + uuid.uuid4().hex)
    _refused(_cc(client, cid, assertion(cid, rsa_key)))
