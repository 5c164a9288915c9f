"""OpenID Connect Back-Channel Logout 1.0: logout tokens, queued in the durable outbox when a session or grant ends.

Receivers of the signals in ``app.events`` (sent after the commit) write one
outbox row per app that registered a ``backchannel_logout_uri``; the outbox
worker POSTs ``logout_token`` alone (§2.5) outside any request, retrying with
backoff. A receiver never raises into the request that ended the session.
"""

from __future__ import annotations

import logging
import time

from flask import current_app
from joserfc import jwt
from joserfc.errors import JoseError

from .. import events, outbox
from ..crypto import random_token
from ..extensions import db
from ..keys import keyring
from ..oauth2.models import Client, Token
from ..oauth2.tokens import sign

log = logging.getLogger(__name__)

KIND = "backchannel_logout"
EVENT = "http://schemas.openid.net/event/backchannel-logout"
TTL = 120            # exp − iat: short (§2.4); a retried token is re-signed with fresh times, same jti
REFRESH_MARGIN = 30  # re-sign when less than this is left
MAX_SIDS = 20        # bound the tokens for one app when sid is required but the grant spans many sessions


def logout_token(client: Client, *, sub: str | None, sid: str | None, jti: str | None = None) -> str:
    """A logout token (§2.4): typ logout+jwt; iss, aud, iat, exp, jti, sub and/or sid, events; never a nonce."""
    if not sub and not sid:
        raise ValueError("a logout token needs sub or sid")
    now = int(time.time())
    claims = {"iss": current_app.config["IDP_ISSUER"], "aud": client.client_id, "iat": now, "exp": now + TTL,
              "jti": jti or random_token(18), "events": {EVENT: {}}}
    if sub:
        claims["sub"] = sub
    if sid:
        claims["sid"] = sid
    return sign(claims, client.id_token_alg, typ="logout+jwt")


def _refresh(row) -> str:
    """Outbox preparer: the stored token, re-signed with fresh iat/exp (same jti, sub, sid) when nearly expired."""
    try:
        token = jwt.decode(row.payload, keyring().verification_keys(), algorithms=["RS256", "ES256"])
    except (JoseError, ValueError, TypeError):
        return row.payload  # key retired long ago: send as is (the app will refuse it, then we give up)
    claims = token.claims
    if claims.get("exp", 0) - time.time() > REFRESH_MARGIN:
        return row.payload
    now = int(time.time())
    claims.update(iat=now, exp=now + TTL)
    return sign(claims, token.header.get("alg", "RS256"), typ="logout+jwt")


def _clients(client_ids) -> list[Client]:
    ids = [c for c in dict.fromkeys(client_ids or ()) if c]
    if not ids:
        return []
    rows = db.session.execute(db.select(Client).where(Client.client_id.in_(ids))).scalars().all()
    return [c for c in rows if c.meta.get("backchannel_logout_uri")]


def _queue(client: Client, *, sub: str | None, sid: str | None) -> None:
    outbox.enqueue(KIND, client.meta["backchannel_logout_uri"], logout_token(client, sub=sub, sid=sid), commit=False)


def _sids_of(user_id, client_id: str) -> list[str]:
    if user_id is None:
        return []
    return list(db.session.execute(
        db.select(Token.sid).where(Token.user_id == user_id, Token.client_id == client_id, Token.sid.is_not(None))
        .group_by(Token.sid).order_by(db.func.max(Token.issued_at).desc()).limit(MAX_SIDS)).scalars())


def _safely(what: str, fn) -> None:
    """Run a receiver body; commit its rows and wake the worker, or log and roll back — never raise."""
    try:
        fn()
        db.session.commit()
        outbox.wake()
    except Exception:  # noqa: BLE001 - a failed side effect must not turn a sign-out into an error page
        db.session.rollback()
        log.exception("back-channel logout: could not queue tokens for %s", what)


def on_session_ended(sender=None, *, user_id=None, sub=None, sid=None, client_ids=(), **_):
    """The SSO session ``sid`` ended: each app that took part gets a token with sid and sub."""
    def run():
        for client in _clients(client_ids):
            _queue(client, sub=sub, sid=sid)
    _safely("session_ended", run)


def on_grant_ended(sender=None, *, user_id=None, sub=None, client_ids=(), **_):
    """The customer withdrew everything from an app: a token with sub (every session of it), no sid.

    An app that registered ``backchannel_logout_session_required`` gets one token per session it took part in
    (sub and sid), since it would refuse a token without sid.
    """
    def run():
        for client in _clients(client_ids):
            if client.meta.get("backchannel_logout_session_required"):
                sids = _sids_of(user_id, client.client_id)
                for sid in sids:
                    _queue(client, sub=sub, sid=sid)
                if sids:
                    continue
            _queue(client, sub=sub, sid=None)
    _safely("grant_ended", run)


def on_account_deleted(sender=None, *, sub=None, client_ids=(), sids=(), **_):
    """The account is gone: every app it used gets a token with sub (and sid per session where required)."""
    def run():
        for client in _clients(client_ids):
            if client.meta.get("backchannel_logout_session_required") and sids:
                for sid in list(sids)[:MAX_SIDS]:
                    _queue(client, sub=sub, sid=sid)
            else:
                _queue(client, sub=sub, sid=None)
    _safely("account_deleted", run)


def init_app(app) -> None:
    outbox.register_kind(KIND, "logout_token", _refresh)
    outbox.init_app(app)
    # Module-level functions: blinker keeps one connection per receiver, however many apps are created.
    events.session_ended.connect(on_session_ended)
    events.grant_ended.connect(on_grant_ended)
    events.account_deleted.connect(on_account_deleted)
