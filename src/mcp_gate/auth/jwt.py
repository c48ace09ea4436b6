"""Bearer JWT validation against an OIDC issuer → `Principal`.

Order of checks, each failing with `InvalidToken(reason)`:

1. shape: a compact JWS (three base64url segments, at most 16 KiB) → `malformed token`;
2. header: `alg` in the allow-list (never `none`, never HS*: we only hold public keys, so an
   HS256 token "signed" with our public key as HMAC secret is refused before any key is
   looked at) → `algorithm not allowed`; no `crit`, no RFC 7797 unencoded payload;
3. key: the issuer's JWKS key for `kid` whose type fits `alg` (one rate-limited refetch on an
   unknown `kid`) → `unknown signing key` / `issuer keys unavailable`;
4. signature → `bad signature`. Nothing in the payload is looked at before this point;
5. claims: `exp`, `iss`, `aud`, `sub` required; `iss` equal to the configured issuer;
   `aud` (string or list) containing our audience; `exp`/`nbf`/`iat` with `leeway` seconds.

Groups (`groups_claim`, default `groups`):

- a list → every non-empty string in it is a group; other elements are ignored;
- a string → exactly ONE group, never split on spaces or commas. Splitting could manufacture a
  group the IdP never asserted ("Domain Admins" → "Admins"; an LDAP DN
  "cn=dba,ou=groups" → "cn=dba"), while keeping it whole can only fail to match;
- anything else, or absent → no groups (the token is still valid);
- the claim name is looked up as a top-level key first; only if absent and the name contains
  dots is it read as a path into nested objects (Keycloak's `realm_access.roles`). A
  namespaced claim such as `https://example.com/groups` therefore still works.

`client_id` comes from `azp`, else `client_id`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc import jws
from joserfc.errors import (
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from ..calls import Principal
from .errors import (
    ALG_NOT_ALLOWED,
    BAD_SIGNATURE,
    EXPIRED,
    ISSUED_IN_FUTURE,
    MALFORMED,
    NOT_YET_VALID,
    WRONG_AUDIENCE,
    WRONG_ISSUER,
    InvalidToken,
    invalid_claim,
    missing_claim,
)
from .jwks import ALG_KEY_TYPES, JwksCache, KeySource, StaticKeys

#: Algorithms accepted unless configured otherwise (all public-key; `Ed25519` is the RFC 9864
#: fully-specified name of `EdDSA` over Ed25519).
DEFAULT_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "ES256",
    "ES384",
    "EdDSA",
    "Ed25519",
)
#: Every algorithm that may be configured.
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(ALG_KEY_TYPES)

MAX_TOKEN_LENGTH = 16 * 1024
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")
_TIME_CLAIMS = ("exp", "nbf", "iat")
_CLAIM_REASONS = {
    "iss": WRONG_ISSUER,
    "aud": WRONG_AUDIENCE,
    "nbf": NOT_YET_VALID,
    "iat": ISSUED_IN_FUTURE,
}


class _Registry(JWSRegistry):
    """joserfc's JWS registry, restricted to our allow-list.

    `get_alg` is overridden only to drop joserfc's per-call deprecation warning for `EdDSA`;
    the allow-list is enforced the same way (and was already checked by the verifier).
    """

    max_header_length = 2048

    def get_alg(self, name: str):  # type: ignore[override]
        if name not in self.algorithms or not self.allowed or name not in self.allowed:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A validated token: who, plus what the HTTP layer may want (expiry, scopes, claims)."""

    principal: Principal
    expires_at: float
    scopes: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)


