"""The approximate place of an IP address, for the sessions page and the data export.

With ``IDP_GEOIP_DB`` pointing to a MaxMind GeoLite2/GeoIP2 City ``.mmdb`` file
and the optional ``maxminddb`` package installed, a public address becomes
"City, Country". The package is deliberately not a dependency: without it (or
without the file) private and loopback addresses read "Local network" and
public addresses get no place at all — the page then shows only the address.
"""

from __future__ import annotations

import functools
import ipaddress
import logging

from flask import current_app
from flask_babel import gettext as _

log = logging.getLogger(__name__)


def place(ip: str | None) -> str | None:
    """A short human description of where ``ip`` is, or None when nothing useful is known."""
    try:
        addr = ipaddress.ip_address((ip or "").strip())
    except ValueError:
        return None
    if addr.is_private or addr.is_loopback or addr.is_link_local:
        return _("Local network")
    record = _lookup(current_app.config.get("IDP_GEOIP_DB"), str(addr))
    if not record:
        return None
    return _describe(record)


def _lookup(path: str | None, ip: str) -> dict | None:
    reader = _reader(path) if path else None
    if reader is None:
        return None
    try:
        record = reader.get(ip)
    except (ValueError, OSError) as exc:  # a corrupt database must not break the page
        log.warning("geoip lookup failed: %s", exc.__class__.__name__)
        return None
    return record if isinstance(record, dict) else None


@functools.lru_cache(maxsize=4)
def _reader(path: str):
    """One open reader per database file (memory-mapped, safe to share between threads)."""
    try:
        import maxminddb  # optional: not a dependency of the project
    except ImportError:
        log.info("IDP_GEOIP_DB is set but the maxminddb package is not installed; places are not shown")
        return None
    try:
        return maxminddb.open_database(path)
    except (OSError, ValueError) as exc:
        log.warning("cannot open IDP_GEOIP_DB (%s): %s", path, exc.__class__.__name__)
        return None


def _name(entry, lang: str) -> str | None:
    names = (entry or {}).get("names") or {}
    return names.get(lang) or names.get("en")


def _describe(record: dict) -> str | None:
    """"City, Country" in the customer's language when the database has it, else English."""
    from flask_babel import get_locale

    lang = str(get_locale() or "en")
    city = _name(record.get("city"), lang)
    country = _name(record.get("country") or record.get("registered_country"), lang)
    parts = [p for p in (city, country) if p]
    return ", ".join(parts) or None
