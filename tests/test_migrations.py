"""Upgrading an empty database gives exactly the models: autogenerate finds no difference."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.support import services


def _upgrade_and_compare(url: str, keys_dir: str):
    import flask_migrate

    from app import create_app
    from app.extensions import db

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "IDP_KEYS_DIR": keys_dir, "TESTING": True})
    with app.app_context():
        flask_migrate.upgrade()
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            diff = compare_metadata(ctx, db.metadata)
            tables = set(db.inspect(conn).get_table_names())
        db.engine.dispose()
    return diff, tables


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_from_empty_matches_models(backend, tmp_path, keys_dir):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/empty.sqlite3"
    else:
        url = services.create_postgres_database()
    try:
        diff, tables = _upgrade_and_compare(url, keys_dir)
    finally:
        if backend == "postgresql":
            services.drop_postgres_database(url)
    assert diff == [], f"migrations and models differ: {diff}"
    from app.extensions import db

    assert {t.name for t in db.metadata.sorted_tables} <= tables
