"""The command line: clients, users, keys, demo."""

from __future__ import annotations

import json


def _run(app, *args):
    result = app.test_cli_runner().invoke(args=list(args))
    return result


def test_clients_create_confidential_prints_secret_once_and_stores_a_hash(app):
    res = _run(app, "clients", "create", "--name", "Shop", "--redirect-uri", "https://shop.example/cb",
               "--redirect-uri", "https://shop.example/cb2", "--post-logout-redirect-uri", "https://shop.example/",
               "--logo-uri", "https://shop.example/logo.png", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["client_id"] and len(data["client_secret"]) >= 43 and data["client_secret_expires_at"] == 0
    assert data["redirect_uris"] == ["https://shop.example/cb", "https://shop.example/cb2"]
    assert data["token_endpoint_auth_method"] == "client_secret_basic"
    shown = json.loads(_run(app, "clients", "show", data["client_id"]).output)
    assert "client_secret" not in shown and shown["logo_uri"] == "https://shop.example/logo.png"
    with app.app_context():
        from app.oauth2.models import Client
        from app.extensions import db

        row = db.session.execute(db.select(Client).filter_by(client_id=data["client_id"])).scalar_one()
        assert row.client_secret_hash != data["client_secret"] and row.check_client_secret(data["client_secret"])
        assert not row.check_client_secret(data["client_secret"] + "x")


def test_clients_public_machine_list_delete(app):
    pub = json.loads(_run(app, "clients", "create", "--name", "TV", "--redirect-uri", "com.example.tv:/cb",
                          "--public", "--json").output)
    assert "client_secret" not in pub and pub["token_endpoint_auth_method"] == "none"
    m2m = _run(app, "clients", "create", "--name", "Batch", "--grant-type", "client_credentials", "--scope", "openid",
               "--json")
    assert m2m.exit_code == 0, m2m.output
    listed = json.loads(_run(app, "clients", "list", "--json").output)
    assert {c["client_name"] for c in listed} == {"TV", "Batch"}
    assert _run(app, "clients", "delete", pub["client_id"]).exit_code == 0
    assert _run(app, "clients", "show", pub["client_id"]).exit_code != 0


def test_clients_create_refuses_bad_input(app):
    assert _run(app, "clients", "create", "--name", "X").exit_code != 0  # code flow needs a redirect URI
    assert _run(app, "clients", "create", "--name", "X", "--redirect-uri", "http://evil.example/cb").exit_code != 0
    assert _run(app, "clients", "create", "--name", "X", "--redirect-uri", "https://a.example/cb#frag").exit_code != 0
    assert _run(app, "clients", "create", "--name", "X", "--redirect-uri", "https://a.example/cb",
                "--scope", "openid wallet").exit_code != 0


def test_users_create(app):
    res = _run(app, "users", "create", "--email", "Bob@Example.com", "--password", "long enough pw", "--name", "Bob",
               "--email-verified", "--json")
    data = json.loads(res.output)
    assert data["email"] == "bob@example.com" and data["sub"] and data["email_verified"] is True
    again = _run(app, "users", "create", "--email", "bob@example.com", "--password", "long enough pw")
    assert again.exit_code != 0


def test_demo_seed_is_idempotent_and_signs_in(app, client):
    assert _run(app, "demo", "seed").exit_code == 0
    res = _run(app, "demo", "seed")
    assert "demo@example.com" in res.output
    from tests.support.browser import Customer

    start = client.get("/demo/start")
    who = Customer(client, "demo@example.com", "demo-password")
    page = who.follow(start)  # ends on the demo app's callback page, which is served by this server
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html
    assert "Signed in to the demo app" in html and "Its nonce matches the request." in html
    assert "demo@example.com" in html and "Demo Customer" in html and "&#34;typ&#34;: &#34;JWT&#34;" in html


def test_demo_is_refused_outside_development_mode(make_app, production_keys):
    prod = make_app(IDP_ISSUER="https://id.example.com", SECRET_KEY="x" * 40, **production_keys)
    assert prod.test_cli_runner().invoke(args=["demo", "seed"]).exit_code != 0
    assert prod.test_client().get("/demo/start", base_url="https://id.example.com").status_code == 404


def test_generated_client_ids_never_look_like_an_option():
    """A client id follows `flask clients delete|show`; one starting with "-" would be read as an option."""
    from app.cli import new_client_id

    ids = [new_client_id() for _ in range(2000)]  # about 1 in 64 random ids starts with "-"
    assert not any(i.startswith("-") for i in ids)
    assert len(set(ids)) == 2000 and all(len(i) == 22 for i in ids)
