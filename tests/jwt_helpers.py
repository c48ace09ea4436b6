"""Test helpers for the identity layer: a real local HTTP server (uvicorn in a thread), a fake
OIDC issuer served by it, and token builders (including deliberately broken tokens)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from typing import Any

import uvicorn
from joserfc import jwt
from joserfc.jwk import Key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

# -- a real HTTP server --------------------------------------------------------------------------


class LocalServer:
    """uvicorn on 127.0.0.1, a free port, in a daemon thread.

    The socket is bound at construction, so `url` is known before the app is built.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, app: ASGIApp) -> LocalServer:
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()


def unused_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- a fake OIDC issuer --------------------------------------------------------------------------


class FakeIdP:
    """One issuer at `{server}/{name}`: a discovery document and a JWKS, with request counters
    and knobs to misbehave."""

    def __init__(self, base_url: str, name: str) -> None:
        self.name = name
        self.issuer = f"{base_url}/{name}"
        self.jwks_uri = f"{self.issuer}/jwks"
        self.keys: list[Key] = []
        self.extra_jwks: list[dict[str, Any]] = []
        self.discovery_hits = 0
        self.jwks_hits = 0
        self.down = False  # answer 503
        self.jwks_delay = 0.0
        self.cache_control: str | None = None
        self.advertised_issuer: str | None = None  # lie in the discovery document

    def publish(self, *keys: Key) -> None:
        self.keys.extend(keys)

    def replace(self, *keys: Key) -> None:
        self.keys = list(keys)

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.advertised_issuer or self.issuer,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.keys] + self.extra_jwks}


class IdPServer:
    """A LocalServer hosting any number of FakeIdPs (one per test)."""

    def __init__(self) -> None:
        self.server = LocalServer()
        self.idps: dict[str, FakeIdP] = {}
        self.server.start(
            Starlette(
                routes=[
                    Route("/{name}/.well-known/openid-configuration", self._discovery),
                    Route("/{name}/jwks", self._jwks),
                ]
            )
        )

    def new_idp(self) -> FakeIdP:
        idp = FakeIdP(self.server.url, uuid.uuid4().hex[:12])
        self.idps[idp.name] = idp
        return idp

    def stop(self) -> None:
        self.server.stop()

    async def _discovery(self, request: Request) -> Response:
        idp = self.idps.get(request.path_params["name"])
        if idp is None:
            return Response(status_code=404)
        idp.discovery_hits += 1
        if idp.down:
            return Response(status_code=503)
        return JSONResponse(idp.discovery())

    async def _jwks(self, request: Request) -> Response:
        idp = self.idps.get(request.path_params["name"])
        if idp is None:
            return Response(status_code=404)
        idp.jwks_hits += 1
        if idp.jwks_delay:
            await asyncio.sleep(idp.jwks_delay)
        if idp.down:
            return Response(status_code=503)
        headers = {"Cache-Control": idp.cache_control} if idp.cache_control else None
        return JSONResponse(idp.jwks(), headers=headers)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- tokens --------------------------------------------------------------------------------------


def claims_for(issuer: str, audience: str, **overrides: Any) -> dict[str, Any]:
    """Valid claims; an override of None removes the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": "alice",
        "groups": ["developers", "dba"],
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def sign(key: Key, claims: dict[str, Any], *, alg: str, kid: str | None = "auto", **header: Any):
    """A compact JWS of `claims` signed with `key` (`kid` defaults to the key's own)."""
    hdr: dict[str, Any] = {"alg": alg, **header}
    if kid == "auto":
        kid = key.kid
    if kid is not None:
        hdr["kid"] = kid
    return jwt.encode(hdr, claims, key, algorithms=[alg])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand (any header, any signature)."""
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(claims).encode())
    return f"{h}.{p}.{b64url(signature)}"


def hmac_token(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """An HS256 token with `secret` as the HMAC key (the key-confusion attack when `secret`
    is the issuer's public key)."""
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url(sig)}"
