"""Identity: bearer JWT validation against OIDC issuers, the built-in dev issuer, and the
HTTP-facing auth helpers (401 challenge, Protected Resource Metadata).

Library note: JOSE is done with `joserfc`, the library `authlib` itself delegates to since
1.7 (`authlib.jose` is deprecated there and warns on import).
"""

from __future__ import annotations

from .dev_issuer import DevIssuer, dev_issuer_routes
from .errors import AuthError, DevIssuerError, InvalidToken
from .jwks import JwksCache, StaticKeys
from .jwt import DEFAULT_ALGORITHMS, JwtVerifier, VerifiedToken, extract_groups
from .prm import protected_resource_metadata, resource_metadata_url, www_authenticate

__all__ = [
    "DEFAULT_ALGORITHMS",
    "AuthError",
    "DevIssuer",
    "DevIssuerError",
    "InvalidToken",
    "JwksCache",
    "JwtVerifier",
    "StaticKeys",
    "VerifiedToken",
    "dev_issuer_routes",
    "extract_groups",
    "protected_resource_metadata",
    "resource_metadata_url",
    "www_authenticate",
]
