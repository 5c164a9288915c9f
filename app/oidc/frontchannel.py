"""OpenID Connect Front-Channel Logout 1.0: the iframes the logged-out page loads, one per app of the session.

Each app that registered ``frontchannel_logout_uri`` and holds tokens of an
ended session is rendered in an invisible iframe (§2, §3); ``iss`` and ``sid``
are added when it registered ``frontchannel_logout_session_required``. The
page's CSP ``frame-src`` allows exactly those origins.
"""

from __future__ import annotations

from authlib.common.urls import add_params_to_uri
from flask import current_app

from ..extensions import db
from ..http import allow_frame
from ..oauth2.models import Client, Token


def logout_iframes(sids) -> list[str]:
    """The iframe URLs for the sessions ``sids`` (ended in this request), each allowed in this page's CSP."""
    sids = [s for s in dict.fromkeys(sids or ()) if s]
    if not sids:
        return []
    pairs = db.session.execute(
        db.select(Token.client_id, Token.sid).where(Token.sid.in_(sids)).distinct()).all()
    ids = sorted({cid for cid, _ in pairs})
    clients = {c.client_id: c for c in db.session.execute(
        db.select(Client).where(Client.client_id.in_(ids or [""]))).scalars()}
    urls: list[str] = []
    for cid, sid in sorted(pairs):
        client = clients.get(cid)
        uri = client.meta.get("frontchannel_logout_uri") if client else None
        if not uri:
            continue
        if client.meta.get("frontchannel_logout_session_required"):
            uri = add_params_to_uri(uri, [("iss", current_app.config["IDP_ISSUER"]), ("sid", sid)])
        if uri not in urls:
            urls.append(uri)
            allow_frame(uri)
    return urls
