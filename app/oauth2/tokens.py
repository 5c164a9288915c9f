"""Issuing and checking tokens.

Access tokens are JWTs per RFC 9068 (``typ: at+jwt``). A customer's access
token has a row in ``tokens`` named by its ``jti`` (consent withdrawal, sign-out
and erasure revoke rows); refresh tokens are opaque and stored as keyed hashes.
ID tokens follow OpenID Connect Core §2 and §3.1.3.6.

A client-credentials access token has no row: nothing about a customer hangs on
it, so the token endpoint answers without touching the database. Its ``jti``
starts with ``STATELESS_JTI_PREFIX``; revoking it puts the ``jti`` on a deny-list
in the short-lived store until the token would have expired, and it stops being
active when its client is deleted (within the client cache's bound).
"""

from __future__ import annotations

import functools
import time

import sqlalchemy as sa
from authlib.oidc.core.util import create_half_hash
from flask import current_app
from joserfc import jwt
from joserfc.errors import JoseError

from .. import observability
from ..accounts.models import User
from ..consent import policy
from ..crypto import keyed_hash, random_token
from ..extensions import db, without_transaction
from ..keys import keyring
from ..oidc.claims import claims_for
from ..store import store
from . import clients
from .models import Token


#: The claim that tells an app which brand purposes the customer granted it, and since when.
PURPOSES_CLAIM = "consented_purposes"

#: ``jti`` prefix of access tokens that have no row (client credentials). ``random_token`` never makes a ".".
STATELESS_JTI_PREFIX = "cc."
_DENY_KEY = "revoked-jti:"
# Core statements on the hot path, built once: the ORM's unit of work, and even building a statement with
# its values per request, cost more CPU than the round trip. Parameters go in at execution.
_TOKENS = Token.__table__
_INSERT = _TOKENS.insert()
# Claim a live refresh token: of two requests presenting it, exactly one changes the row.
_CLAIM = (
    _TOKENS.update()
    .where(_TOKENS.c.id == sa.bindparam("b_old"), _TOKENS.c.rotated_at.is_(None),
           _TOKENS.c.revoked_at.is_(None), _TOKENS.c.refresh_expires_at > sa.bindparam("b_now"))
    .values(rotated_at=sa.bindparam("b_now"))
)
# An access token's row with its customer and (for userinfo and the Account API) their consent to its app.
_ACCESS_ROW = db.select(Token, User).outerjoin(User, User.id == Token.user_id).where(Token.id == sa.bindparam("b_jti"))
_ACCESS_ROW_WITH_GRANTS = _ACCESS_ROW.add_columns(policy.grants_of(Token.user_id, Token.client_id))
# A refresh token's row with its customer and their consent to its app: everything a refresh reads, at once.
_REFRESH_ROW = (db.select(Token, User, policy.grants_of(Token.user_id, Token.client_id))
                .outerjoin(User, User.id == Token.user_id).where(Token.refresh_hash == sa.bindparam("b_hash")))


def _row_values(columns: tuple[str, ...]):
    """A SELECT of a token row's values as bound parameters (``v_<column>``, see ``_bound``), for INSERT … SELECT."""
    return sa.select(*(sa.bindparam("v_" + c, type_=_TOKENS.c[c].type) for c in columns))


def _bound(row: dict) -> dict:
    return {"v_" + k: v for k, v in row.items()}


@functools.cache
def _rotation(columns: tuple[str, ...]):
    """PostgreSQL: claim the old refresh token and insert its successor's row in one statement.

    A data-modifying CTE: the INSERT selects from the UPDATE's RETURNING, so the new row exists exactly when the
    claim succeeded, and the statement alone is atomic (no BEGIN or COMMIT around it). Built once per set of
    columns (``mint`` always makes the same ones for a refresh).
    """
    claimed = _CLAIM.returning(_TOKENS.c.id).cte("claimed")
    new = _row_values(columns).select_from(claimed)
    return _TOKENS.insert().from_select(list(columns), new).returning(_TOKENS.c.id)


def issuer() -> str:
    return current_app.config["IDP_ISSUER"]


def sign(claims: dict, alg: str, typ: str = "JWT") -> str:
    key = keyring().signing_key(alg)
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": typ}, claims, key, algorithms=[alg])


