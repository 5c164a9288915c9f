"""Black-box interoperability of the device flow (RFC 8628): openid-client v6 as the device.

The server runs for real under gunicorn (``tests/support/server.py``); ``tests/interop/device.mjs``
asks for a device code with ``initiateDeviceAuthorization`` and waits in ``pollDeviceAuthorizationGrant``
while a headless Chromium (Playwright) is the customer: enters the code on /device, signs in, reads the
confirmation page and approves. openid-client then validates the ID token and calls UserInfo; a second
redemption of the same device code must fail with invalid_grant.

Locally a missing prerequisite (node, ``tests/interop/node_modules`` — ``make interop-deps`` — or
/usr/bin/chromium) skips with the reason; under CI=true it fails.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.server import LiveServer
from tests.test_interop_openid_client import CHROMIUM, CHROMIUM_ARGS, INTEROP, prerequisites  # noqa: F401

DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
SCOPE = "openid profile email offline_access"

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server(prerequisites):  # noqa: F811
    with LiveServer() as live:
        yield live


def approve_in_browser(server: LiveServer, user_code: str, email: str, password: str) -> str:
    """The customer's part on a phone or laptop; returns the confirmation page's text."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(15_000)
        try:
            page.goto(server.url + "/device")
            page.get_by_label("Code").fill(user_code.lower().replace("-", " "))  # typed carelessly: still fine
            page.get_by_role("button", name="Continue").click()
            page.get_by_label("Email").fill(email)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in", exact=True).click()
            page.get_by_role("button", name="Approve").wait_for()
            text = page.inner_text("main")
            page.get_by_role("button", name="Approve").click()
            page.get_by_text("Device connected").wait_for()
            return text
        except Exception as exc:
            raise AssertionError(f"browser step failed at {page.url}: {exc}\nserver log:\n{server.log_tail()}") from exc
        finally:
            browser.close()


@pytest.mark.parametrize("kind", ["public", "confidential"])
def test_openid_client_device_flow(server, kind):
    args = ["clients", "create", "--name", f"Interop TV ({kind})", "--grant-type", DEVICE,
            "--grant-type", "refresh_token", "--scope", SCOPE, "--json"]
    if kind == "public":
        args.insert(4, "--public")
    tv = server.run_cli(*args)
    password = "device correct horse battery"
    user = server.run_cli("users", "create", "--email", f"interop.tv.{kind}@example.com", "--password", password,
                          "--name", "Tess Interop", "--email-verified", "--json")

    proc = subprocess.Popen(["node", str(INTEROP / "device.mjs")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=INTEROP)
    try:
        proc.stdin.write(json.dumps({"issuer": server.url, "client_id": tv["client_id"],
                                     "client_secret": tv.get("client_secret"), "scope": SCOPE}))
        proc.stdin.close()
        first = proc.stdout.readline()
        assert first, f"device.mjs wrote nothing: {proc.stderr.read()}\nserver log:\n{server.log_tail()}"
        started = json.loads(first)
        assert started["device_authorization_endpoint"] == server.url + "/device_authorization"
        auth = started["device_authorization"]
        assert auth["verification_uri"] == server.url + "/device" and auth["interval"] == 5
        assert auth["verification_uri_complete"].endswith("?user_code=" + auth["user_code"])

        confirmation = approve_in_browser(server, auth["user_code"], user["email"], password)
        assert f"Interop TV ({kind})" in confirmation and "Your email address" in confirmation
        assert "127.0.0.1" in confirmation and auth["user_code"] in confirmation  # where the request came from

        proc.wait(timeout=120)
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"device.mjs exited {proc.returncode}\n{err}\nserver log:\n{server.log_tail()}"
    steps = json.loads(out.strip().splitlines()[-1])["steps"]

    poll = steps["poll"]
    assert poll["ok"], json.dumps(poll)
    assert poll["seconds"] >= 5  # openid-client honoured the interval
    assert set(poll["scope"].split()) == set(SCOPE.split()) and poll["has_refresh_token"]
    assert poll["token_type"].lower() == "bearer" and poll["access_token_header"]["typ"] == "at+jwt"
    idt = poll["id_token_claims"]
    assert idt["iss"] == server.url and idt["aud"] == tv["client_id"] and idt["sub"] == user["sub"]
    assert isinstance(idt["auth_time"], int) and idt["amr"] == ["pwd"] and idt["sid"] and "nonce" not in idt

    assert steps["userinfo"]["ok"], json.dumps(steps["userinfo"])
    info = steps["userinfo"]["claims"]
    assert info["sub"] == user["sub"] and info["email"] == user["email"] and info["name"] == "Tess Interop"

    replay = steps["replay"]
    assert not replay["ok"] and replay["error"].get("error") == "invalid_grant", json.dumps(replay)
