"""The ceiling of our stack for `make bench`: a minimal Flask app whose POST / signs one RS256 JWT.

Served by the same gunicorn settings as the IdP, it costs one HTTP round trip through gunicorn,
Werkzeug and Flask, one form parse, one JSON response and one RS256 signature with joserfc (RFC 7515)
— what a client-credentials token endpoint cannot do without. Run: gunicorn bench.ceiling:app
"""

from __future__ import annotations

import secrets
import time

from flask import Flask, jsonify, request
from joserfc import jwt
from joserfc.jwk import RSAKey

app = Flask(__name__)
_key = RSAKey.generate_key(2048, parameters={"kid": "ceiling", "use": "sig", "alg": "RS256"}, private=True)
ISSUER = "http://localhost"


@app.post("/")
def sign_one():
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": request.form.get("client_id", "bench"), "aud": ISSUER, "iat": now,
              "exp": now + 600, "jti": secrets.token_urlsafe(16), "scope": request.form.get("scope", ""),
              "client_id": "bench"}
    token = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": "ceiling"}, claims, _key)
    resp = jsonify(access_token=token, token_type="Bearer", expires_in=600)
    resp.headers["Cache-Control"] = "no-store"
    return resp
