"""Account centre: sessions and devices (list, sign out one, sign out everywhere), device names, places."""

from __future__ import annotations

import pytest

from tests.support.browser import csrf_token

CHROME_WINDOWS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/124.0.0.0 Safari/537.36")
FIREFOX_ANDROID = "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0"


def browser(app, user_agent: str, ip: str):
    """A separate browser (its own cookie jar) with its own User-Agent and address."""
    b = app.test_client()
    b.environ_base.update(HTTP_USER_AGENT=user_agent, REMOTE_ADDR=ip)
    return b


def sign_in(b, customer):
    page = b.get("/login?next=/account")
    resp = b.post("/login?next=/account", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                                 "email": customer["email"], "password": customer["password"]})
    assert resp.status_code == 303 and resp.headers["Location"] == "/account"


def signed_in(b) -> bool:
    resp = b.get("/account")
    if resp.status_code == 303:
        assert "/login" in resp.headers["Location"]
        return False
    assert resp.status_code == 200
    return True


def _rows(app, customer, **filters):
    from app.accounts.models import LoginSession
    from app.extensions import db

    with app.app_context():
        return [(r.id, r.user_agent, r.ended_at) for r in db.session.execute(
            db.select(LoginSession).filter_by(user_id=customer["id"], **filters)).scalars()]


def _sid_of(app, customer, user_agent):
    return next(sid for sid, ua, _ in _rows(app, customer) if ua == user_agent)


def _audit_types(app, customer):
    from app.audit import AuditEvent
    from app.extensions import db

    with app.app_context():
        return [e.type for e in db.session.execute(
            db.select(AuditEvent).filter_by(user_id=customer["id"]).order_by(AuditEvent.id)).scalars()]


def test_sessions_page_lists_both_browsers_with_device_time_and_place(app, customer):
    laptop = browser(app, CHROME_WINDOWS, "198.51.100.23")
    phone = browser(app, FIREFOX_ANDROID, "10.1.2.3")
    sign_in(laptop, customer)
    sign_in(phone, customer)
    resp = laptop.get("/account/sessions")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "Sessions and devices" in html and "Sign out everywhere" in html
    assert "Chrome on Windows" in html and "Firefox on Android" in html
    assert html.count("This device") == 1
    # This device is listed first.
    assert html.index("Chrome on Windows") < html.index("Firefox on Android")
    assert "198.51.100.23" in html and "10.1.2.3" in html and "Local network" in html
    assert html.count('name="sid"') == 3  # one button per session + "all"


def test_ending_the_other_session_signs_that_browser_out(app, customer):
    laptop = browser(app, CHROME_WINDOWS, "198.51.100.23")
    phone = browser(app, FIREFOX_ANDROID, "198.51.100.24")
    sign_in(laptop, customer)
    sign_in(phone, customer)
    page = laptop.get("/account/sessions").get_data(as_text=True)
    phone_sid = _sid_of(app, customer, FIREFOX_ANDROID)
    resp = laptop.post("/account/sessions/end", data={"csrf_token": csrf_token(page), "sid": phone_sid})
    assert resp.status_code == 303 and resp.headers["Location"] == "/account/sessions"
    after = laptop.get("/account/sessions").get_data(as_text=True)
    assert "The session on Firefox on Android was signed out." in after
    assert "Firefox on Android" not in after.split("</nav>", 1)[1].split("was signed out")[1]
    assert not signed_in(phone)
    assert signed_in(laptop)
    assert "session_ended" in _audit_types(app, customer)
    ended = {sid: ended_at for sid, _, ended_at in _rows(app, customer)}
    assert ended[phone_sid] is not None


def test_sign_out_everywhere_signs_out_this_browser_too(app, customer):
    laptop = browser(app, CHROME_WINDOWS, "198.51.100.23")
    phone = browser(app, FIREFOX_ANDROID, "198.51.100.24")
    sign_in(laptop, customer)
    sign_in(phone, customer)
    page = laptop.get("/account/sessions").get_data(as_text=True)
    resp = laptop.post("/account/sessions/end", data={"csrf_token": csrf_token(page), "sid": "all"})
    assert resp.status_code == 200
    assert "You were signed out on every device, including this one." in resp.get_data(as_text=True)
    assert "idp_session=;" in resp.headers.get("Set-Cookie", "")
    assert not signed_in(laptop)
    assert not signed_in(phone)
    assert all(ended_at is not None for _, _, ended_at in _rows(app, customer))
    assert _audit_types(app, customer).count("session_ended") == 2


