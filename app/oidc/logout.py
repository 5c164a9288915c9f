"""RP-Initiated Logout 1.0: end the session, then return to the app only to an exactly registered URI.

Ending the session also triggers Back-Channel Logout (via the ``session_ended``
signal) and Front-Channel Logout: the logged-out page, or an intermediate page
before returning to the app, loads each participating app's
``frontchannel_logout_uri`` in an iframe.
"""

from __future__ import annotations

from authlib.common.urls import add_params_to_uri
from flask import redirect, render_template, request, session

from ..accounts import sessions
from ..errors import error_page
from ..oauth2 import clients, tokens
from ..oauth2.models import Client, valid_client_id
from .frontchannel import logout_iframes

PENDING = "pending_logout"


def _client_for(claims: dict | None, client_id: str | None) -> Client | None:
    aud = (claims or {}).get("aud")
    auds = aud if isinstance(aud, list) else [aud] if aud else []
    cid = client_id or (auds[0] if auds else None)
    if client_id and auds and client_id not in auds:
        return None
    if not valid_client_id(cid):
        return None
    return clients.read(cid)


def end_session():
    from flask_babel import gettext as _

    p = request.values
    hint = p.get("id_token_hint")
    claims = tokens.verify_id_token_hint(hint) if hint else None
    if hint and claims is None:
        return error_page(_("We could not sign you out from this link"),
                          _("The app sent a sign-out request we could not verify."), 400)
    target = None
    plr = p.get("post_logout_redirect_uri")
    if plr:
        client = _client_for(claims, p.get("client_id"))
        if claims is None or client is None or plr not in client.post_logout_redirect_uris:
            return error_page(_("We could not return you to the app"),
                              _("The app asked to return to an address it has not registered. "
                                "You are still signed in; sign out from your account page if you wish."), 400)
        target = {"uri": plr, "state": p.get("state")}
    current = sessions.current()
    by_hint = sessions.by_sid(claims.get("sid")) if claims and claims.get("sid") else None
    if by_hint is not None and by_hint.user.sub != claims.get("sub"):
        by_hint = None
    if by_hint is not None and (current is None or current.id == by_hint.id):
        # A valid ID token for this very session: the app's request is proof enough.
        sids = [by_hint.id]
        sessions.end(by_hint)
        if current is not None:
            sids.append(current.id)
            sessions.end(current)
        return _finish(target, sids)
    if current is None:
        return _finish(target, [])
    session[PENDING] = target
    return render_template("oidc/logout_confirm.html", user=current.user)


def confirm():
    """POST from the confirmation page (CSRF-protected)."""
    current = sessions.current()
    sids = [current.id] if current is not None else []
    sessions.end(current)
    return _finish(session.pop(PENDING, None), sids)


def _finish(target: dict | None, sids: list[str]):
    iframes = logout_iframes(sids)
    next_uri = None
    if target:
        params = [("state", target["state"])] if target.get("state") else []
        next_uri = add_params_to_uri(target["uri"], params) if params else target["uri"]
        if not iframes:
            return redirect(next_uri, code=302)
    # Front-Channel Logout §4: render the apps' logout URIs, then (if asked) continue to the app.
    return render_template("oidc/logged_out.html", iframes=iframes, next_uri=next_uri)
