"""The account centre (/account): customers see and change what every app may use.

Each page module adds its routes to ``bp``; they compose the domain services
(consent, accounts, …) and own no models.
"""

from __future__ import annotations

import functools
import time

from flask import Blueprint, g, redirect, request, url_for

from ..accounts import sessions

bp = Blueprint("portal", __name__, url_prefix="/account")
REAUTH_WINDOW = 300


def login_required(view):
    """The signed-in customer's session in ``g.session``; otherwise off to sign in and back."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        current = sessions.current()
        if current is None:
            return redirect(url_for("accounts.login", next=request.full_path.rstrip("?")), code=303)
        g.session, g.user = current, current.user
        return view(*args, **kwargs)

    return wrapper


def recently_authenticated() -> bool:
    """True when the customer proved who they are within the last five minutes (for dangerous actions)."""
    return g.session is not None and time.time() - g.session.auth_time <= REAUTH_WINDOW


def init_app(app) -> None:
    from . import apps, views  # noqa: F401  (register routes)

    import importlib

    for name in ("profile", "security", "sessions_page", "privacy", "api"):
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        if hasattr(module, "init_app"):
            module.init_app(app)
    app.register_blueprint(bp)
