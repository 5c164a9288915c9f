"""User codes (RFC 8628 §6.1): short, easy to read aloud and to type, hard to guess.

Eight characters from twenty consonants (no vowels, so no words can form; no
digits, so nothing to confuse with O, I or S) give 20^8 ≈ 2^34.6 codes. With a few hundred codes alive at once
and code entry rate-limited per IP address and per browser, guessing a live
code is futile (§5.1). Codes are shown as ``XXXX-XXXX`` and accepted in any
case, with or without the dash or spaces.
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
LENGTH = 8
_IGNORED = re.compile(r"[\s\-‐-―−]")  # spaces and every kind of dash


def generate() -> str:
    """A new code in its normalised form (eight capital letters, no dash)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def normalise(raw: str | None) -> str | None:
    """The normalised code for what a person typed, or None if it cannot be a code at all."""
    if not isinstance(raw, str) or len(raw) > 32:
        return None
    code = _IGNORED.sub("", raw).upper()
    if len(code) != LENGTH or any(c not in ALPHABET for c in code):
        return None
    return code


def display(code: str) -> str:
    """``BCDFGHJK`` → ``BCDF-GHJK`` (how devices and pages show it)."""
    return f"{code[:4]}-{code[4:]}"
