"""Signing keys of an OIDC issuer: discovery, JWKS fetching and caching.

`JwksCache` finds the issuer's `jwks_uri` with OIDC discovery (or takes a fixed one), fetches
the key set over HTTP with httpx and keeps it:

- for the response's `Cache-Control: max-age`, clamped to [`min_ttl`, `max_ttl`], or
  `cache_ttl` (10 minutes) when the response says nothing;
- on a `kid` it does not know, it refetches once, but never more than once per
  `refetch_interval` (30 s), so tokens with random `kid`s cannot make it hammer the IdP;
- concurrent callers share one fetch in flight (single-flight), and a caller that is cancelled
  does not cancel the fetch the others wait for;
- when a refresh fails it keeps serving the last good keys for at most `max_stale` past their
  expiry; with no usable keys every verification fails closed (`issuer keys unavailable`).

`StaticKeys` serves a fixed key set without any I/O (the built-in dev issuer verifying its own
tokens).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key

from .errors import KEYS_UNAVAILABLE, NO_KEY_ID, UNKNOWN_KEY, InvalidToken, KeyFetchError

log = logging.getLogger("mcp_gate.auth")

#: JWS algorithm → the JWK key type that can verify it. Only public-key algorithms: we never
#: hold a shared secret, so HS* is not here, nor `none`.
ALG_KEY_TYPES: dict[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
    "Ed25519": "OKP",
}

MIN_RSA_BITS = 2048
MAX_DOCUMENT_BYTES = 512 * 1024
#: Retry interval while no key was ever fetched (capped by `refetch_interval`): a gateway that
#: starts before its IdP recovers within seconds instead of refusing everyone for 30 s.
EMPTY_CACHE_RETRY = 5.0

_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


class KeySource(Protocol):
    """Where a verifier gets the public key for a token's `kid` and `alg`."""

    async def get_key(self, kid: str | None, alg: str) -> Key: ...


class KeyIndex:
    """Usable public signing keys of one JWKS, indexed by `kid`."""

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys
        self._by_kid: dict[str | None, list[Key]] = {}
        for key in keys:
            self._by_kid.setdefault(key.kid, []).append(key)

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, kid: str | None, alg: str) -> Key | None:
        """The key for this `kid` able to verify `alg`, or None.

        A token without a `kid` is accepted only when exactly one key can verify its `alg`;
        with several candidates it is refused (`token has no key id`) rather than tried
        against each.
        """
        kty = ALG_KEY_TYPES.get(alg)
        if kty is None:
            return None
        if kid is None:
            candidates = [k for k in self.keys if _fits(k, kty, alg)]
            if len(candidates) > 1:
                raise InvalidToken(NO_KEY_ID)
            return candidates[0] if candidates else None
        for key in self._by_kid.get(kid, ()):
            if _fits(key, kty, alg):
                return key
        return None


def _fits(key: Key, kty: str, alg: str) -> bool:
    if key.key_type != kty:
        return False
    key_alg = key.get("alg")
    if key_alg is not None and key_alg != alg:
        return False
    if kty == "OKP":
        return key.get("crv") in ("Ed25519", "Ed448") and (alg == "EdDSA" or key.get("crv") == alg)
    return True


