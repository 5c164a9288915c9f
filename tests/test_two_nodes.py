"""Scale-out, for real: two app nodes (two gunicorn masters) behind one issuer, sharing one PostgreSQL
database, one Redis, one key ring and one SECRET_KEY — the deployment docs/production.md describes.

Every journey crosses nodes at the step where a node-local shortcut would break it: the customer's
browser (one ``requests.Session``; cookies for ``localhost`` are sent to every port, as in browsers)
and the apps talk to whichever node the "load balancer" — the test — picks. Both nodes run
``gunicorn -c python:app.gunicorn_conf`` (the production configuration) and carry the same
``IDP_ISSUER=http://localhost:PORT_A``; node B is reached as ``localhost:PORT_B`` and must still answer
with the issuer, never with its Host.

What it proves:

* authorization code: every page hop alternates nodes (authorize, sign-in, consent), the code is
  redeemed on the other node; ID token and access token verify against either node's JWKS;
* refresh on A, revoke on B, introspection on A says inactive (and the revoked refresh token is refused);
* rate-limit counters are cluster-wide (Redis), not per node;
* a passkey ceremony begun on A finishes on B (sign-up and sign-in), in the middle of an authorization;
* device flow: the device polls A, the customer approves on B; the polling interval is shared too;
* the key ring is shared two ways, each a run of the whole module: ``IDP_KEYS_STORE=database`` (encrypted
  under ``IDP_KEY_ENCRYPTION_KEY``; the nodes share no files) and one ``IDP_KEYS_DIR`` on a shared volume;
  in the second run node B is served by granian (``python -m app.serve``), the other production server,
  so every journey also crosses gunicorn and granian (its access log must keep query strings out too);
* ``flask keys rotate`` run once is served by B (its JWKS publishes the new next key; B signs with the
  promoted key), and tokens signed before still verify;
* SIGKILL of node A after it served the sign-in page: the journey completes on B, and every refresh
  token, consent and ledger entry made before is still there;
* a restart of Redis (a private ``redis-server`` started by this test, never the machine's shared one):
  pending codes are gone (documented), but refresh tokens, consents and the consent ledger are not
  (refresh works, no consent page, same ledger count).

Locally a missing PostgreSQL or ``redis-server`` skips with the reason; under CI=true it fails.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from tests.support import services
from tests.support.authenticator import SoftAuthenticator
from tests.support.browser import csrf_token, pkce_pair
from tests.support.server import LiveServer, free_port

pytestmark = pytest.mark.timeout(600)

REDIRECT = "http://127.0.0.1:9/cb"  # never contacted: the test reads the redirect instead
SCOPE = "openid profile email offline_access"
DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
PASSWORD = "two nodes correct horse"
HTTP_TIMEOUT = 20
# The documented bound of a rotation reaching every process: the file ring is re-read within 1 s of a change, the
# database ring within IDP_KEYS_REFRESH_SECONDS (5 s by default). The margin covers a loaded 2-core host.
KEY_BOUND = {"files": 1.0, "database": 5.0}
KEY_MARGIN = 10.0


# -- a private Redis we may restart -----------------------------------------------------------------------------------

class RedisProcess:
    """``redis-server`` on a free port without persistence (a restart loses everything, on purpose)."""

    def __init__(self):
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisProcess":
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return self
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start")
                time.sleep(0.1)
            finally:
                client.close()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # our own child, by its pid
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def dbsize(self) -> int:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            return client.dbsize()
        finally:
            client.close()


def _require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        services.missing("redis-server is not installed (the two-node test starts and restarts its own Redis)")


# -- the deployment ---------------------------------------------------------------------------------------------------

class Cluster:
    def __init__(self, database_url: str, redis: RedisProcess, keys_dir: str, key_store: str):
        self.database_url, self.redis, self.keys_dir, self.key_store = database_url, redis, keys_dir, key_store
        port_a = free_port()
        self.issuer = f"http://localhost:{port_a}"
        env = {"REDIS_URL": redis.url, "IDP_RATELIMIT_SIGNIN": "200 per minute",
               "IDP_RATELIMIT_REGISTER": "3 per hour", "GUNICORN_THREADS": "2"}
        shared = dict(database_url=database_url, secret_key=secrets.token_urlsafe(48), issuer=self.issuer,
                      gunicorn_config="python:app.gunicorn_conf", env=env)
        if key_store == "database":
            # The recommended recipe: the ring in the shared database, encrypted; each node has its own (unused,
            # empty) IDP_KEYS_DIR, so nothing on a shared file system is involved.
            env.update(IDP_KEYS_STORE="database", IDP_KEY_ENCRYPTION_KEY=secrets.token_urlsafe(32))
        else:
            shared["keys_dir"] = keys_dir  # one folder on a shared volume
        self.a = LiveServer(port=port_a, **shared)
        # The shared-volume run serves node B with granian (python -m app.serve): both production servers side
        # by side, as during a switch from one to the other; every journey below crosses them.
        self.b = LiveServer(migrate=False, server="granian" if key_store == "files" else "gunicorn", **shared)

    def start(self) -> "Cluster":
        self.a.start()          # runs `flask db upgrade`, once, from one place
        self.b.start()
        return self

    def ensure_up(self) -> None:
        for node in (self.a, self.b):
            if not node.running():
                node.migrate = False
                node.start()

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()

    def logs(self) -> str:
        return f"--- node A ---\n{self.a.log_tail()}\n--- node B ---\n{self.b.log_tail()}"

    # database facts, read directly (what "nothing is lost" means)
    def count(self, sql: str, **params) -> int:
        import sqlalchemy as sa

        engine = sa.create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(sql), params).scalar_one()
        finally:
            engine.dispose()


def _key_stores() -> list[str]:
    from app.config import SETTINGS

    return ["database", "files"] if any(s.env == "IDP_KEYS_STORE" for s in SETTINGS) else ["files"]


@pytest.fixture(scope="module", params=_key_stores())
def cluster(request):
    _require_redis_server()
    database_url = services.create_postgres_database()
    redis = RedisProcess()
    keys_dir = tempfile.mkdtemp(prefix="idp-two-nodes-keys-")
    deployment = None
    try:
        redis.start()
        deployment = Cluster(database_url, redis, keys_dir, request.param).start()
        web = deployment.a.run_cli("clients", "create", "--name", "Two Node Shop", "--redirect-uri", REDIRECT,
                                   "--grant-type", "authorization_code", "--grant-type", "refresh_token",
                                   "--grant-type", "client_credentials", "--scope", SCOPE, "--json")
        tv = deployment.b.run_cli("clients", "create", "--name", "Two Node TV", "--public", "--grant-type", DEVICE,
                                  "--grant-type", "refresh_token", "--scope", SCOPE, "--json")
        deployment.web, deployment.tv = web, tv
        yield deployment
    finally:
        if deployment is not None:
            deployment.stop()
        redis.stop()
        shutil.rmtree(keys_dir, ignore_errors=True)
        services.drop_postgres_database(database_url)


@pytest.fixture
def nodes(cluster):
    cluster.ensure_up()
    return cluster


_users = iter(range(1, 10_000))


def new_customer(cluster: Cluster) -> dict:
    n = next(_users)
    email = f"two.nodes.{n}.{secrets.token_hex(3)}@example.com"
    user = cluster.a.run_cli("users", "create", "--email", email, "--password", PASSWORD, "--name", f"Node Tester {n}",
                             "--email-verified", "--json")
    return {"email": email, "sub": user["sub"]}


# -- a browser whose every request goes to the node the test names ----------------------------------------------------

class Browser:
    """One ``requests.Session`` (one cookie jar) talking to whichever node each hop is sent to."""

    def __init__(self, cluster: Cluster, email: str | None = None):
        self.cluster, self.email = cluster, email
        self.http = requests.Session()

    def _url(self, node: LiveServer, path: str) -> str:
        assert path.startswith("/"), path
        return node.url + path

    def get(self, node, path, **kw):
        return self.http.get(self._url(node, path), allow_redirects=False, timeout=HTTP_TIMEOUT, **kw)

    def post(self, node, path, **kw):
        return self.http.post(self._url(node, path), allow_redirects=False, timeout=HTTP_TIMEOUT, **kw)

    def post_json(self, node, path, body, token):
        return self.post(node, path, data=json.dumps(body),
                         headers={"Content-Type": "application/json", "X-CSRFToken": token})

    def follow(self, resp, route, *, login: bool = True, consent: str | None = "allow", max_hops: int = 12):
        """Follow the journey until it leaves for the app, sending hop i to ``route(i)``.

        Returns (final response, list of pages seen: "login", "consent", or "other").
        """
        seen = []
        for hop in range(max_hops):
            node = route(hop)
            if resp.status_code in (302, 303):
                loc = resp.headers["Location"]
                if loc.startswith(REDIRECT):
                    return resp, seen
                parts = urlsplit(loc)
                if parts.netloc:  # absolute URLs name the issuer (the load balancer): route like any other hop
                    assert loc.startswith(self.cluster.issuer + "/"), loc
                resp = self.get(node, parts.path + ("?" + parts.query if parts.query else ""))
                continue
            html = resp.text if resp.status_code == 200 else ""
            if 'action="/login' in html and login:
                seen.append("login")
                resp = self.submit_form(node, html, email=self.email, password=PASSWORD)
                continue
            if 'name="decision"' in html and consent:
                seen.append("consent")
                purposes = re.findall(r'name="purpose" value="([^"]+)" checked(?! disabled)>', html)
                resp = self.submit_form(node, html, decision=consent, purpose=purposes)
                continue
            return resp, seen
        raise AssertionError("too many hops")

    def submit_form(self, node, html, **fields):
        action = unescape(re.search(r'<form method="post" action="([^"]+)"', html).group(1))
        iid = re.search(r'name="interaction" (?:type="hidden" )?value="([^"]*)"', html)
        data = {"csrf_token": csrf_token(html), **fields}
        if iid:
            data["interaction"] = unescape(iid.group(1))
        return self.post(node, action, data=data)


def alternate(first: LiveServer, second: LiveServer):
    return lambda hop: (first, second)[hop % 2]


def only(node: LiveServer):
    return lambda hop: node


def authorize_query(cluster: Cluster, **extra) -> tuple[str, dict]:
    verifier, challenge = pkce_pair()
    params = {"client_id": cluster.web["client_id"], "redirect_uri": REDIRECT, "response_type": "code",
              "scope": SCOPE, "state": secrets.token_urlsafe(8), "nonce": secrets.token_urlsafe(8),
              "code_challenge": challenge, "code_challenge_method": "S256", **extra}
    return "/authorize?" + urlencode(params), {"verifier": verifier, **params}


def callback(resp, expected: dict, cluster: Cluster) -> str:
    assert resp.status_code == 302 and resp.headers["Location"].startswith(REDIRECT), (resp.status_code, resp.text[:500])
    q = {k: v[0] for k, v in parse_qs(urlsplit(resp.headers["Location"]).query).items()}
    assert q.get("state") == expected["state"] and q.get("iss") == cluster.issuer, q
    return q["code"]


def web_auth(cluster: Cluster):
    return (cluster.web["client_id"], cluster.web["client_secret"])


def redeem(cluster: Cluster, node: LiveServer, code: str, expected: dict):
    return requests.post(node.url + "/token", auth=web_auth(cluster), timeout=HTTP_TIMEOUT, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": expected["verifier"]})


def refresh(cluster: Cluster, node: LiveServer, refresh_token: str):
    return requests.post(node.url + "/token", auth=web_auth(cluster), timeout=HTTP_TIMEOUT,
                         data={"grant_type": "refresh_token", "refresh_token": refresh_token})


def introspect(cluster: Cluster, node: LiveServer, token: str) -> dict:
    resp = requests.post(node.url + "/introspect", auth=web_auth(cluster), data={"token": token}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.json()


def header(jws: str) -> dict:
    part = jws.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def verify(jws: str, node: LiveServer) -> dict:
    from joserfc import jwt
    from joserfc.jwk import KeySet

    jwks = requests.get(node.url + "/jwks.json", timeout=HTTP_TIMEOUT).json()
    return jwt.decode(jws, KeySet.import_key_set(jwks)).claims


def sign_in_and_get_tokens(cluster: Cluster, browser: Browser, route, token_node: LiveServer, **extra) -> dict:
    path, expected = authorize_query(cluster, **extra)
    resp, seen = browser.follow(browser.get(route(0), path), lambda hop: route(hop + 1))
    code = callback(resp, expected, cluster)
    tokens = redeem(cluster, token_node, code, expected)
    assert tokens.status_code == 200, (tokens.text, cluster.logs())
    return {**tokens.json(), "seen": seen, "expected": expected, "code": code}


# -- journeys ---------------------------------------------------------------------------------------------------------

def test_both_nodes_speak_for_the_one_issuer_whatever_the_host(nodes):
    for node in (nodes.a, nodes.b):
        doc = requests.get(node.url + "/.well-known/openid-configuration", timeout=HTTP_TIMEOUT).json()
        assert doc["issuer"] == nodes.issuer
        assert doc["token_endpoint"] == nodes.issuer + "/token"
        assert doc["jwks_uri"] == nodes.issuer + "/jwks.json"
    ja = requests.get(nodes.a.url + "/jwks.json", timeout=HTTP_TIMEOUT).json()
    jb = requests.get(nodes.b.url + "/jwks.json", timeout=HTTP_TIMEOUT).json()
    assert sorted(k["kid"] for k in ja["keys"]) == sorted(k["kid"] for k in jb["keys"])  # one key ring


def test_authorize_across_nodes_and_redeem_the_code_on_the_other(nodes):
    who = new_customer(nodes)
    browser = Browser(nodes, who["email"])
    tokens = sign_in_and_get_tokens(nodes, browser, alternate(nodes.a, nodes.b), token_node=nodes.b)
    assert tokens["seen"] == ["login", "consent"]  # the pages really were served, by alternating nodes
    # The browser's cookies (set by whichever node) reach the other port: one SSO session for the deployment.
    assert {c.name for c in browser.http.cookies} >= {"idp_session"}
    for node in (nodes.a, nodes.b):
        idt = verify(tokens["id_token"], node)
        assert idt["iss"] == nodes.issuer and idt["sub"] == who["sub"] and idt["aud"] == nodes.web["client_id"]
        assert idt["nonce"] == tokens["expected"]["nonce"] and idt["amr"] == ["pwd"]
        at = verify(tokens["access_token"], node)
        assert at["iss"] == nodes.issuer and at["client_id"] == nodes.web["client_id"]
        info = requests.get(node.url + "/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]},
                            timeout=HTTP_TIMEOUT)
        assert info.status_code == 200 and info.json()["email"] == who["email"]

    # The production access logs (app/gunicorn_conf.py, app/serve.py) have the paths, never a query string,
    # code or token.
    for node in (nodes.a, nodes.b):
        log = node.log_path.read_text(errors="replace")
        assert '"GET /authorize HTTP/1.1" 303' in log or '"GET /authorize/resume HTTP/1.1"' in log
        for secret in (tokens["code"], tokens["expected"]["state"], tokens["expected"]["code_challenge"],
                       tokens["access_token"], tokens["refresh_token"], "interaction="):
            assert secret not in log

    # A second app sign-in (any node) needs no password: the session is shared.
    path, expected = authorize_query(nodes)
    resp, seen = browser.follow(browser.get(nodes.b, path), only(nodes.a))
    callback(resp, expected, nodes)
    assert seen == []


def test_code_replay_on_the_other_node_is_refused(nodes):
    who = new_customer(nodes)
    browser = Browser(nodes, who["email"])
    path, expected = authorize_query(nodes)
    resp, _ = browser.follow(browser.get(nodes.a, path), only(nodes.a))
    code = callback(resp, expected, nodes)
    first = redeem(nodes, nodes.a, code, expected)
    assert first.status_code == 200, first.text
    replay = redeem(nodes, nodes.b, code, expected)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # …and the replay revoked what the code had issued (RFC 6749 §4.1.2), seen from the first node.
    assert introspect(nodes, nodes.a, first.json()["access_token"])["active"] is False


def test_refresh_on_one_node_revoke_on_the_other_introspect_says_inactive(nodes):
    who = new_customer(nodes)
    browser = Browser(nodes, who["email"])
    tokens = sign_in_and_get_tokens(nodes, browser, only(nodes.b), token_node=nodes.b)
    refreshed = refresh(nodes, nodes.a, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert introspect(nodes, nodes.b, new["access_token"])["active"] is True
    assert introspect(nodes, nodes.b, new["refresh_token"])["active"] is True

    for token in (new["access_token"], new["refresh_token"]):
        resp = requests.post(nodes.b.url + "/revoke", auth=web_auth(nodes), data={"token": token},
                             timeout=HTTP_TIMEOUT)
        assert resp.status_code == 200, resp.text
    assert introspect(nodes, nodes.a, new["access_token"])["active"] is False
    assert introspect(nodes, nodes.a, new["refresh_token"])["active"] is False
    assert refresh(nodes, nodes.a, new["refresh_token"]).json()["error"] == "invalid_grant"
    userinfo = requests.get(nodes.a.url + "/userinfo", headers={"Authorization": "Bearer " + new["access_token"]},
                            timeout=HTTP_TIMEOUT)
    assert userinfo.status_code == 401


def test_a_machine_token_revoked_on_one_node_is_inactive_on_the_other(nodes):
    """Client-credentials tokens have no row: their revocation is the deny-list in the shared Redis."""
    token = _client_credentials(nodes, nodes.a)
    assert introspect(nodes, nodes.b, token)["active"] is True
    resp = requests.post(nodes.b.url + "/revoke", auth=web_auth(nodes), data={"token": token}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert introspect(nodes, nodes.a, token)["active"] is False
    assert introspect(nodes, nodes.b, token)["active"] is False
    assert introspect(nodes, nodes.a, _client_credentials(nodes, nodes.a))["active"] is True


def test_rate_limit_counters_are_shared_by_the_nodes(nodes):
    # IDP_RATELIMIT_REGISTER is "3 per hour" for this deployment: two attempts on A and one on B use it up,
    # so the next one is refused on B, which alone has seen only one.
    browser = Browser(nodes)
    statuses = []
    for node in (nodes.a, nodes.a, nodes.b, nodes.b):
        page = browser.get(node, "/register")
        assert page.status_code == 200
        resp = browser.post(node, "/register", data={"csrf_token": csrf_token(page.text), "email": "not-an-email",
                                                     "password": "x", "name": ""})
        statuses.append(resp.status_code)
    assert statuses == [400, 400, 400, 429], statuses


def test_passkey_ceremonies_begun_on_one_node_finish_on_the_other(nodes):
    auth = SoftAuthenticator(origin=nodes.issuer, rp_id="localhost")  # RP ID and origin come from the issuer
    browser = Browser(nodes)
    token = csrf_token(browser.get(nodes.a, "/login").text)
    email = f"passkey.{secrets.token_hex(4)}@example.com"
    opts = browser.post_json(nodes.a, "/passkeys/signup/options", {"email": email, "name": "Pia Passkey"}, token)
    assert opts.status_code == 200, opts.text
    assert opts.json()["rp"]["id"] == "localhost"
    done = browser.post_json(nodes.b, "/passkeys/signup/verify", {"credential": auth.create(opts.json())}, token)
    assert done.status_code == 200, (done.text, nodes.logs())

    # Sign in with it in the middle of an app's authorization: options on A, assertion verified on B.
    browser = Browser(nodes)  # a fresh browser: no session
    path, expected = authorize_query(nodes)
    resp = browser.get(nodes.b, path)
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/login?interaction=")
    login_path = resp.headers["Location"]
    iid = parse_qs(urlsplit(login_path).query)["interaction"][0]
    token = csrf_token(browser.get(nodes.a, login_path).text)
    options = browser.post_json(nodes.a, "/passkeys/login/options", {"interaction": iid}, token)
    assert options.status_code == 200, options.text
    verified = browser.post_json(nodes.b, "/passkeys/login/verify", {"credential": auth.get(options.json())}, token)
    assert verified.status_code == 200, (verified.text, nodes.logs())
    nxt = verified.json()["redirect"]
    resp, seen = browser.follow(browser.get(nodes.a, nxt), alternate(nodes.b, nodes.a))
    assert seen == ["consent"]
    code = callback(resp, expected, nodes)
    tokens = redeem(nodes, nodes.a, code, expected)
    assert tokens.status_code == 200, tokens.text
    idt = verify(tokens.json()["id_token"], nodes.b)
    assert idt["amr"] == ["hwk", "user", "mfa"] and idt["acr"] == "phrh"

    # A challenge is single use on every node: replaying the same assertion on A is refused.
    replay = browser.post_json(nodes.a, "/passkeys/login/verify", {"credential": auth.get(options.json())}, token)
    assert replay.status_code == 400


def test_device_polls_one_node_while_the_customer_approves_on_the_other(nodes):
    who = new_customer(nodes)
    tv_id = nodes.tv["client_id"]

    def poll(node):
        return requests.post(node.url + "/token", timeout=HTTP_TIMEOUT,
                             data={"grant_type": DEVICE, "device_code": started["device_code"], "client_id": tv_id})

    resp = requests.post(nodes.a.url + "/device_authorization", data={"client_id": tv_id, "scope": SCOPE},
                         timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    started = resp.json()
    assert started["verification_uri"] == nodes.issuer + "/device"
    t0 = time.monotonic()
    first = poll(nodes.a)
    assert first.json()["error"] == "authorization_pending"
    second = poll(nodes.b)
    if time.monotonic() - t0 < started["interval"]:
        # The polling clock is shared: the other node knows the device polled too fast.
        assert second.json()["error"] == "slow_down", second.text

    browser = Browser(nodes, who["email"])
    page = browser.get(nodes.b, "/device")
    resp = browser.post(nodes.b, "/device", data={"csrf_token": csrf_token(page.text), "user_code": started["user_code"]})
    resp, seen = browser.follow(resp, only(nodes.b), consent=None)
    assert seen == ["login"] and resp.status_code == 200 and 'name="decision"' in resp.text, resp.text[:1000]
    assert "Two Node TV" in resp.text
    code_field = unescape(re.search(r'name="user_code" value="([^"]+)"', resp.text).group(1))
    done = browser.post(nodes.b, "/device/confirm", data={"csrf_token": csrf_token(resp.text), "user_code": code_field,
                                                           "decision": "allow"})
    assert done.status_code == 200 and "Device connected" in done.text

    tokens = poll(nodes.a)
    assert tokens.status_code == 200, (tokens.text, nodes.logs())
    idt = verify(tokens.json()["id_token"], nodes.b)
    assert idt["sub"] == who["sub"] and idt["aud"] == tv_id
    assert poll(nodes.b).json()["error"] == "invalid_grant"  # spent everywhere
    again = requests.post(nodes.b.url + "/token", timeout=HTTP_TIMEOUT, data={
        "grant_type": "refresh_token", "refresh_token": tokens.json()["refresh_token"], "client_id": tv_id})
    assert again.status_code == 200, again.text


def _ring(cluster: Cluster) -> dict:
    rows = cluster.a.run_cli("keys", "list", "--json")
    return {(r["alg"], r["state"]): r["kid"] for r in rows if r["state"] != "retired"}


def _client_credentials(cluster: Cluster, node: LiveServer) -> str:
    resp = requests.post(node.url + "/token", auth=web_auth(cluster), timeout=HTTP_TIMEOUT,
                         data={"grant_type": "client_credentials"})
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def test_a_key_rotation_run_once_is_served_by_the_other_node(nodes):
    before = _ring(nodes)
    old_token = _client_credentials(nodes, nodes.b)
    assert header(old_token)["kid"] == before[("RS256", "current")]

    nodes.a.run_cli("keys", "rotate")  # one-off, from one place, against the shared key ring
    rotated_at = time.monotonic()
    after = _ring(nodes)
    assert after[("RS256", "current")] == before[("RS256", "next")]
    new_next = after[("RS256", "next")]
    assert new_next not in before.values()

    limit = KEY_BOUND[nodes.key_store] + KEY_MARGIN
    while True:  # B's workers re-read the ring within the documented bound; poll with a deadline
        kids = {k["kid"] for k in requests.get(nodes.b.url + "/jwks.json", timeout=HTTP_TIMEOUT).json()["keys"]}
        signed_with = header(_client_credentials(nodes, nodes.b))["kid"]
        if new_next in kids and signed_with == after[("RS256", "current")]:
            break
        assert time.monotonic() - rotated_at < limit, (
            f"node B still publishes {sorted(kids)} and signs with {signed_with} {limit}s after the rotation "
            f"({nodes.key_store} store)\n{nodes.logs()}")
        time.sleep(0.2)
    # Once the bound has passed, every worker of B signs with the new key, not just the one that answered first
    # (each process checks the ring on its own schedule; eight new connections reach both workers but for a 1-in-128
    # chance).
    time.sleep(max(0.0, rotated_at + KEY_BOUND[nodes.key_store] + 0.5 - time.monotonic()))
    for _ in range(8):
        assert header(_client_credentials(nodes, nodes.b))["kid"] == after[("RS256", "current")]
    # The retired key stays published: what it signed before the rotation still verifies, on both nodes.
    assert before[("RS256", "current")] in kids
    for node in (nodes.a, nodes.b):
        assert verify(old_token, node)["client_id"] == nodes.web["client_id"]
        assert introspect(nodes, node, old_token)["active"] is True


def test_node_killed_mid_journey_the_other_node_completes_it_and_nothing_is_lost(nodes):
    who = new_customer(nodes)
    earlier = Browser(nodes, who["email"])
    before_tokens = sign_in_and_get_tokens(nodes, earlier, only(nodes.a), token_node=nodes.a)
    ledger = nodes.count("SELECT count(*) FROM consent_events")
    live_refresh = nodes.count("SELECT count(*) FROM tokens WHERE refresh_hash IS NOT NULL AND revoked_at IS NULL "
                               "AND rotated_at IS NULL")

    someone = new_customer(nodes)
    browser = Browser(nodes, someone["email"])
    path, expected = authorize_query(nodes)
    resp = browser.get(nodes.a, path)
    login_path = resp.headers["Location"]
    page = browser.get(nodes.a, login_path)  # node A served the sign-in page …
    assert page.status_code == 200 and 'action="/login' in page.text

    nodes.a.kill()  # … and dies (SIGKILL, master and workers: no graceful shutdown)
    with pytest.raises(requests.ConnectionError):
        requests.get(nodes.a.url + "/.well-known/openid-configuration", timeout=5)

    # The load balancer sends the rest to B: the form from A (its CSRF token, its interaction) is accepted there.
    resp = browser.submit_form(nodes.b, page.text, email=someone["email"], password=PASSWORD)
    resp, seen = browser.follow(resp, only(nodes.b))
    assert seen == ["consent"]
    code = callback(resp, expected, nodes)
    tokens = redeem(nodes, nodes.b, code, expected)
    assert tokens.status_code == 200, (tokens.text, nodes.logs())
    assert verify(tokens.json()["id_token"], nodes.b)["sub"] == someone["sub"]

    # Nothing made before the crash is lost: the earlier customer's refresh token works on B, the ledger only grew.
    assert refresh(nodes, nodes.b, before_tokens["refresh_token"]).status_code == 200
    assert nodes.count("SELECT count(*) FROM consent_events") == ledger + 1  # + the consent just given on B
    assert nodes.count("SELECT count(*) FROM tokens WHERE refresh_hash IS NOT NULL AND revoked_at IS NULL "
                       "AND rotated_at IS NULL") == live_refresh + 1  # + the new one (the earlier was rotated 1:1)

    nodes.a.migrate = False
    nodes.a.start()  # back in the pool, same keys, same database
    assert introspect(nodes, nodes.a, tokens.json()["access_token"])["active"] is True


def test_redis_restart_loses_short_lived_state_only(nodes):
    who = new_customer(nodes)
    browser = Browser(nodes, who["email"])
    tokens = sign_in_and_get_tokens(nodes, browser, alternate(nodes.b, nodes.a), token_node=nodes.a)
    assert tokens["seen"] == ["login", "consent"]
    sub = who["sub"]
    ledger = nodes.count("SELECT count(*) FROM consent_events")
    grants = nodes.count("SELECT count(*) FROM consent_grants g JOIN users u ON u.id = g.user_id WHERE u.sub = :sub",
                         sub=sub)
    assert grants >= 1

    # In flight when Redis goes: an unredeemed code, a pending sign-in, a used-up rate limit.
    path, pending_code_expected = authorize_query(nodes)
    resp, _ = browser.follow(browser.get(nodes.a, path), only(nodes.a))
    pending_code = callback(resp, pending_code_expected, nodes)
    other = Browser(nodes, who["email"])
    path, _ = authorize_query(nodes)
    login_path = other.get(nodes.b, path).headers["Location"]
    resume = "/authorize/resume?" + urlencode({"interaction": parse_qs(urlsplit(login_path).query)["interaction"][0]})
    assert other.get(nodes.a, resume).status_code == 303  # pending: it sends the customer on to sign in
    for _ in range(10):
        page = other.get(nodes.a, "/register")
        limited = other.post(nodes.a, "/register", data={"csrf_token": csrf_token(page.text), "email": "x", "password": "x"})
        if limited.status_code == 429:
            break
    assert limited.status_code == 429
    assert nodes.redis.dbsize() > 0

    nodes.redis.restart()  # no persistence configured: everything in Redis is gone
    assert nodes.redis.dbsize() == 0

    # Lost, as documented: the code, the pending interaction, the rate-limit counter.
    lost = redeem(nodes, nodes.b, pending_code, pending_code_expected)
    assert lost.status_code == 400 and lost.json()["error"] == "invalid_grant"
    gone = other.get(nodes.a, resume)
    assert gone.status_code == 400 and "expired" in gone.text, gone.text[:500]
    page = other.get(nodes.b, "/register")
    again = other.post(nodes.b, "/register", data={"csrf_token": csrf_token(page.text), "email": "x", "password": "x"})
    assert again.status_code == 400  # counted afresh

    # Not lost: the single sign-on session (the browser signed in before the restart is not asked again), the refresh
    # token, the consent and the ledger.
    resumed = sign_in_and_get_tokens(nodes, browser, alternate(nodes.b, nodes.a), token_node=nodes.a)
    assert resumed["seen"] == [], resumed["seen"]
    assert verify(resumed["id_token"], nodes.b)["sub"] == sub
    for node in (nodes.a, nodes.b):
        refreshed = refresh(nodes, node, tokens["refresh_token"])
        assert refreshed.status_code == 200, (refreshed.text, nodes.logs())
        tokens["refresh_token"] = refreshed.json()["refresh_token"]
    fresh = sign_in_and_get_tokens(nodes, Browser(nodes, who["email"]), alternate(nodes.a, nodes.b),
                                   token_node=nodes.b)
    assert "consent" not in fresh["seen"]  # the customer may have to sign in again, but is not asked again
    assert nodes.count("SELECT count(*) FROM consent_events") == ledger
    assert nodes.count("SELECT count(*) FROM consent_grants g JOIN users u ON u.id = g.user_id WHERE u.sub = :sub",
                       sub=sub) == grants
