"""Bearer access tokens for this server's own JSON APIs (RFC 6750 §2.1 and §3).

The token travels in the ``Authorization`` header only: never in the query
string (it would land in logs and browser history) and, for these APIs, never
in a form body. Failures answer with a JSON body and a ``WWW-Authenticate:
Bearer`` challenge: no token → 401 without an error code (§3.1), a bad,
expired or revoked token → 401 ``invalid_token``, a live token without the
needed scope → 403 ``insufficient_scope`` naming that scope.
"""

from __future__ import annotations

import functools
from typing import Callable

from flask import g, request

from .errors import clean_description, json_error
from .oauth2 import tokens


class BearerError(Exception):
    def __init__(self, status: int, error: str | None, description: str, scope: str | None = None):
        super().__init__(description)
        self.status, self.error, self.description, self.scope = status, error, description, scope


def challenge(realm: str, error: str | None = None, description: str | None = None,
              scope: str | None = None) -> str:
    value = f'Bearer realm="{realm}"'
    if error:
        value += f', error="{error}"'
        if description:
            value += f', error_description="{clean_description(description)}"'
    if scope:
        value += f', scope="{scope}"'
    return value


def error_response(realm: str, exc: BearerError):
    # Without credentials §3.1 wants no error code in the challenge; the JSON body still says what to do.
    return json_error(exc.error or "unauthorized", exc.description, exc.status,
                      {"WWW-Authenticate": challenge(realm, exc.error, exc.description, exc.scope)})


def token_value() -> str:
    """The bearer token of this request, or BearerError."""
    if "access_token" in request.args:
        raise BearerError(400, "invalid_request", "Send the access token in the Authorization header, never in the URL")
    header = request.headers.get("Authorization", "")
    if not header:
        raise BearerError(401, None, "An access token is required: Authorization: Bearer <token>")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer":
        raise BearerError(401, None, "An access token is required: Authorization: Bearer <token>")
    if not value or " " in value:
        raise BearerError(400, "invalid_request", "Send exactly one access token after Bearer")
    return value


def authenticate(scope: str, *, subject: str = "user"):
    """(claims, Token row) of the request's live access token carrying ``scope``, or BearerError.

    ``subject`` is ``"user"`` (a customer's token) or ``"client"`` (a client-credentials token, no customer).
    A customer's token comes with ``row.granted``, their consent to its app now (``tokens.access_row``).
    """
    found = tokens.active_access_token(token_value(), with_grants=subject == "user")
    if found is None:
        raise BearerError(401, "invalid_token", "The access token is invalid, expired or revoked")
    claims, row = found
    wrong_subject = (row.user_id is None) if subject == "user" else (row.user_id is not None)
    if scope not in (row.scope or "").split() or wrong_subject:
        whose = "a customer's" if subject == "user" else "a client credentials"
        raise BearerError(403, "insufficient_scope", f"This API needs {whose} access token with the {scope} scope",
                          scope)
    return claims, row


def require(scope: str, realm: str, *, subject: str = "user", check: Callable | None = None):
    """Decorator: the view runs with ``g.token_claims`` and ``g.token``.

    ``check(claims, row)`` may add the caller's own conditions by raising BearerError.
    """

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            try:
                g.token_claims, g.token = authenticate(scope, subject=subject)
                if check is not None:
                    check(g.token_claims, g.token)
            except BearerError as exc:
                return error_response(realm, exc)
            return view(*args, **kwargs)

        return wrapper

    return decorator