def save(row: dict | None, grant_type: str) -> None:
    """Write the row of newly minted tokens (None: a stateless token, nothing to write) and count them.

    The row is written in the request's transaction, not committed: the token endpoint commits once per request.
    """
    if row is not None:
        # A Core INSERT in the request's transaction: the ORM's unit of work cost more than the statement itself.
        db.session.execute(_INSERT, row)
    observability.count_token(grant_type)


def mint(*, client, user, scope: str, grant_type: str, family_id: str | None = None,
         include_refresh: bool = False, context: dict | None = None,
         refresh_scope: str | None = None) -> tuple[dict, dict | None]:
    """The token response members (no id_token yet) and the row to store for them (None: stateless). Writes
    nothing: ``save`` writes the row, and a refresh writes it together with its claim (``rotate``).

    ``scope`` is the access token's; ``refresh_scope`` the refresh token's when it differs (a narrowed refresh).
    """
    claims, response, row = draft(client=client, user_id=user.id if user is not None else None, scope=scope,
                                  grant_type=grant_type, family_id=family_id, include_refresh=include_refresh,
                                  context=context, refresh_scope=refresh_scope)
    return finish(claims, response, user.sub if user is not None else client.client_id), row


def draft(*, client, user_id: int | None, scope: str, grant_type: str, family_id: str | None = None,
          include_refresh: bool = False, context: dict | None = None,
          refresh_scope: str | None = None) -> tuple[dict, dict, dict | None]:
    """``mint`` up to the signature: the access token's claims but its ``sub``, the response without the access
    token, and the row. None of the row depends on the customer's ``sub``, so a code exchange can write it in the
    same statement that reads the customer (``save_with_customer``) and sign afterwards (``finish``)."""
    cfg = current_app.config
    ctx = context or {}
    now = int(time.time())
    stateless = user_id is None and not include_refresh and grant_type == "client_credentials"
    jti = (STATELESS_JTI_PREFIX if stateless else "") + random_token(18)
    ttl = cfg["IDP_ACCESS_TOKEN_TTL"]
    claims = {"iss": issuer(), "aud": issuer(), "client_id": client.client_id,
              "iat": now, "exp": now + ttl, "jti": jti, "scope": scope}
    for name in ("auth_time", "acr", "amr", "sid"):
        if ctx.get(name):
            claims[name] = ctx[name]
    response = {"token_type": "Bearer", "expires_in": ttl, "scope": scope}
    if stateless:
        return claims, response, None
    row = dict(
        id=jti, family_id=family_id or random_token(18), client_id=client.client_id,
        user_id=user_id, grant_type=grant_type, scope=scope,
        claims=ctx.get("claims") or None, sid=ctx.get("sid"), auth_time=ctx.get("auth_time"),
        amr=ctx.get("amr"), acr=ctx.get("acr"), issued_at=now, access_expires_at=now + ttl,
    )
    if include_refresh:
        refresh = random_token(32)
        row["refresh_hash"] = keyed_hash(refresh, "refresh")
        row["refresh_expires_at"] = now + cfg["IDP_REFRESH_TOKEN_TTL"]
        row["refresh_scope"] = refresh_scope if refresh_scope not in (None, scope) else None
        response["refresh_token"] = refresh
    return claims, response, row


def finish(claims: dict, response: dict, sub: str) -> dict:
    """The token response of a ``draft``: its access token signed for ``sub`` (the customer's, or the client's)."""
    claims["sub"] = sub
    return {"access_token": sign(claims, current_app.config["IDP_ACCESS_TOKEN_ALG"], typ="at+jwt"), **response}


@functools.cache
def _insert_with_customer(columns: tuple[str, ...]):
    """PostgreSQL: insert a token row for a customer who exists and read them with their consent, in one statement.

    A data-modifying CTE (run once, whether or not the outer query reads it); the INSERT selects from ``users``,
    so nothing is written for a customer who is gone. The consent rows are read under a lock
    (``policy.grants_held``), so a withdrawal either waits for this statement, and then its revocation sees the
    new row, or is seen by it. Built once per set of columns."""
    users = User.__table__
    values = _row_values(columns).select_from(users).where(users.c.id == sa.bindparam("b_user"))
    saved = _TOKENS.insert().from_select(list(columns), values).returning(_TOKENS.c.id).cte("saved")
    return sa.select(User, policy.grants_held(sa.bindparam("b_user"), sa.bindparam("b_client")),
                     sa.select(sa.func.count()).select_from(saved).scalar_subquery()
                     ).where(User.id == sa.bindparam("b_user"))