def test_ending_this_device_signs_it_out(app, customer):
    laptop = browser(app, CHROME_WINDOWS, "198.51.100.23")
    sign_in(laptop, customer)
    page = laptop.get("/account/sessions").get_data(as_text=True)
    resp = laptop.post("/account/sessions/end", data={"csrf_token": csrf_token(page),
                                                      "sid": _sid_of(app, customer, CHROME_WINDOWS)})
    assert resp.status_code == 200 and "You were signed out on this device." in resp.get_data(as_text=True)
    assert not signed_in(laptop)


def test_ending_needs_csrf_and_cannot_touch_other_customers(app, customer):
    from app.accounts.service import create_user
    from app.extensions import db

    laptop = browser(app, CHROME_WINDOWS, "198.51.100.23")
    phone = browser(app, FIREFOX_ANDROID, "198.51.100.24")
    sign_in(laptop, customer)
    sign_in(phone, customer)
    phone_sid = _sid_of(app, customer, FIREFOX_ANDROID)
    # No CSRF token: refused with a page, nothing ends.
    resp = laptop.post("/account/sessions/end", data={"sid": phone_sid})
    assert resp.status_code == 400 and "This form has expired" in resp.get_data(as_text=True)
    resp = laptop.post("/account/sessions/end", data={"sid": "all"})
    assert resp.status_code == 400
    assert signed_in(phone) and signed_in(laptop)
    # Another customer's session id: the same answer as an ended one, and it stays live.
    with app.app_context():
        create_user("grace@example.com", "another long password", "Grace Hopper")
        db.session.commit()
    other = browser(app, CHROME_WINDOWS, "198.51.100.25")
    sign_in(other, {"email": "grace@example.com", "password": "another long password"})
    page = other.get("/account/sessions").get_data(as_text=True)
    resp = other.post("/account/sessions/end", data={"csrf_token": csrf_token(page), "sid": phone_sid})
    assert resp.status_code == 303
    assert "That session has already ended." in other.get("/account/sessions").get_data(as_text=True)
    assert signed_in(phone)
    # Unknown id, empty id: the same.
    for sid in ("nope", ""):
        resp = other.post("/account/sessions/end", data={"csrf_token": csrf_token(page), "sid": sid})
        assert resp.status_code == 303


def test_sessions_page_requires_sign_in(client):
    resp = client.get("/account/sessions")
    assert resp.status_code == 303 and "/login?next=/account/sessions" in resp.headers["Location"]
    resp = client.get("/account/privacy")
    assert resp.status_code == 303 and "/login?next=/account/privacy" in resp.headers["Location"]


@pytest.mark.parametrize("ua, expected", [
    (CHROME_WINDOWS, "Chrome on Windows"),
    (FIREFOX_ANDROID, "Firefox on Android"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
     "Safari/605.1.15", "Safari on macOS"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.4 Mobile/15E148 Safari/604.1", "Safari on iPhone"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1", "Chrome on iPhone"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
     "Safari/537.36 Edg/124.0.2478.80", "Edge on Windows"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 "
     "OPR/109.0.0.0", "Opera on Linux"),
    ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 "
     "Chrome/117.0.0.0 Mobile Safari/537.36", "Samsung Internet on Android"),
    ("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
     "Safari/537.36", "Chrome on ChromeOS"),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", "Firefox on Linux"),
    ("curl/8.5.0", "curl"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) SomethingNew/1.0", "A browser on Windows"),
    ("", "Unknown device"),
    (None, "Unknown device"),
])
def test_device_descriptions(app, ua, expected):
    from app.portal.sessions_page import describe_device

    with app.test_request_context("/"):
        assert describe_device(ua) == expected


def test_place_fallback_without_geoip_database(make_app, tmp_path):
    from app import geo

    for cfg in ({}, {"IDP_GEOIP_DB": str(tmp_path / "missing.mmdb")}):
        app = make_app(**cfg)
        with app.test_request_context("/"):
            assert geo.place("127.0.0.1") == "Local network"
            assert geo.place("::1") == "Local network"
            assert geo.place("10.0.0.7") == "Local network"
            assert geo.place("192.168.1.20") == "Local network"
            assert geo.place("fe80::1") == "Local network"
            assert geo.place("8.8.8.8") is None  # no database: only the address is shown
            assert geo.place("not an address") is None
            assert geo.place(None) is None
