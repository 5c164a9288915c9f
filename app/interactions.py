"""A pending authorization request, parked while the customer signs in or consents.

The login, account-selection and consent pages never produce protocol
responses: they record their outcome on the interaction and send the browser
back to ``/authorize/resume``, which re-validates the original request. An
interaction is bound to the browser that started it.
"""

from __future__ import annotations

import re
import time

from flask import current_app, g, session

from .crypto import random_token, same
from .store import store

PREFIX = "interaction:"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _browser_id() -> str:
    if "bid" not in session:
        session["bid"] = random_token(16)
    return session["bid"]


def start(params: dict, client_id: str) -> str:
    """Park the request parameters; returns the interaction id."""
    iid = random_token(18)
    store().put(PREFIX + iid, {
        "params": params,
        "client_id": client_id,
        "bid": _browser_id(),
        "created_at": time.time(),
    }, current_app.config["IDP_INTERACTION_TTL"])
    return iid


def _read_here() -> dict:
    """The interactions this request has read from the store (id → value, None once gone)."""
    return g.setdefault("interactions_read", {})


def load(iid: str | None) -> dict | None:
    """The interaction, if it exists and belongs to this browser.

    Read once per request: the page, the language chooser and the view all ask for it. Every caller gets the same
    dict, so what ``update`` changes is what the next caller sees."""
    if not iid or not _ID.fullmatch(iid):
        return None
    read = _read_here()
    if iid not in read:
        read[iid] = store().get(PREFIX + iid)
    data = read[iid]
    if not data or not same(data.get("bid", ""), session.get("bid", "")):
        return None
    data["id"] = iid
    return data


def update(data: dict, **changes) -> None:
    """Record a step's outcome, unless the interaction ended meanwhile (finished in another tab, or expired): a
    finished request must not come back, or a second resume would answer it twice."""
    data.update(changes)
    record = {k: v for k, v in data.items() if k != "id"}
    ttl = max(1, int(record["created_at"] + current_app.config["IDP_INTERACTION_TTL"] - time.time()))
    if not store().replace(PREFIX + data["id"], record, ttl):
        _read_here()[data["id"]] = None


def finish(data: dict) -> None:
    store().delete(PREFIX + data["id"])
    _read_here()[data["id"]] = None
