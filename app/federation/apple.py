"""Sign in with Apple's client secret: an ES256 JWT signed with the operator's Apple key.

Apple (“Creating a client secret”): header ``alg=ES256``, ``kid`` = the key id; claims
``iss`` = the team id, ``iat``, ``exp`` (at most six months; we use five minutes, minted per
token request), ``aud=https://appleid.apple.com``, ``sub`` = the client id (the Services ID).
"""

from __future__ import annotations

import time

from joserfc import jwt
from joserfc.jwk import ECKey

from .providers import APPLE_AUDIENCE, ProviderError

SECRET_TTL = 300


def _key(path: str) -> ECKey:
    try:
        with open(path, "rb") as fh:
            return ECKey.import_key(fh.read())
    except (OSError, ValueError) as exc:
        raise ProviderError(f"cannot read the Apple private key {path}: {exc}") from exc


def client_secret(up) -> str:
    now = int(time.time())
    claims = {"iss": up.settings["team_id"], "iat": now, "exp": now + SECRET_TTL,
              "aud": APPLE_AUDIENCE, "sub": up.client_id}
    return jwt.encode({"alg": "ES256", "kid": up.settings["key_id"]}, claims, _key(up.settings["private_key_file"]),
                      algorithms=["ES256"])