class JwtVerifier:
    """Validates bearer JWTs of one issuer for one audience.

    Keys come from `jwks` (a fixed JWK set, no I/O) if given, else from the issuer's JWKS
    over HTTP: `jwks_uri` if given, else OIDC discovery. `http` is used for that and is not
    closed by `aclose()` when injected. `cache_ttl`, `refetch_interval`, `timeout` and `clock`
    tune the `JwksCache` (see `mcp_gate.auth.jwks`).
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        groups_claim: str = "groups",
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        leeway: int = 30,
        http: httpx.AsyncClient | None = None,
        jwks_uri: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        cache_ttl: float = 600.0,
        refetch_interval: float = 30.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not issuer:
            raise ValueError("issuer must not be empty")
        if not audience:
            raise ValueError("audience must not be empty")
        if not groups_claim:
            raise ValueError("groups_claim must not be empty")
        algs = tuple(dict.fromkeys(algorithms))
        if not algs:
            raise ValueError("at least one algorithm must be allowed")
        for alg in algs:
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(
                    f"JWS algorithm {alg!r} cannot be allowed: only public-key algorithms "
                    f"({', '.join(sorted(SUPPORTED_ALGORITHMS))}) are supported"
                )
        if leeway < 0:
            raise ValueError("leeway must not be negative")

        self.issuer = issuer
        self.audience = audience
        self.groups_claim = groups_claim
        self.algorithms: frozenset[str] = frozenset(algs)
        self.leeway = int(leeway)
        self._registry = _Registry(algorithms=list(algs), strict_check_header=False)
        self._claims = JWTClaimsRegistry(
            leeway=self.leeway,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            exp={"essential": True},
        )

        self._own_http: httpx.AsyncClient | None = None
        self.keys: KeySource
        if jwks is not None:
            self.keys = StaticKeys(jwks)
        else:
            if http is None:
                http = self._own_http = httpx.AsyncClient()
            self.keys = JwksCache(
                http,
                issuer=issuer,
                jwks_uri=jwks_uri,
                cache_ttl=cache_ttl,
                refetch_interval=refetch_interval,
                timeout=timeout,
                clock=clock,
            )

    async def __aenter__(self) -> JwtVerifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this verifier created it."""
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None

    async def verify(self, token: str) -> Principal:
        """The caller behind `token`, or `InvalidToken(reason)`."""
        return (await self.authenticate(token)).principal

    async def authenticate(self, token: str) -> VerifiedToken:
        """Like `verify`, with the token's expiry, scopes and claims."""
        if not isinstance(token, str):
            raise InvalidToken(MALFORMED)
        token = token.strip()
        if not token or len(token) > MAX_TOKEN_LENGTH or not _COMPACT_JWS.fullmatch(token):
            raise InvalidToken(MALFORMED)
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
        except (JoseError, ValueError, TypeError):
            raise InvalidToken(MALFORMED) from None
        header = obj.headers()

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken(ALG_NOT_ALLOWED)
        if "crit" in header or header.get("b64", True) is not True:
            raise InvalidToken(MALFORMED)
        try:
            self._registry.check_header(header)
        except JoseError:
            raise InvalidToken(MALFORMED) from None
        kid = header.get("kid")

        key = await self.keys.get_key(kid, alg)
        try:
            valid = jws.validate_compact(obj, key, registry=self._registry)
        except (JoseError, ValueError, TypeError):
            valid = False
        if not valid:
            raise InvalidToken(BAD_SIGNATURE)

        try:
            claims = json.loads(obj.payload or b"")
        except (ValueError, RecursionError):
            raise InvalidToken(MALFORMED) from None
        if not isinstance(claims, dict):
            raise InvalidToken(MALFORMED)
        self._check_claims(claims)

        principal = Principal(
            subject=claims["sub"],
            groups=extract_groups(claims, self.groups_claim),
            client_id=_client_id(claims),
        )
        return VerifiedToken(
            principal=principal,
            expires_at=float(claims["exp"]),
            scopes=_scopes(claims),
            claims=claims,
        )

    def _check_claims(self, claims: dict[str, Any]) -> None:
        for name in _REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise InvalidToken(missing_claim(name))
        for name in _TIME_CLAIMS:
            if name in claims and not _is_numeric_date(claims[name]):
                raise InvalidToken(invalid_claim(name))
        try:
            self._claims.validate(claims)
        except ExpiredTokenError:
            raise InvalidToken(EXPIRED) from None
        except MissingClaimError as exc:
            raise InvalidToken(missing_claim(exc.claim)) from None
        except InvalidClaimError as exc:
            raise InvalidToken(_CLAIM_REASONS.get(exc.claim, invalid_claim(exc.claim))) from None


def extract_groups(claims: Mapping[str, Any], claim_name: str) -> frozenset[str]:
    """The groups asserted in `claims[claim_name]` (see the module docstring for the rules)."""
    value = _lookup(claims, claim_name)
    if isinstance(value, str):
        return frozenset((value,)) if value else frozenset()
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str) and v)
    return frozenset()


def _lookup(claims: Mapping[str, Any], name: str) -> Any:
    if name in claims:
        return claims[name]
    if "." not in name:
        return None
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _client_id(claims: Mapping[str, Any]) -> str | None:
    for name in ("azp", "client_id"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _scopes(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """`scope` (RFC 8693/9068, space-separated) or `scp` (a list or a space-separated string)."""
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            return tuple(dict.fromkeys(value.split()))
        if isinstance(value, list):
            return tuple(dict.fromkeys(v for v in value if isinstance(v, str) and v))
    return ()


def _is_numeric_date(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)
