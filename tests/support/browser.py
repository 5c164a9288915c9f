"""A scripted customer over Flask's test client: follows redirects, fills the sign-in and consent forms."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"')


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def csrf_token(html: str) -> str:
    m = CSRF.search(html)
    assert m, "page has no CSRF token"
    return unescape(m.group(1) or m.group(2))


def path_of(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + ("?" + parts.query if parts.query else "")


class Customer:
    """Drives the HTML pages the way a person would (one browser = one test client)."""

    def __init__(self, client, email=None, password=None):
        self.client, self.email, self.password = client, email, password

    def authorize(self, **params):
        return self.client.get("/authorize?" + urlencode(params))

    def start(self, rp: dict, scope: str = "openid", **follow):
        """Begin a code flow with PKCE for ``rp`` and follow it (``follow``: ``follow``'s options, such as
        ``login=False`` to stop at the sign-in page); returns the last response and the code verifier."""
        verifier, challenge = pkce_pair()
        resp = self.authorize(response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"],
                              scope=scope, code_challenge=challenge, code_challenge_method="S256")
        return self.follow(resp, **follow), verifier

    def follow(self, resp, *, consent: str | None = "allow", login: bool = True, max_hops: int = 10):
        """Follow the journey until it leaves for the app; returns the final response (302 to app or form_post)."""
        for _ in range(max_hops):
            if resp.status_code in (302, 303):
                loc = resp.headers["Location"]
                if not loc.startswith(("/", "http://localhost/")):
                    return resp
                resp = self.client.get(path_of(loc))
                continue
            if resp.status_code == 200 and b'action="/login' in resp.data and login:
                resp = self.submit_login(resp)
                continue
            if resp.status_code == 200 and b'name="decision"' in resp.data and consent:
                resp = self.submit_consent(resp, consent)
                continue
            return resp
        raise AssertionError("too many hops")

    def submit_login(self, page, password=None):
        html = page.get_data(as_text=True)
        action = unescape(re.search(r'<form method="post" action="([^"]+)"', html).group(1))
        iid = re.search(r'name="interaction" type="hidden" value="([^"]*)"', html)
        return self.client.post(action, data={
            "csrf_token": csrf_token(html), "email": self.email, "password": password or self.password,
            "interaction": unescape(iid.group(1)) if iid else "",
        })

    def submit_consent(self, page, decision="allow", purposes: list[str] | None = None):
        """Press Allow or Deny. Purpose checkboxes are sent as the page ticked them, or as ``purposes`` says."""
        html = page.get_data(as_text=True)
        action = unescape(re.search(r'<form method="post" action="([^"]+)"', html).group(1))
        iid = re.search(r'name="interaction" type="hidden" value="([^"]*)"', html)
        if purposes is None:
            purposes = re.findall(r'name="purpose" value="([^"]+)" checked(?! disabled)>', html)
        return self.client.post(action, data={"csrf_token": csrf_token(html), "decision": decision,
                                              "interaction": unescape(iid.group(1)), "purpose": purposes})


def interaction_id(html: str) -> str:
    """The pending request a sign-in or consent page carries."""
    m = re.search(r'name="interaction" type="hidden" value="([^"]*)"', html)
    assert m, "page has no interaction"
    return unescape(m.group(1))


def callback_params(resp) -> dict:
    assert resp.status_code == 302, resp.status_code
    q = parse_qs(urlsplit(resp.headers["Location"]).query)
    return {k: v[0] for k, v in q.items()}
