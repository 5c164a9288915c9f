"""Command line: ``flask --app wsgi upstreams add|list|remove`` — the upstream identity providers."""

from __future__ import annotations

import json
import os

import click
from flask.cli import AppGroup

from ..extensions import db
from . import providers
from .models import UpstreamProvider

upstreams_cli = AppGroup("upstreams", help="Upstream identity providers (Continue with Google, Apple, …).")


@upstreams_cli.command("add")
@click.option("--name", required=True, help="Short name used in URLs (/federation/NAME/callback) and idp_hint.")
@click.option("--kind", required=True, type=click.Choice(providers.KINDS))
@click.option("--issuer", help="Issuer URL (required for oidc; overrides the preset of google/apple/microsoft).")
@click.option("--client-id", required=True)
@click.option("--client-secret", help="Stored in the database; prefer --client-secret-env.")
@click.option("--client-secret-env", help="Name of the environment variable holding the client secret.")
@click.option("--scope", help="Scopes to request (default: the preset's).")
@click.option("--trust-email", is_flag=True,
              help="Link to an existing account automatically when this provider says the email is verified.")
@click.option("--label", help="Button text after 'Continue with' (default: the brand name or NAME).")
@click.option("--authorize-url")
@click.option("--token-url")
@click.option("--userinfo-url")
@click.option("--jwks-uri")
@click.option("--api-base-url", help="GitHub REST API or Facebook Graph API base URL.")
@click.option("--tenant", help="Microsoft: common, organizations, consumers or a tenant id (default: common).")
@click.option("--hosted-domain", help="Google: the Workspace domain (hd) whose addresses are trusted.")
@click.option("--team-id", help="Apple: the team id (iss of the client secret JWT).")
@click.option("--key-id", help="Apple: the key id (kid of the client secret JWT).")
@click.option("--private-key-file", type=click.Path(dir_okay=False), help="Apple: the .p8 private key (ES256).")
@click.option("--replace", is_flag=True, help="Replace an existing provider of the same name.")
@click.option("--json", "as_json", is_flag=True)
def add(name, kind, issuer, client_id, client_secret, client_secret_env, scope, trust_email, label, authorize_url,
        token_url, userinfo_url, jwks_uri, api_base_url, tenant, hosted_domain, team_id, key_id, private_key_file,
        replace, as_json):
    """Add an upstream provider."""
    settings = {k: v for k, v in {
        "label": label, "authorize_url": authorize_url, "token_url": token_url, "userinfo_url": userinfo_url,
        "jwks_uri": jwks_uri, "api_base_url": api_base_url, "tenant": tenant, "hosted_domain": hosted_domain,
        "team_id": team_id, "key_id": key_id,
        "private_key_file": os.path.abspath(private_key_file) if private_key_file else None,
    }.items() if v}
    up = providers.Upstream(name=name, kind=kind, client_id=client_id, issuer=issuer.rstrip("/") if issuer else None,
                            client_secret=client_secret, client_secret_env=client_secret_env, scope=scope,
                            trust_email=trust_email, settings=settings)
    try:
        providers.validate(up)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if kind == "apple":
        from .apple import client_secret as mint

        try:
            mint(up)  # fail now, not at the first sign-in, when the key cannot sign
        except providers.ProviderError as exc:
            raise click.BadParameter(str(exc)) from exc
    row = db.session.execute(db.select(UpstreamProvider).filter_by(name=name)).scalar_one_or_none()
    if row is not None and not replace:
        raise click.ClickException(f"provider {name} exists (use --replace to change it)")
    if row is None:
        row = UpstreamProvider(name=name)
        db.session.add(row)
    row.kind, row.issuer, row.client_id = kind, up.issuer, client_id
    row.client_secret, row.client_secret_env, row.scope = client_secret, client_secret_env, scope
    row.trust_email, row.settings = trust_email, settings
    db.session.commit()
    data = _describe(providers.from_row(row))
    click.echo(json.dumps(data) if as_json else f"added {name} ({kind}); callback URL: {data['callback_url']}")


def _describe(up: providers.Upstream) -> dict:
    from flask import current_app

    return {"name": up.name, "kind": up.kind, "label": up.label, "issuer": up.expected_issuer,
            "client_id": up.client_id, "client_secret": "(from $%s)" % up.client_secret_env if up.client_secret_env
            else ("(stored)" if up.client_secret else None), "scope": up.scopes, "trust_email": up.trust_email,
            "settings": up.settings, "source": up.source,
            "callback_url": f"{current_app.config['IDP_ISSUER']}/federation/{up.name}/callback"}


@upstreams_cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json):
    """List the providers (table and IDP_UPSTREAMS_FILE); secrets are never printed."""
    rows = [_describe(up) for up in providers.all_providers()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['name']}\t{r['kind']}\t{r['issuer'] or '-'}\t{r['client_id']}\t{r['source']}\t"
                   f"{'trust-email' if r['trust_email'] else ''}")


@upstreams_cli.command("remove")
@click.argument("name")
def remove(name):
    """Remove a provider. Linked identities stay (re-adding the provider restores them)."""
    row = db.session.execute(db.select(UpstreamProvider).filter_by(name=name)).scalar_one_or_none()
    if row is None:
        from flask import current_app

        if name in current_app.extensions.get("idp_upstreams_file", {}):
            raise click.ClickException(f"provider {name} is defined in IDP_UPSTREAMS_FILE; edit that file")
        raise click.ClickException(f"no provider {name}")
    db.session.delete(row)
    db.session.commit()
    click.echo(f"removed {name}")
