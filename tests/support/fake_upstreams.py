"""Small real HTTP fakes of GitHub, Facebook and Sign in with Apple (one threaded server, three path prefixes).

    with FakeUpstreams() as fake:
        fake.url + "/github/authorize" …

Each prefix has an OAuth 2.0 authorization endpoint that approves at once (the customer is
``fake.users[prefix]``), a token endpoint that checks the code, the redirect URI, PKCE (S256) and
the client's credentials — for Apple the client secret JWT (ES256, iss = team id, kid = key id,
sub = client id, aud = https://appleid.apple.com, short exp) against the operator's public key —
and the provider's profile API: GitHub ``/user`` and ``/user/emails``, Facebook Graph ``/me``,
Apple's JWKS (ID tokens are RS256 with a test key; ``fake.id_token_overrides`` changes claims).
Apple's authorization endpoint answers with JSON ``{"action", "fields"}``: the form it would post.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

APPLE_ISSUER = "https://appleid.apple.com"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class FakeUpstreams:
    def __init__(self):
        self.clients = {
            "github": {"client_id": "gh-client", "client_secret": "gh-secret"},
            "facebook": {"client_id": "fb-client", "client_secret": "fb-secret"},
            "apple": {"client_id": "com.example.signin", "team_id": "TEAM123456", "key_id": "KEY1234567"},
        }
        self.apple_key = ECKey.generate_key("P-256", private=True)     # the operator's key (client secret JWT)
        self.signing_key = RSAKey.generate_key(2048, private=True, parameters={"kid": "fake-rsa-1"})
        self.users = {
            "github": {"user": {"id": 4242, "login": "octo", "name": "Octo Cat",
                                "avatar_url": "https://avatars.example/octo.png", "email": "public@example.org"},
                       "emails": [{"email": "octo@example.org", "primary": True, "verified": True}]},
            "facebook": {"me": {"id": "10001", "name": "Fay Book", "first_name": "Fay", "last_name": "Book",
                                "email": "fay@example.org",
                                "picture": {"data": {"url": "https://graph.example/fay.jpg"}}}},
            "apple": {"sub": "001234.apple.sub", "email": "apple.user@privaterelay.appleid.com",
                      "email_verified": "true", "name": {"firstName": "Ann", "lastName": "Apple"}},
        }
        self.id_token_overrides: dict = {}
        self.deny = False
        self.codes: dict[str, dict] = {}
        self.tokens: dict[str, str] = {}
        self.apple_seen: set[str] = set()   # Apple sends the user's name only on the first authorization
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://localhost:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def __enter__(self) -> "FakeUpstreams":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def apple_private_key_pem(self) -> bytes:
        return self.apple_key.as_pem(private=True)

    # -- behaviour --------------------------------------------------------------------------------------------------

    def _authorize(self, prefix: str, q: dict) -> tuple[int, dict, bytes]:
        client = self.clients[prefix]
        redirect_uri, state = q.get("redirect_uri", ""), q.get("state", "")
        if q.get("client_id") != client["client_id"] or q.get("code_challenge_method") != "S256" \
                or not q.get("code_challenge"):
            return 400, {}, b'{"error": "invalid_request"}'
        fields = {"state": state}
        if self.deny:
            fields["error"] = "access_denied"
        else:
            code = secrets.token_urlsafe(16)
            self.codes[code] = {"prefix": prefix, "redirect_uri": redirect_uri, "challenge": q["code_challenge"],
                                "nonce": q.get("nonce")}
            fields["code"] = code
        if prefix == "apple":
            if q.get("response_mode") != "form_post":
                return 400, {}, b'{"error": "invalid_request", "error_description": "form_post required"}'
            user = self.users["apple"]
            if "code" in fields and user["sub"] not in self.apple_seen:
                self.apple_seen.add(user["sub"])
                fields["user"] = json.dumps({"name": user["name"], "email": user["email"]})
            return 200, {"Content-Type": "application/json"}, json.dumps({"action": redirect_uri,
                                                                          "fields": fields}).encode()
        return 302, {"Location": redirect_uri + "?" + urlencode(fields)}, b""

    def _check_apple_secret(self, value: str) -> bool:
        c = self.clients["apple"]
        try:
            token = jwt.decode(value, self.apple_key, algorithms=["ES256"])
        except (JoseError, ValueError):
            return False
        claims, now = token.claims, time.time()
        return (token.header.get("kid") == c["key_id"] and claims.get("iss") == c["team_id"]
                and claims.get("sub") == c["client_id"] and claims.get("aud") == APPLE_ISSUER
                and claims.get("exp", 0) > now and claims.get("exp", 0) - claims.get("iat", 0) <= 3600)

    def _token(self, prefix: str, form: dict) -> tuple[int, dict]:
        client = self.clients[prefix]
        if form.get("client_id") != client["client_id"]:
            return 401, {"error": "invalid_client"}
        if prefix == "apple":
            if not self._check_apple_secret(form.get("client_secret", "")):
                return 401, {"error": "invalid_client"}
        elif form.get("client_secret") != client["client_secret"]:
            return 401, {"error": "invalid_client"}
        code = self.codes.pop(form.get("code", ""), None)
        if code is None or code["prefix"] != prefix or code["redirect_uri"] != form.get("redirect_uri") \
                or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        if s256(form.get("code_verifier", "")) != code["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE"}
        access = secrets.token_urlsafe(16)
        self.tokens[access] = prefix
        out = {"access_token": access, "token_type": "bearer", "expires_in": 3600}
        if prefix == "apple":
            user, now = self.users["apple"], int(time.time())
            claims = {"iss": APPLE_ISSUER, "aud": client["client_id"], "exp": now + 600, "iat": now,
                      "sub": user["sub"], "nonce": code["nonce"], "email": user["email"],
                      "email_verified": user["email_verified"], "is_private_email": "true",
                      "auth_time": now, "nonce_supported": True, **self.id_token_overrides}
            out["id_token"] = jwt.encode({"alg": "RS256", "kid": "fake-rsa-1"}, claims, self.signing_key,
                                         algorithms=["RS256"])
        return 200, out

    def _api(self, prefix: str, path: str, headers) -> tuple[int, object]:
        auth = headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        if self.tokens.get(token) != prefix:
            return 401, {"message": "Bad credentials"}
        if prefix == "github" and path == "/api/user":
            return 200, self.users["github"]["user"]
        if prefix == "github" and path == "/api/user/emails":
            return 200, self.users["github"]["emails"]
        if prefix == "facebook" and path == "/graph/me":
            return 200, self.users["facebook"]["me"]
        return 404, {"message": "Not Found"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status, body, headers=None):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self):
                parts = urlsplit(self.path)
                prefix, _, rest = parts.path.lstrip("/").partition("/")
                return prefix, "/" + rest, {k: v[0] for k, v in parse_qs(parts.query).items()}

            def do_GET(self):
                prefix, path, q = self._route()
                fake.requests.append(("GET", self.path))
                if prefix not in fake.clients:
                    return self._send(404, {"error": "not_found"})
                if path == "/authorize":
                    status, headers, body = fake._authorize(prefix, q)
                    return self._send(status, body, headers)
                if prefix == "apple" and path == "/keys":
                    return self._send(200, {"keys": [fake.signing_key.as_dict(private=False)]})
                status, body = fake._api(prefix, path, self.headers)
                return self._send(status, body)

            def do_POST(self):
                prefix, path, _ = self._route()
                fake.requests.append(("POST", self.path))
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if prefix not in fake.clients or path != "/token":
                    return self._send(404, {"error": "not_found"})
                status, body = fake._token(prefix, form)
                return self._send(status, body)

        return Handler
