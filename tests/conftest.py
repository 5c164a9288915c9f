"""Fixtures: an app per test in both deployments: SQLite with the embedded store, and PostgreSQL with Redis (always
under CI; locally when reachable)."""

from __future__ import annotations

import logging
import os
import secrets

import pytest

from tests.support import services

logging.getLogger("alembic").setLevel(logging.WARNING)


def _backends():
    return ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("keys"))


def _migrate(url: str, keys_dir: str) -> None:
    import flask_migrate

    from app import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "IDP_KEYS_DIR": keys_dir, "TESTING": True})
    with app.app_context():
        flask_migrate.upgrade()
        from app.extensions import db

        db.engine.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory, keys_dir):
    url = "sqlite:///" + str(tmp_path_factory.mktemp("db") / "idp.sqlite3")
    _migrate(url, keys_dir)
    return url


@pytest.fixture(scope="session")
def postgresql_url(keys_dir):
    url = services.create_postgres_database()
    _migrate(url, keys_dir)
    yield url
    services.drop_postgres_database(url)


@pytest.fixture(params=_backends())
def database_url(request):
    return request.getfixturevalue(f"{request.param}_url")


class RedisSpace:
    """This test session's keys in the Redis of the production-mode runs: its own prefixes, so that two sessions
    (two checkouts, a CI run next to a local one) sharing one Redis never delete each other's state."""

    def __init__(self):
        import redis
        from urllib.parse import urlsplit

        self.url = urlsplit(services.redis_url())._replace(path="/12").geturl()
        self.client = redis.Redis.from_url(self.url)
        tag = f"test{os.getpid()}"
        self.config = {"REDIS_URL": self.url, "IDP_STORE_PREFIX": f"{tag}:", "RATELIMIT_KEY_PREFIX": tag}
        self.patterns = (f"{tag}:*", f"LIMITS:LIMITER/{tag}/*")  # the store's keys, Flask-Limiter's counters

    def clear(self) -> None:
        for pattern in self.patterns:
            keys = list(self.client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                self.client.delete(*keys[start:start + 500])


@pytest.fixture(scope="session")
def redis_space():
    space = RedisSpace()
    yield space
    space.clear()
    space.client.close()


@pytest.fixture
def make_app(database_url, keys_dir, request):
    """Build an app on the test database; tables are emptied after the test.

    The two deployments: SQLite with the embedded store (short-lived state in a table, `make run`), and PostgreSQL
    with Redis for short-lived state and rate-limit counters (production mode).
    """
    from app import create_app
    from app.extensions import db

    apps = []
    space = None
    mode = {}
    if database_url.startswith("postgresql"):
        space = request.getfixturevalue("redis_space")
        space.clear()
        mode.update(space.config)

    def factory(**overrides):
        cfg = {"SQLALCHEMY_DATABASE_URI": database_url, "IDP_KEYS_DIR": keys_dir, "TESTING": True,
               "IDP_ISSUER": "http://localhost", "RATELIMIT_ENABLED": False, **mode}
        cfg.update(overrides)
        app = create_app(cfg)
        apps.append(app)
        return app

    yield factory
    if space is not None:
        space.clear()
    if apps:
        with apps[0].app_context():
            for table in reversed(db.metadata.sorted_tables):
                db.session.execute(table.delete())
            db.session.commit()
        for app in apps:
            with app.app_context():
                db.engine.dispose()


@pytest.fixture
def production_keys(tmp_path):
    """What a production-mode app (https issuer) needs for the files key ring: IDP_KEY_ENCRYPTION_KEY, and a
    folder of its own (the shared test ring stays plaintext for the development-mode apps)."""
    return {"IDP_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32), "IDP_KEYS_DIR": str(tmp_path / "production-keys")}


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


@pytest.fixture
def customer(app):
    from app.accounts.service import create_user

    with app.app_context():
        user = create_user("ada@example.com", "correct horse battery", "Ada Lovelace", email_verified=True)
        user.given_name, user.family_name, user.phone_number = "Ada", "Lovelace", "+44 20 7946 0000"
        user.address = {"street_address": "12 St James's Square", "locality": "London", "country": "GB"}
        from app.extensions import db

        db.session.commit()
        return {"email": user.email, "password": "correct horse battery", "sub": user.sub, "id": user.id}


@pytest.fixture
def rp(app):
    """A confidential web app registered for the code flow."""
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("Web Shop", ["https://shop.example/cb", "https://shop.example/cb2?bar=foo"],
                                  post_logout_redirect_uris=["https://shop.example/bye"],
                                  grant_types=["authorization_code", "refresh_token", "client_credentials"])
        return {"client_id": c.client_id, "client_secret": secret, "redirect_uri": "https://shop.example/cb"}


@pytest.fixture
def public_rp(app):
    from app.cli import create_client

    with app.app_context():
        c, _ = create_client("Mobile App", ["com.example.app:/cb"], public=True)
        return {"client_id": c.client_id, "redirect_uri": "com.example.app:/cb"}


def pytest_report_header(config):
    return f"CI={os.environ.get('CI', '')}; PostgreSQL admin URL: {services.postgres_admin_url()}"
