"""Operator configuration of upstream providers: `flask upstreams add|list|remove` and IDP_UPSTREAMS_FILE."""

from __future__ import annotations

import json

import pytest


def invoke(app, *args):
    return app.test_cli_runner().invoke(args=["upstreams", *args])


def test_add_list_remove(app):
    result = invoke(app, "add", "--name", "gh", "--kind", "github", "--client-id", "id1", "--client-secret-env",
                    "GH_SECRET", "--api-base-url", "https://github.example/api/v3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["callback_url"] == "http://localhost/federation/gh/callback"
    assert data["settings"] == {"api_base_url": "https://github.example/api/v3"}
    assert invoke(app, "add", "--name", "gh", "--kind", "github", "--client-id", "x", "--client-secret", "s"
                  ).exit_code != 0  # exists; --replace changes it
    assert invoke(app, "add", "--name", "ms", "--kind", "microsoft", "--client-id", "id2", "--client-secret", "top-secret",
                  "--tenant", "organizations").exit_code == 0
    listed = json.loads(invoke(app, "list", "--json").output)
    assert [p["name"] for p in listed] == ["gh", "ms"]
    assert listed[0]["client_secret"] == "(from $GH_SECRET)" and listed[1]["client_secret"] == "(stored)"
    assert listed[1]["issuer"] == "https://login.microsoftonline.com/{tenantid}/v2.0"
    assert "top-secret" not in invoke(app, "list").output
    assert invoke(app, "remove", "gh").exit_code == 0
    assert invoke(app, "remove", "gh").exit_code != 0
    assert [p["name"] for p in json.loads(invoke(app, "list", "--json").output)] == ["ms"]


@pytest.mark.parametrize("args, message", [
    (["--name", "corp", "--kind", "oidc", "--client-id", "c", "--client-secret", "s"], "issuer"),
    (["--name", "Bad Name", "--kind", "google", "--client-id", "c", "--client-secret", "s"], "name"),
    (["--name", "gh", "--kind", "github", "--client-id", "c"], "client secret"),
    (["--name", "apple", "--kind", "apple", "--client-id", "c"], "team_id"),
    (["--name", "apple", "--kind", "apple", "--client-id", "c", "--team-id", "T", "--key-id", "K",
      "--private-key-file", "/nonexistent/AuthKey.p8"], "Apple private key"),
])
def test_add_refuses_what_cannot_work(app, args, message):
    result = invoke(app, "add", *args)
    assert result.exit_code != 0 and message in result.output


def test_configuration_file(make_app, tmp_path, monkeypatch):
    path = tmp_path / "upstreams.json"
    path.write_text(json.dumps({"upstreams": [
        {"name": "google", "kind": "google", "client_id": "g-id", "client_secret_env": "G_SECRET",
         "trust_email": True, "settings": {"hosted_domain": "example.com"}},
        {"name": "corp", "kind": "oidc", "issuer": "https://id.corp.example", "client_id": "c",
         "client_secret_env": "CORP_SECRET"},
    ]}))
    monkeypatch.setenv("G_SECRET", "from-the-environment")
    app = make_app(IDP_UPSTREAMS_FILE=str(path))
    listed = json.loads(invoke(app, "list", "--json").output)
    assert [(p["name"], p["source"], p["label"]) for p in listed] == [("google", "file", "Google"),
                                                                       ("corp", "file", "corp")]
    assert "IDP_UPSTREAMS_FILE" in invoke(app, "remove", "google").output
    from app.federation import providers

    with app.app_context():
        assert providers.get("google").secret() == "from-the-environment"
        with pytest.raises(providers.ProviderError):
            providers.get("corp").secret()  # CORP_SECRET is not set

    path.write_text(json.dumps([{"name": "x", "kind": "myspace", "client_id": "c", "client_secret": "s"}]))
    from app.config import ConfigError

    with pytest.raises(ConfigError, match="kind"):
        make_app(IDP_UPSTREAMS_FILE=str(path))


def test_unreachable_provider_is_a_friendly_page(app, client):
    assert invoke(app, "add", "--name", "corp", "--kind", "oidc", "--issuer", "http://localhost:9",
                  "--client-id", "c", "--client-secret", "s").exit_code == 0
    resp = client.get("/federation/corp/start")
    assert resp.status_code == 502 and "is not available right now" in resp.get_data(as_text=True)


def test_account_centre_needs_sign_in_and_refuses_foreign_identities(app, client, customer):
    resp = client.get("/account/identities")
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/login?next=/account/identities")
    from tests.support.browser import Customer, csrf_token

    Customer(client, customer["email"], customer["password"]).follow(client.get("/account"))
    assert invoke(app, "add", "--name", "gh", "--kind", "github", "--client-id", "c", "--client-secret", "s",
                  "--label", "GitHub Enterprise").exit_code == 0
    html = client.get("/account/identities").get_data(as_text=True)
    assert "No accounts are linked yet" in html and "Link GitHub Enterprise" in html
    resp = client.post("/account/identities/unlink", data={"csrf_token": csrf_token(html), "identity": "12345"})
    assert resp.status_code == 303
    assert "was not found" in client.get("/account/identities").get_data(as_text=True)
    assert client.post("/account/identities/unlink", data={"identity": "1"}).status_code == 400  # CSRF