def parse_jwks(document: object) -> KeyIndex:
    """The usable public signing keys of a JWKS document.

    Entries that are not public-key signing keys (`oct`, `use: enc`, X25519, RSA under
    2048 bits) or that fail to import are skipped; private members, should an IdP publish
    them, are dropped. A document that is not `{"keys": [...]}` raises `KeyFetchError`.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise KeyFetchError("not a JWK set")
    keys: list[Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, Mapping):
            continue
        if entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        if entry.get("kty") == "RSA" and _rsa_bits(entry.get("n")) < MIN_RSA_BITS:
            log.debug("skipping a short RSA JWK (kid %r)", kid)
            continue
        public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
        try:
            key = JWKRegistry.import_key(public)
        except (JoseError, ValueError, TypeError, KeyError):
            log.debug("skipping an unusable JWK (kid %r)", kid)
            continue
        if key.key_type == "RSA" and key.public_key.key_size < MIN_RSA_BITS:
            continue
        if key.key_type == "OKP" and key.get("crv") not in ("Ed25519", "Ed448"):
            continue
        keys.append(key)
    return KeyIndex(keys)


def _rsa_bits(modulus: object) -> int:
    """Bit length of a JWK's base64url `n`, without importing it (joserfc warns on import of
    a short key; we just skip it)."""
    if not isinstance(modulus, str):
        return 0
    try:
        raw = base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    except ValueError:
        return 0
    return int.from_bytes(raw, "big").bit_length()


class StaticKeys:
    """A fixed key set (for instance the dev issuer's own): no I/O, no refresh."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._index = parse_jwks(jwks)

    async def get_key(self, kid: str | None, alg: str) -> Key:
        key = self._index.select(kid, alg)
        if key is None:
            raise InvalidToken(UNKNOWN_KEY)
        return key


class JwksCache:
    """An issuer's JWKS, discovered, fetched and cached (see the module docstring).

    `issuer` is used for discovery (`{issuer}/.well-known/openid-configuration`, whose
    `issuer` must equal it exactly); pass `jwks_uri` to skip discovery. `clock` is a monotonic
    clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        issuer: str,
        jwks_uri: str | None = None,
        cache_ttl: float = 600.0,
        min_ttl: float = 60.0,
        max_ttl: float = 3600.0,
        refetch_interval: float = 30.0,
        max_stale: float = 86400.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_ttl > max_ttl:
            raise ValueError("min_ttl must not exceed max_ttl")
        self.issuer = issuer
        self._http = http
        self._configured_uri = jwks_uri
        self._discovered_uri: str | None = None
        self.cache_ttl = cache_ttl
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.refetch_interval = refetch_interval
        self.max_stale = max_stale
        self.timeout = timeout
        self._clock = clock

        self._keys: KeyIndex | None = None
        self._fetched_at = 0.0
        self._ttl = 0.0
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        #: counters, for tests and metrics
        self.fetches = 0
        self.failures = 0

    # -- public ------------------------------------------------------------------------------

    @property
    def jwks_uri(self) -> str | None:
        return self._configured_uri or self._discovered_uri

    async def get_key(self, kid: str | None, alg: str) -> Key:
        """The verification key for `kid`/`alg`; raises `InvalidToken` when there is none."""
        if self._needs_refresh(self._clock()):
            await self._refresh()
        keys = self._usable_keys(self._clock())
        if keys is None:
            raise InvalidToken(KEYS_UNAVAILABLE)
        key = keys.select(kid, alg)
        if key is None:
            # Maybe the IdP rotated its keys: refetch once (rate-limited, shared).
            await self._refresh()
            keys = self._usable_keys(self._clock())
            key = keys.select(kid, alg) if keys is not None else None
        if key is None:
            raise InvalidToken(UNKNOWN_KEY)
        return key

    async def refresh(self) -> bool:
        """Fetch now if the rate limit allows (e.g. to warm up at startup); True if keys are
        usable afterwards."""
        await self._refresh()
        return self._usable_keys(self._clock()) is not None

    # -- cache state ---------------------------------------------------------------------------

    def _needs_refresh(self, now: float) -> bool:
        return self._keys is None or now >= self._fetched_at + self._ttl

    def _usable_keys(self, now: float) -> KeyIndex | None:
        if self._keys is None:
            return None
        if now >= self._fetched_at + self._ttl + self.max_stale:
            return None
        return self._keys

    def _may_fetch(self, now: float) -> bool:
        if self._last_attempt is None:
            return True
        interval = self.refetch_interval
        if self._keys is None:
            interval = min(interval, EMPTY_CACHE_RETRY)
        return now - self._last_attempt >= interval

    async def _refresh(self) -> None:
        """Join the fetch in flight, or start one if the rate limit allows. Never raises
        (failures are logged and leave the cache as it was)."""
        task = self._inflight
        if task is None:
            now = self._clock()
            if not self._may_fetch(now):
                return
            self._last_attempt = now
            task = asyncio.get_running_loop().create_task(self._fetch())
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        # shield: a cancelled caller must not cancel the fetch other callers wait for
        await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # mark retrieved; _fetch handles its own errors

    # -- HTTP ----------------------------------------------------------------------------------

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            uri = self._configured_uri or self._discovered_uri or await self._discover()
            document, ttl = await self._get_json(uri)
            keys = parse_jwks(document)
        except (KeyFetchError, httpx.HTTPError) as exc:
            self._fetch_failed()
            log.warning("cannot fetch the signing keys of %s: %s", self.issuer, _describe(exc))
            return
        except Exception:  # fail closed on anything unexpected, but say so
            self._fetch_failed()
            log.exception("cannot fetch the signing keys of %s", self.issuer)
            return
        self._keys = keys
        self._fetched_at = self._clock()
        self._ttl = ttl
        log.debug("fetched %d signing keys of %s (ttl %ss)", len(keys), self.issuer, ttl)

    def _fetch_failed(self) -> None:
        self.failures += 1
        self._discovered_uri = None  # re-discover on the next attempt

    async def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document, _ = await self._get_json(url)
        if not isinstance(document, Mapping):
            raise KeyFetchError("discovery document is not a JSON object")
        if document.get("issuer") != self.issuer:
            raise KeyFetchError("discovery document names a different issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise KeyFetchError("discovery document has no jwks_uri")
        try:
            parsed = httpx.URL(jwks_uri)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise KeyFetchError("discovery document has an invalid jwks_uri") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise KeyFetchError("discovery document has an invalid jwks_uri")
        if httpx.URL(self.issuer).scheme == "https" and parsed.scheme != "https":
            raise KeyFetchError("jwks_uri of an https issuer must be https")
        self._discovered_uri = jwks_uri
        return jwks_uri

    async def _get_json(self, url: str) -> tuple[Any, float]:
        """GET `url` as JSON (no redirects, bounded size) → (document, cache TTL)."""
        async with self._http.stream(
            "GET",
            url,
            headers={"Accept": "application/json"},
            timeout=self.timeout,
            follow_redirects=False,
        ) as response:
            if response.status_code != 200:
                raise KeyFetchError(f"GET {url}: HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise KeyFetchError(f"GET {url}: response too large")
            ttl = self._ttl_from(response.headers.get("cache-control"))
        try:
            return json.loads(bytes(body)), ttl
        except (ValueError, RecursionError) as exc:
            raise KeyFetchError(f"GET {url}: not JSON") from exc

    def _ttl_from(self, cache_control: str | None) -> float:
        if not cache_control:
            return self.cache_ttl
        lowered = cache_control.lower()
        if "no-store" in lowered or "no-cache" in lowered:
            return self.min_ttl
        match = _MAX_AGE.search(cache_control)
        if match is None:
            return self.cache_ttl
        max_age = float(match.group(1))
        if not math.isfinite(max_age):
            return self.cache_ttl
        return min(max(max_age, self.min_ttl), self.max_ttl)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPError):
        with contextlib.suppress(RuntimeError):
            return f"{type(exc).__name__} for {exc.request.url}"
        return type(exc).__name__
    return str(exc)