def _customer_gone(error: sa.exc.IntegrityError) -> bool:
    """A foreign-key failure: the token row's customer was erased while it was being written."""
    return (getattr(error.orig, "sqlstate", None) == "23503"  # PostgreSQL foreign_key_violation
            or "FOREIGN KEY constraint failed" in str(error.orig))  # SQLite


def save_with_customer(row: dict, client) -> tuple[User | None, set[str]]:
    """Write ``row`` (a customer's new tokens) and read that customer with the items they allow ``client``; (None,
    set()) and nothing written if they are gone.

    The caller runs without a transaction (``without_transaction``), so the row is durable at once, and revokes it
    if what was read forbids the tokens (a withdrawn consent). On PostgreSQL one statement
    (``_insert_with_customer``). On SQLite the insert, then the read: writers queue there, so a withdrawal either
    committed before the insert, and the read sees it, or starts after it, and its revocation sees the row.
    """
    try:
        if db.session.get_bind().dialect.name == "postgresql":
            found = db.session.execute(_insert_with_customer(tuple(row)),
                                       {"b_user": row["user_id"], "b_client": client.client_id, **_bound(row)}).first()
            return (None, set()) if found is None else (found[0], policy.split(found[1]))
        db.session.execute(_INSERT, row)
    except sa.exc.IntegrityError as error:
        if not _customer_gone(error):
            raise
        db.session.rollback()
        return None, set()
    return policy.customer_with_grants(row["user_id"], client)


def rotate(old_id: str, as_of: int, row: dict) -> bool:
    """Claim the refresh token ``old_id`` and store ``row``, its successor's, atomically; False (nothing written)
    if the old token was rotated or revoked meanwhile.

    ``as_of`` is when the old token was found live: its expiry is judged at that instant, so a token that expires
    between that check and the claim is not mistaken for a reused one.
    """
    params = {"b_old": old_id, "b_now": as_of}
    if db.session.get_bind().dialect.name == "postgresql":
        claimed = db.session.execute(
            _rotation(tuple(row)), {**params, **_bound(row)}).first() is not None
    else:
        # SQLite has no data-modifying CTE: the claim, then the insert, in one transaction that the token endpoint
        # commits. Committing first ends the read (and its snapshot), so that the claim opens the write
        # transaction: in WAL mode a transaction that read and then writes fails when another connection wrote in
        # between. Nothing read before is used after, so no expired object is reloaded.
        db.session.commit()
        claimed = db.session.execute(_CLAIM, params).rowcount == 1
        if claimed:
            db.session.execute(_INSERT, row)
    if claimed:
        observability.count_token(row["grant_type"])
    return claimed


def id_token(*, client, user, scope: str, context: dict, access_token: str | None) -> str:
    """An ID token for ``user`` and ``client``, minted fresh (never cached). ``context`` is the authorization's
    (``auth_time``, ``acr``, ``amr``, ``sid``, requested ``claims``, ``nonce``), as its grant carries it."""
    alg = client.id_token_alg
    now = int(time.time())
    claims = {"iss": issuer(), "sub": user.sub, "aud": client.client_id, "azp": client.client_id,
              "iat": now, "exp": now + current_app.config["IDP_ID_TOKEN_TTL"]}
    for name in ("auth_time", "nonce", "acr", "amr", "sid"):
        if context.get(name):
            claims[name] = context[name]
    if access_token:
        claims["at_hash"] = create_half_hash(access_token, alg).decode()
    claims.update(claims_for(user, scope, context.get("claims") or {}, "id_token"))
    purposes = policy.purposes_claim(user.id, client, scope)
    if purposes is not None:
        claims[PURPOSES_CLAIM] = purposes
    return sign(claims, alg)


def _decode_own(value: str):
    """A JWT signed by one of our published keys with our issuer, or None. Expiry is the caller's business."""
    if not value or len(value) > 8192:
        return None
    try:
        token = jwt.decode(value, keyring().verification_keys(), algorithms=["RS256", "ES256"])
    except (JoseError, ValueError, TypeError):
        return None
    return token if token.claims.get("iss") == issuer() else None


def verify_id_token_hint(value: str) -> dict | None:
    """Claims of an ID token this server issued; expired ones are accepted (OIDC Core §3.1.2.1, RP-Initiated Logout §2)."""
    token = _decode_own(value)
    if token is None or token.header.get("typ") == "at+jwt" or not isinstance(token.claims.get("sub"), str):
        return None  # an access token is not an ID token
    return token.claims


