"""Errors of the identity layer.

`InvalidToken.reason` is safe to show to the caller (a 401 `error_description`, a log line): it
is one of the fixed strings below, never the token, a claim value or key material.
"""

from __future__ import annotations

# The reasons a token is refused. Callers may compare against these constants.
MALFORMED = "malformed token"
ALG_NOT_ALLOWED = "algorithm not allowed"
NO_KEY_ID = "token has no key id"
UNKNOWN_KEY = "unknown signing key"
BAD_SIGNATURE = "bad signature"
EXPIRED = "token expired"
NOT_YET_VALID = "token not yet valid"
ISSUED_IN_FUTURE = "token issued in the future"
WRONG_ISSUER = "wrong issuer"
WRONG_AUDIENCE = "wrong audience"
KEYS_UNAVAILABLE = "issuer keys unavailable"


def missing_claim(name: str) -> str:
    """`missing claim: sub` (only ever called with a fixed, registered claim name)."""
    return f"missing claim: {name}"


def invalid_claim(name: str) -> str:
    """`invalid claim: exp` (only ever called with a fixed, registered claim name)."""
    return f"invalid claim: {name}"


class AuthError(Exception):
    """Base class of the identity layer's errors."""


class InvalidToken(AuthError):
    """A bearer token was refused. `reason` is short and safe to return to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyFetchError(AuthError):
    """Discovery or JWKS retrieval failed (internal; surfaces as `KEYS_UNAVAILABLE`)."""


class DevIssuerError(AuthError):
    """The dev issuer's key file is unusable (corrupt, wrong key type)."""
