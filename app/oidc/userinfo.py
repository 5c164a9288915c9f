"""The UserInfo endpoint (OIDC Core §5.3) with RFC 6750 bearer token handling."""

from __future__ import annotations

from flask import jsonify, request

from ..consent import policy
from ..errors import json_error
from ..oauth2 import tokens
from ..oauth2 import clients
from .claims import claims_for


def _bearer_error(status: int, error: str | None = None, description: str | None = None):
    challenge = 'Bearer realm="userinfo"'
    if error:
        challenge += f', error="{error}"'
        if description:
            challenge += f', error_description="{description}"'
    resp = json_error(error or "invalid_token", description, status, {"WWW-Authenticate": challenge})
    if not error:
        resp = jsonify({})
        resp.status_code = status
        resp.headers["WWW-Authenticate"] = challenge
    return resp


def _access_token() -> tuple[str | None, str | None]:
    """(token, problem). Header (RFC 6750 §2.1) or form body (§2.2); never the query string."""
    header = request.headers.get("Authorization", "")
    body = request.form.get("access_token") if request.method == "POST" and \
        request.mimetype == "application/x-www-form-urlencoded" else None
    from_header = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, "invalid_request"
        from_header = value.strip()
    if from_header and body:
        return None, "invalid_request"  # §2: a client MUST NOT use more than one method
    if body is not None and len(request.form.getlist("access_token")) > 1:
        return None, "invalid_request"
    return from_header or body, None


def userinfo():
    token, problem = _access_token()
    if problem:
        return _bearer_error(400, problem, "Send the access token once, in the Authorization header")
    if not token:
        return _bearer_error(401)
    found = tokens.active_access_token(token, with_grants=True, autocommit=True)  # reads only: no transaction
    if found is None:
        return _bearer_error(401, "invalid_token", "The access token is invalid, expired or revoked")
    claims, row = found
    if row.user_id is None or "openid" not in row.scope.split():
        return _bearer_error(403, "insufficient_scope", "The access token does not carry the openid scope")
    user = row.customer
    client = clients.lookup(row.client_id)
    if user is None or client is None:
        return _bearer_error(401, "invalid_token", "The access token is no longer valid")
    # What the customer allows now, not when the token was minted: a withdrawal applies at once.
    scope = " ".join(policy.still_granted(user, client, row.scope.split(), row.granted))
    body = {"sub": user.sub, **claims_for(user, scope, row.claims or {}, "userinfo")}
    purposes = policy.purposes_claim(user.id, client, scope)
    if purposes is not None:
        body[tokens.PURPOSES_CLAIM] = purposes
    resp = jsonify(body)
    resp.headers["Cache-Control"] = "no-store"
    return resp