def refresh_row(value: str) -> Token | None:
    """The row of a refresh token, whatever its state, with ``row.customer`` (a ``User``, or None if they are
    gone) and ``row.granted`` (the items they allow its app now), in one round trip; None if unknown."""
    if not value or len(value) > 256:
        return None
    found = db.session.execute(_REFRESH_ROW, {"b_hash": keyed_hash(value, "refresh")}).first()
    if found is None:
        return None
    row, row.customer, row.granted = found[0], found[1], policy.split(found[2])
    return row


def decode_access_token(value: str) -> dict | None:
    """Verified claims of one of our JWT access tokens, or None (bad signature, type, issuer or expired)."""
    token = _decode_own(value)
    if token is None or token.header.get("typ") != "at+jwt":
        return None
    claims = token.claims
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        return None
    return claims


def access_row(claims: dict, with_grants: bool = False, autocommit: bool = False) -> Token | None:
    """The row of a verified access token: stored, or (stateless) rebuilt from its claims; None if unknown.

    ``row.customer`` is its customer (a ``User``), or None for a client's own token or a deleted customer.
    With ``with_grants``, ``row.granted`` is the set of items the customer allows the token's app now, read in
    the same round trip (else None: not read).

    A rebuilt row is transient: read it, never add it to a session. It is None once revoked or once its
    client is gone.

    ``autocommit``: the caller only reads, so the read runs without a transaction (``without_transaction``:
    no BEGIN and ROLLBACK round trips). A stateless token reads no database and takes no connection.
    """
    jti = claims.get("jti")
    if not isinstance(jti, str):
        return None
    if not jti.startswith(STATELESS_JTI_PREFIX):
        # The customer comes in the same round trip (``row.customer``): every caller reads them next.
        if autocommit:
            without_transaction()
        found = db.session.execute(_ACCESS_ROW_WITH_GRANTS if with_grants else _ACCESS_ROW, {"b_jti": jti}).first()
        if found is None:
            return None
        row, row.customer = found[0], found[1]
        row.granted = policy.split(found[2]) if with_grants else None
        return row
    client_id = claims.get("client_id")
    if clients.lookup(client_id) is None or store().get(_DENY_KEY + jti) is not None:
        return None
    row = Token(id=jti, family_id=jti, client_id=client_id, user_id=None, grant_type="client_credentials",
                scope=claims.get("scope") or "", issued_at=claims.get("iat"), access_expires_at=claims["exp"])
    row.customer, row.granted = None, set()
    return row


def revoke_access(row: Token) -> None:
    """End one access token (not its family)."""
    now = int(time.time())
    if row.id.startswith(STATELESS_JTI_PREFIX):
        if row.access_expires_at > now:
            store().put(_DENY_KEY + row.id, {"at": now}, ttl=row.access_expires_at - now + 1)
    elif row.revoked_at is None:
        row.revoked_at = now
        db.session.commit()


def active_access_token(value: str, with_grants: bool = False,
                        autocommit: bool = False) -> tuple[dict, Token] | None:
    """Claims and row of a live (unexpired, unrevoked) access token (``with_grants``, ``autocommit``: see
    ``access_row``)."""
    claims = decode_access_token(value)
    if claims is None:
        return None
    row = access_row(claims, with_grants, autocommit)
    if row is None or not row.access_active():
        return None
    return claims, row


def revoke_where(*conditions) -> int:
    """Revoke every live token row matching ``conditions``, in the request's transaction (not committed), including
    the successor a refresh rotation is committing meanwhile. Returns the number of rows changed.

    On PostgreSQL (READ COMMITTED) an UPDATE sees the rows committed when it started. A rotation that claimed one
    of the rows first makes the UPDATE wait for it, and then revoke the claimed row, but not the successor inserted
    by the same statement: it was not there when the UPDATE started. So the UPDATE runs again, with a new snapshot,
    until it changes nothing (one extra statement when nothing raced). A rotation that comes after the first UPDATE
    waits for this transaction instead, and its claim then fails because the row is revoked.
    """
    statement = db.update(Token).where(*conditions, Token.revoked_at.is_(None)).execution_options(
        synchronize_session=False)
    now, total = int(time.time()), 0
    while (changed := db.session.execute(statement.values(revoked_at=now)).rowcount) > 0:
        total += changed
    return total


def revoke_family(family_id: str) -> int:
    """Revoke every token descending from one authorization, and commit. Returns the number of rows changed."""
    changed = revoke_where(Token.family_id == family_id)
    db.session.commit()
    return changed
