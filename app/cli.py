"""Command line: ``flask --app wsgi clients|users|keys|demo|store …``."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import click
from flask import current_app
from flask.cli import AppGroup

from .crypto import keyed_hash, random_token
from .extensions import db
from .oauth2.models import AUTH_METHODS, GRANT_TYPES, Client
from .consent.purposes import ADMIN_SCOPE, supported_scopes

clients_cli = AppGroup("clients", help="Register and inspect apps (OIDC relying parties).")
users_cli = AppGroup("users", help="Manage customers.")
demo_cli = AppGroup("demo", help="The demo app and customer (development mode only).")
store_cli = AppGroup("store", help="Short-lived state.")
outbox_cli = AppGroup("outbox", help="Durable outbound deliveries (back-channel logout tokens).")
DEFAULT_SCOPE = "openid profile email phone address offline_access"


def _check_uri(uri: str, what: str) -> str:
    parts = urlsplit(uri)
    if not parts.scheme or "#" in uri or (parts.scheme in ("http", "https") and not parts.netloc):
        raise click.BadParameter(f"{what} must be an absolute URI without a fragment: {uri}")
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "[::1]", "::1"):
        raise click.BadParameter(f"{what} must use https (http is only allowed for localhost): {uri}")
    return uri


def new_client_id() -> str:
    """A random client id (128 bits) that never starts with "-", so it can follow any `flask clients` command."""
    while True:
        value = random_token(16)
        if not value.startswith("-"):
            return value


def create_client(name: str, redirect_uris: list[str], *, public: bool = False, grant_types: list[str] | None = None,
                  scope: str = DEFAULT_SCOPE, auth_method: str | None = None, trusted: bool = False,
                  client_id: str | None = None, **meta) -> tuple[Client, str | None]:
    """Register an app; returns it and its plain client secret (None for public / private_key_jwt apps)."""
    grant_types = grant_types or ["authorization_code", "refresh_token"]
    auth_method = auth_method or ("none" if public else "client_secret_basic")
    if public and auth_method != "none":
        raise click.BadParameter("a public client authenticates with 'none'")
    if auth_method == "none" and "client_credentials" in grant_types:
        raise click.BadParameter("client_credentials needs a confidential client")
    if "authorization_code" in grant_types and not redirect_uris:
        raise click.BadParameter("--redirect-uri is required for clients that use the code flow")
    if auth_method == "private_key_jwt" and not (meta.get("jwks_uri") or meta.get("jwks")):
        raise click.BadParameter("private_key_jwt needs --jwks-uri")
    _check_logout_uris(redirect_uris, meta)
    unknown = set(scope.split()) - set(supported_scopes()) - {ADMIN_SCOPE}
    if unknown:
        raise click.BadParameter(f"unknown scope: {' '.join(sorted(unknown))}")
    secret = random_token(32) if auth_method in ("client_secret_basic", "client_secret_post") else None
    metadata = {
        "redirect_uris": [_check_uri(u, "redirect_uri") for u in redirect_uris],
        "grant_types": grant_types,
        "response_types": ["code"] if "authorization_code" in grant_types else [],
        "scope": scope,
        "application_type": "native" if public else "web",
        "id_token_signed_response_alg": meta.pop("id_token_signed_response_alg", None) or "RS256",
    }
    for key, value in meta.items():
        if value:
            metadata[key] = value
    client = Client(client_id=client_id or new_client_id(), client_name=name, token_endpoint_auth_method=auth_method,
                    client_secret_hash=keyed_hash(secret, "client-secret") if secret else None, trusted=trusted,
                    meta=metadata)
    db.session.add(client)
    db.session.commit()
    return client, secret


def _check_logout_uris(redirect_uris: list[str], meta: dict) -> None:
    """Back-/Front-Channel Logout URIs: https (dev mode: http://localhost too), never a private address literal."""
    from .netguard import Refused, check_url

    dev = current_app.config["IDP_DEV_MODE"]
    for key in ("backchannel_logout_uri", "frontchannel_logout_uri"):
        if not meta.get(key):
            continue
        try:
            check_url(meta[key], dev_mode=dev)
        except Refused as exc:
            raise click.BadParameter(f"{key} {exc}: {meta[key]}") from exc
    front = meta.get("frontchannel_logout_uri")
    if front:
        # Front-Channel Logout 1.0 §2: same scheme, host and port as a registered redirect URI.
        origin = urlsplit(front)
        if not any((urlsplit(u).scheme, urlsplit(u).netloc) == (origin.scheme, origin.netloc) for u in redirect_uris):
            raise click.BadParameter("frontchannel_logout_uri must have the scheme, host and port of a redirect URI")


def _client_json(client: Client, secret: str | None = None) -> dict:
    out = client.public_metadata()
    if secret:
        out["client_secret"] = secret
        out["client_secret_expires_at"] = 0
    return out


@clients_cli.command("create")
@click.option("--name", required=True)
@click.option("--redirect-uri", "redirect_uris", multiple=True)
@click.option("--public", is_flag=True, help="A public client (SPA, mobile, CLI): PKCE, no secret.")
@click.option("--grant-type", "grant_types", multiple=True, type=click.Choice(GRANT_TYPES))
@click.option("--scope", default=DEFAULT_SCOPE, show_default=True)
@click.option("--token-endpoint-auth-method", "auth_method", type=click.Choice(AUTH_METHODS))
@click.option("--jwks-uri")
@click.option("--post-logout-redirect-uri", "post_logout_redirect_uris", multiple=True)
@click.option("--backchannel-logout-uri")
@click.option("--backchannel-logout-session-required", is_flag=True, help="The app needs sid in logout tokens.")
@click.option("--frontchannel-logout-uri")
@click.option("--frontchannel-logout-session-required", is_flag=True,
              help="Add iss and sid to the front-channel logout URI.")
@click.option("--logo-uri")
@click.option("--policy-uri")
@click.option("--tos-uri")
@click.option("--id-token-signed-response-alg", type=click.Choice(["RS256", "ES256"]))
@click.option("--require-pkce", is_flag=True, help="Require PKCE from this confidential client too.")
@click.option("--trusted", is_flag=True, help="First-party app: no consent page unless prompt=consent.")
@click.option("--client-id", help="Choose the client_id (default: random).")
@click.option("--json", "as_json", is_flag=True)
def clients_create(name, redirect_uris, public, grant_types, scope, auth_method, jwks_uri, post_logout_redirect_uris,
                   backchannel_logout_uri, backchannel_logout_session_required, frontchannel_logout_uri,
                   frontchannel_logout_session_required, logo_uri, policy_uri, tos_uri, id_token_signed_response_alg, require_pkce,
                   trusted, client_id, as_json):
    """Register an app and print its credentials (the secret is shown only once)."""
    client, secret = create_client(
        name, list(redirect_uris), public=public, grant_types=list(grant_types) or None, scope=scope,
        auth_method=auth_method, trusted=trusted, client_id=client_id, jwks_uri=jwks_uri,
        post_logout_redirect_uris=[_check_uri(u, "post_logout_redirect_uri") for u in post_logout_redirect_uris],
        backchannel_logout_uri=backchannel_logout_uri,
        backchannel_logout_session_required=backchannel_logout_session_required,
        frontchannel_logout_uri=frontchannel_logout_uri,
        frontchannel_logout_session_required=frontchannel_logout_session_required, logo_uri=logo_uri, policy_uri=policy_uri, tos_uri=tos_uri,
        id_token_signed_response_alg=id_token_signed_response_alg, require_pkce=require_pkce,
    )
    data = _client_json(client, secret)
    if as_json:
        click.echo(json.dumps(data))
    else:
        for key, value in data.items():
            click.echo(f"{key}: {value}")


@clients_cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def clients_list(as_json):
    rows = db.session.execute(db.select(Client).order_by(Client.id)).scalars().all()
    if as_json:
        click.echo(json.dumps([_client_json(c) for c in rows]))
        return
    for c in rows:
        click.echo(f"{c.client_id}\t{c.client_name}\t{c.token_endpoint_auth_method}\t{' '.join(c.grant_types)}")


def _get_client(client_id: str) -> Client:
    client = db.session.execute(db.select(Client).filter_by(client_id=client_id)).scalar_one_or_none()
    if client is None:
        raise click.ClickException(f"no client {client_id}")
    return client


@clients_cli.command("show")
@click.argument("client_id")
def clients_show(client_id):
    click.echo(json.dumps(_client_json(_get_client(client_id)), indent=2))


@clients_cli.command("delete")
@click.argument("client_id")
def clients_delete(client_id):
    """Delete an app and revoke every token it holds."""
    from .oauth2.models import Token

    client = _get_client(client_id)
    db.session.execute(db.delete(Token).where(Token.client_id == client_id))
    db.session.delete(client)
    db.session.commit()
    click.echo(f"deleted {client_id}")


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--password", required=True)
@click.option("--name")
@click.option("--email-verified", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def users_create(email, password, name, email_verified, as_json):
    from .accounts.service import AccountError, create_user

    try:
        user = create_user(email, password, name, email_verified=email_verified)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    data = {"sub": user.sub, "email": user.email, "email_verified": user.email_verified, "name": user.name}
    click.echo(json.dumps(data) if as_json else f"created {user.email} (sub {user.sub})")


@demo_cli.command("seed")
def demo_seed():
    """Create the demo app and the demo customer if absent, and print them."""
    if not current_app.config["IDP_DEV_MODE"]:
        raise click.ClickException("the demo is available in development mode only")
    from .accounts.service import create_user, find_by_email
    from .web.views import DEMO_CLIENT_ID, demo_redirect_uri

    if db.session.execute(db.select(Client).filter_by(client_id=DEMO_CLIENT_ID)).scalar_one_or_none() is None:
        create_client("Demo Shop", [demo_redirect_uri()], public=True, client_id=DEMO_CLIENT_ID,
                      post_logout_redirect_uris=[current_app.config["IDP_ISSUER"] + "/"])
    email, password = "demo@example.com", "demo-password"
    if find_by_email(email) is None:
        create_user(email, password, "Demo Customer", email_verified=True)
    click.echo(f"Demo app:      client_id={DEMO_CLIENT_ID} (public, PKCE)")
    click.echo(f"Demo customer: {email} / {password}")
    click.echo(f"Open {current_app.config['IDP_ISSUER']}/ and press 'Try the demo sign-in'.")


@store_cli.command("purge")
def store_purge():
    """Delete expired short-lived state (SQL store only; Redis expires keys itself)."""
    from .store import store

    purge = getattr(store(), "purge", None)
    click.echo(f"purged {purge() if purge else 0} expired items")


@outbox_cli.command("work")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
def outbox_work(once):
    """Deliver queued messages until interrupted (use with IDP_OUTBOX_WORKER=off)."""
    from . import outbox

    try:
        n = outbox.work(once=once)
    except KeyboardInterrupt:
        return
    click.echo(f"attempted {n} deliveries")


@outbox_cli.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include delivered messages.")
@click.option("--json", "as_json", is_flag=True)
def outbox_list(show_all, as_json):
    """Pending and failed deliveries (never their payload)."""
    from .outbox import OutboxMessage

    query = db.select(OutboxMessage).order_by(OutboxMessage.id)
    if not show_all:
        query = query.where(OutboxMessage.delivered_at.is_(None))
    rows = []
    for m in db.session.execute(query).scalars():
        state = "delivered" if m.delivered_at else "failed" if m.failed_at else "pending"
        rows.append({"id": m.id, "kind": m.kind, "target": m.target, "state": state, "attempts": m.attempts,
                     "next_attempt_at": m.next_attempt_at, "last_error": m.last_error})
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['id']}\t{r['kind']}\t{r['state']}\t{r['attempts']}\t{r['target']}\t{r['last_error'] or ''}")


def init_app(app) -> None:
    from .admin import consents_cli
    from .keys import keys_cli

    from .federation.cli import upstreams_cli
    for group in (clients_cli, users_cli, keys_cli, demo_cli, store_cli, consents_cli, outbox_cli, upstreams_cli):
        app.cli.add_command(group)
