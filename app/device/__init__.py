"""OAuth 2.0 Device Authorization Grant (RFC 8628), hardened against device-code phishing.

* ``user_codes``: the short code a person types (RFC 8628 §6.1 guidance).
* ``state``: the device request, the customer's decision and the polling
  state in the short-lived store, so any node can answer any step.
* ``endpoint``: ``POST /device_authorization`` (RFC 8628 §3.1-3.2).
* ``grant``: the device code at the token endpoint (RFC 8628 §3.4-3.5).
* ``views``: the verification pages (``/device``), the QR code and the route
  of the device authorization endpoint.
"""

from __future__ import annotations

from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE

__all__ = ["DEVICE_CODE_GRANT_TYPE", "init_app"]


def init_app(app) -> None:
    from . import views

    views.init_app(app)
