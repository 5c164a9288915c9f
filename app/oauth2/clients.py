"""Client lookup for the hot paths (token, introspection, revocation, userinfo), cached per process.

Every token request needs its client; reading it from the database each time
was a third of the token endpoint's time. The cache holds detached, read-only
copies for ``IDP_CLIENT_CACHE_TTL`` seconds, so a change made with
``flask clients …`` (or a deletion) reaches every process within that bound.
"""

from __future__ import annotations

import threading
import time

from flask import current_app

from ..extensions import db
from .models import Client, valid_client_id

_COLUMNS = ("id", "client_id", "client_secret_hash", "token_endpoint_auth_method", "client_name", "trusted", "meta",
            "created_at")


def _cache() -> tuple[dict, threading.Lock]:
    ext = current_app.extensions
    if "idp_client_cache" not in ext:
        ext["idp_client_cache"] = ({}, threading.Lock())
    return ext["idp_client_cache"]


def read(client_id: str | None) -> Client | None:
    """The app as stored now (not the cache), or None: where a change must apply at once (authorization, consent,
    administration). A row of the request's Session, unlike ``lookup``'s copies."""
    return db.session.execute(db.select(Client).filter_by(client_id=client_id)).scalar_one_or_none()


def lookup(client_id: str | None) -> Client | None:
    """The client, or None. The object is a transient copy: read it, never change or add it to a session."""
    if not valid_client_id(client_id):
        return None
    entries, lock = _cache()
    now = time.monotonic()
    hit = entries.get(client_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    row = read(client_id)
    copy = Client(**{c: getattr(row, c) for c in _COLUMNS}) if row is not None else None
    ttl = current_app.config["IDP_CLIENT_CACHE_TTL"]
    with lock:
        entries[client_id] = (now + ttl, copy)
    return copy
