"""Application factory: reads like a table of contents."""

from __future__ import annotations

import logging
import os

from flask import Flask, request

from . import config as config_module


def create_app(overrides: dict | None = None) -> Flask:
    app = Flask(__name__, template_folder=str(config_module.ROOT / "templates"),
                static_folder=str(config_module.ROOT / "app" / "static"), instance_relative_config=True)
    app.config.update(config_module.load(overrides, app.instance_path))
    config_module.validate(app.config)
    os.makedirs(app.instance_path, exist_ok=True)
    logging.basicConfig(level=app.config["IDP_LOG_LEVEL"])
    logging.getLogger("alembic").setLevel(logging.WARNING)

    from . import models  # noqa: F401  (every table is known before anything binds)
    from .extensions import babel, csrf, db, limiter, migrate, rate_limit_headers

    db.init_app(app)
    migrate.init_app(app, db, directory=str(config_module.ROOT / "migrations"), render_as_batch=True)
    csrf.init_app(app)
    limiter.init_app(app)
    babel.init_app(app, locale_selector=_select_locale)

    from . import keys, store
    from .consent import purposes

    _tune_sqlite(app)
    _bound_postgresql(app)
    store.init_app(app)
    keys.init_app(app)
    purposes.init_app(app)

    from .accounts import views as accounts_views
    from .consent import views as consent_views
    from .oauth2 import views as oauth2_views
    from .oidc import views as oidc_views
    from .web import views as web_views
    from . import admin, passkeys, portal

    from .device import init_app as init_device_flow; init_device_flow(app)  # RFC 8628; before the portal registers
    from .federation.views import init_app as init_federation; init_federation(app)  # upstream IdPs; before the portal registers
    for pkg in (oauth2_views, oidc_views, accounts_views, consent_views, web_views, portal):
        pkg.init_app(app)
    admin.init_app(app)
    passkeys.init_app(app)

    from . import cli
    from .accounts.sessions import apply_cookie
    from .errors import register_error_handlers
    from .http import SessionInterface, csp_nonce, security_headers
    app.session_interface = SessionInterface()

    register_error_handlers(app)
    cli.init_app(app)
    app.after_request(apply_cookie)
    app.after_request(security_headers)
    app.after_request(rate_limit_headers)
    from . import observability; observability.init_app(app)  # /healthz /readyz /metrics, request ids, JSON logs
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    app.jinja_env.globals["lang_url"] = _lang_url
    app.jinja_env.globals["url_map_endpoints"] = lambda: {r.endpoint for r in app.url_map.iter_rules()}
    app.jinja_env.filters["datetime"] = _format_time
    from flask_babel import get_locale

    app.jinja_env.globals["get_locale"] = get_locale
    if app.config["IDP_ACCESS_LOG"]:  # under granian (app/serve.py); inside TrustedProxies, so it sees the client
        from .access_log import AccessLog, configure

        app.wsgi_app = AccessLog(app.wsgi_app, configure(app.config["IDP_LOG_FORMAT"] == "json"))
    if app.config.get("IDP_TRUSTED_PROXIES"):
        from .config import trusted_proxy_networks
        from .http import TrustedProxies

        app.wsgi_app = TrustedProxies(app.wsgi_app, int(app.config["IDP_TRUSTED_PROXIES"]),
                                      trusted_proxy_networks(app.config))
    return app


def _select_locale():
    """ui_locales (on the request or its pending interaction), then Accept-Language."""
    from flask import current_app

    from flask import session

    supported = current_app.config["IDP_LOCALES"]
    wanted = request.args.get("ui_locales")
    # Only the query string: reading a body here could raise again while an error page (413) renders.
    if not wanted and request.args.get("interaction"):
        from . import interactions

        data = interactions.load(request.args.get("interaction"))
        wanted = data["params"].get("ui_locales") if data else None
    for tag in (wanted or "").split():
        base = tag.split("-")[0].lower()
        if base in supported:
            if request.args.get("ui_locales"):
                session["lang"] = base  # an explicit choice sticks for the rest of the visit
            return base
    if session.get("lang") in supported:
        return session["lang"]
    return request.accept_languages.best_match(supported) or "en"


def _tune_sqlite(app) -> None:
    """WAL and a busy timeout so the embedded store and the app's session can share one SQLite file."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        return
    from sqlalchemy import event

    from .extensions import db

    with app.app_context():
        engine = db.engine

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=15000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()


def _bound_postgresql(app) -> None:
    """Every PostgreSQL connection gets IDP_DB_STATEMENT_TIMEOUT and IDP_DB_LOCK_TIMEOUT once, when it is opened.

    A query stuck on the server, or a statement queued behind a transaction that holds a lock, then fails the
    request with a 503 (errors.is_outage: 57014, 55P03) within the bound, instead of holding its thread and
    connection for as long as it lasts (gunicorn's threaded worker keeps reporting itself alive meanwhile). Set
    with SET on each new connection and committed (a rolled-back SET is undone), not as a startup ``options``
    parameter, which PgBouncer refuses. Behind a pooler in transaction mode a connection's session settings do
    not follow its transactions: set them on the database role there (docs/production.md).
    """
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        return
    settings = {name: int(round(float(app.config[key]) * 1000)) for name, key in (
        ("statement_timeout", "IDP_DB_STATEMENT_TIMEOUT"), ("lock_timeout", "IDP_DB_LOCK_TIMEOUT"))}
    if not any(settings.values()):
        return  # the server's (or the role's) own settings apply
    from sqlalchemy import event

    from .extensions import db

    statement = "; ".join(f"SET {name} = {ms}" for name, ms in settings.items() if ms)  # integers, never input

    with app.app_context():
        @event.listens_for(db.engine, "connect")
        def _on_connect(dbapi_conn, _record):
            with dbapi_conn.cursor() as cur:
                cur.execute(statement)
            dbapi_conn.commit()


def _lang_url(code: str) -> str:
    """This page in another language (keeps the interaction and other query parameters)."""
    from urllib.parse import urlencode

    args = {k: v for k, v in request.args.items() if k != "ui_locales"}
    args["ui_locales"] = code
    return request.path + "?" + urlencode(args)


def _format_time(epoch) -> str:
    """Epoch seconds as a date and time in the customer's language."""
    from datetime import datetime, timezone

    from flask_babel import format_datetime

    if not epoch:
        return ""
    return format_datetime(datetime.fromtimestamp(int(epoch), tz=timezone.utc), "medium")
