"""The built-in dev issuer: a local signing key, `mcp-gate token`, and the discovery endpoints.

The key lives in `{data_dir}/dev-issuer-key.json`: one private JWK (EC P-256 / ES256 when
created here; an RSA key of at least 2048 bits / RS256 is accepted too), mode 0600, `kid` =
its RFC 7638 thumbprint so it is stable across restarts. Minting only reads that file, so
`mcp-gate token` works whether or not the gateway runs; two processes creating it at once end
up with the same key (the file is published with an exclusive link, the loser reads the
winner's).

Endpoints (`dev_issuer_routes`), for `issuer_url = http://host:port[/path]`:

- `{path}/.well-known/openid-configuration`: the discovery document (OIDC Discovery §4);
- `/.well-known/openid-configuration{path}` as well when `path` is not empty (the RFC 8414
  "inserted" form, which MCP clients also try);
- `{path}/.well-known/jwks.json`: the public key set (`jwks_uri`).

The discovery document is deliberately minimal (no authorization or token endpoint): tokens
come from `mcp-gate token`, not from an OAuth flow. Constructing a `DevIssuer` does blocking
file I/O; do it at startup, or in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, Key

from .errors import DevIssuerError

if TYPE_CHECKING:
    from starlette.routing import Route

    from mcp_gate.config import GateConfig

    from .jwt import JwtVerifier

log = logging.getLogger("mcp_gate.auth")

KEY_FILE_NAME = "dev-issuer-key.json"
DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
JWKS_SUFFIX = "/.well-known/jwks.json"


class DevIssuer:
    """A local OIDC-style issuer for development: mints tokens the gateway accepts."""

    def __init__(self, data_dir: Path | str, issuer_url: str, audience: str) -> None:
        if not issuer_url:
            raise ValueError("issuer_url must not be empty")
        if not audience:
            raise ValueError("audience must not be empty")
        self.data_dir = Path(data_dir)
        self.issuer = issuer_url
        self.audience = audience
        self.key_path = self.data_dir / KEY_FILE_NAME
        self._key = _load_or_create_key(self.key_path)
        self.kid: str = self._key.thumbprint()
        self.algorithm = _algorithm_for(self._key)

    @property
    def jwks_uri(self) -> str:
        return self.issuer.rstrip("/") + JWKS_SUFFIX

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + DISCOVERY_SUFFIX

    def mint(
        self,
        subject: str,
        groups: Iterable[str] = (),
        ttl_seconds: int = 3600,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed access token for `subject` with `groups`, valid for `ttl_seconds`.

        `extra_claims` are added last and may override the standard ones (handy to mint a
        deliberately wrong token in a test).
        """
        if not isinstance(subject, str) or not subject:
            raise ValueError("subject must be a non-empty string")
        if isinstance(groups, str):
            raise TypeError("groups must be an iterable of group names, not a string")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "groups": list(dict.fromkeys(groups)),
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl_seconds),
            "jti": str(uuid.uuid4()),
        }
        if extra_claims:
            claims.update(extra_claims)
        header = {"alg": self.algorithm, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self._key, algorithms=[self.algorithm])

    def openid_configuration(self) -> dict[str, Any]:
        """The discovery document (minimal: the gateway only needs `issuer` and `jwks_uri`)."""
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": [self.algorithm],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }

    def jwks(self) -> dict[str, Any]:
        """The public key set: the public members of the key only."""
        public = self._key.as_dict(private=False)
        public.update({"kid": self.kid, "use": "sig", "alg": self.algorithm})
        return {"keys": [public]}

    def verifier(self, *, groups_claim: str = "groups") -> JwtVerifier:
        """A `JwtVerifier` for this issuer's tokens that uses the key directly (no HTTP to
        ourselves, no discovery)."""
        from .jwt import JwtVerifier

        return JwtVerifier(
            self.issuer,
            self.audience,
            groups_claim=groups_claim,
            algorithms=[self.algorithm],
            jwks=self.jwks(),
        )


def dev_issuer_routes(issuer: DevIssuer) -> list[Route]:
    """Starlette routes serving `issuer`'s discovery document and JWKS (paths in the module
    docstring)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    base = urlsplit(issuer.issuer).path.rstrip("/")
    headers = {"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"}

    async def discovery(request: Request) -> JSONResponse:
        return JSONResponse(issuer.openid_configuration(), headers=headers)

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(issuer.jwks(), headers=headers)

    routes = [
        Route(base + DISCOVERY_SUFFIX, discovery, methods=["GET"], name="dev_issuer_discovery"),
        Route(base + JWKS_SUFFIX, jwks, methods=["GET"], name="dev_issuer_jwks"),
    ]
    if base:
        routes.append(
            Route(
                DISCOVERY_SUFFIX + base,
                discovery,
                methods=["GET"],
                name="dev_issuer_discovery_inserted",
            )
        )
    return routes


# -- key file ----------------------------------------------------------------------------------


def _load_or_create_key(path: Path) -> Key:
    if path.exists():
        return _load_key(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ECKey.generate_key("P-256", private=True)
    data = key.as_dict(private=True)
    data.update({"kid": key.thumbprint(), "use": "sig", "alg": "ES256"})
    content = (json.dumps(data, indent=2) + "\n").encode()

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and fails if another process got there first
        except FileExistsError:
            return _load_key(path)
        log.info("created the dev issuer signing key %s", path)
        return _load_key(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256")


def _algorithm_for(key: Key) -> str:
    if key.key_type == "EC":
        return "ES256"
    return key.alg if key.alg in _RSA_ALGORITHMS else "RS256"


def _load_key(path: Path) -> Key:
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s is readable by others (mode %o); it should be 0600", path, mode)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DevIssuerError(f"cannot read the dev issuer key {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DevIssuerError(f"{path} is not a JWK")
    try:
        key = JWKRegistry.import_key(data)
    except (JoseError, ValueError, TypeError, KeyError):
        raise DevIssuerError(f"{path} is not a valid JWK") from None
    if not key.is_private:
        raise DevIssuerError(f"{path} holds no private key")
    if key.key_type == "EC" and key.get("crv") == "P-256":
        return key
    if key.key_type == "RSA" and key.public_key.key_size >= 2048:
        return key
    raise DevIssuerError(f"{path}: the dev issuer key must be EC P-256 or RSA >= 2048 bits")


def dev_issuer_for(config: GateConfig) -> DevIssuer | None:
    """The built-in issuer when `[auth] dev_issuer = true`."""
    if not config.model.auth.dev_issuer or config.issuer is None:
        return None
    return DevIssuer(config.data_dir, config.issuer, config.audience)
