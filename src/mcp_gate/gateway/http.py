"""The HTTP face of the gateway: bearer auth, Protected Resource Metadata, streamable HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from mcp.server import Server
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_gate.audit.recorder import Recorder
from mcp_gate.auth import (
    InvalidToken,
    JwtVerifier,
    VerifiedToken,
    protected_resource_metadata,
    www_authenticate,
)
from mcp_gate.auth.prm import resource_metadata_url
from mcp_gate.gateway.audit_tap import HttpAuditTap
from mcp_gate.gateway.mcp_server import PRINCIPAL_SCOPE_KEY

log = logging.getLogger("mcp_gate.http")


class BearerAuth:
    """ASGI middleware: a valid bearer JWT or a 401 that tells the client where to log in.

    The verified caller goes into the ASGI scope for the tool handlers; the SDK's session
    manager also sees it (as `scope["user"]`) and binds legacy sessions to it. The token
    itself is kept only as a digest: it is never forwarded or recorded.
    """

    CACHE_SIZE = 4096

    def __init__(self, app: ASGIApp, verifier: JwtVerifier, metadata_url: str) -> None:
        self.app = app
        self.verifier = verifier
        self.metadata_url = metadata_url
        # Tokens already verified, by digest, until they expire: a signature check per
        # request of the same session is work without new information.
        self._verified: OrderedDict[str, VerifiedToken] = OrderedDict()

    async def _verify(self, token: str, digest: str) -> VerifiedToken:
        cached = self._verified.get(digest)
        if cached is not None and cached.expires_at > time.time():
            self._verified.move_to_end(digest)
            return cached
        verified = await self.verifier.authenticate(token)
        self._verified[digest] = verified
        if len(self._verified) > self.CACHE_SIZE:
            self._verified.popitem(last=False)
        return verified

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        if not header:
            await self._challenge(scope, receive, send, None, "")
            return
        if scheme.lower() != "bearer" or not token.strip():
            await self._challenge(
                scope, receive, send, "invalid_request", "use Authorization: Bearer <token>"
            )
            return
        token = token.strip()
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            verified = await self._verify(token, digest)
        except InvalidToken as exc:
            log.info("refused bearer token: %s", exc.reason)
            await self._challenge(scope, receive, send, "invalid_token", exc.reason)
            return
        principal = verified.principal
        access = AccessToken(
            token=digest,
            client_id=principal.client_id or principal.subject,
            scopes=list(verified.scopes),
            expires_at=int(verified.expires_at) if verified.expires_at else None,
            subject=principal.subject,
            claims={"iss": verified.claims.get("iss")},
        )
        scope = dict(scope)
        scope["user"] = AuthenticatedUser(access)
        scope[PRINCIPAL_SCOPE_KEY] = principal
        await self.app(scope, receive, send)

    async def _challenge(
        self, scope: Scope, receive: Receive, send: Send, error: str | None, description: str
    ) -> None:
        body: dict[str, Any] = {"error": error or "unauthorized"}
        if description:
            body["error_description"] = description
        response = JSONResponse(
            body,
            status_code=400 if error == "invalid_request" else 401,
            headers={
                "WWW-Authenticate": www_authenticate(
                    self.metadata_url, error=error, description=description or None
                )
            },
        )
        await response(scope, receive, send)


def _prm_routes(resource: str, issuer: str) -> list[BaseRoute]:
    document = protected_resource_metadata(resource, [issuer])

    async def metadata(_: Request) -> Response:
        return JSONResponse(document, headers={"Cache-Control": "max-age=300"})

    path = urlsplit(resource).path.rstrip("/")
    routes: list[BaseRoute] = [Route("/.well-known/oauth-protected-resource", metadata)]
    if path:
        routes.append(Route(f"/.well-known/oauth-protected-resource{path}", metadata))
    return routes


def transport_security(host: str, port: int, extra_origins: list[str]) -> TransportSecuritySettings:
    """Host and Origin checks against DNS rebinding (always on)."""
    hosts = [f"{host}:{port}", f"{host}:*", "127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*", *extra_origins]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def build_http_app(
    server: Server[Any],
    *,
    verifier: JwtVerifier,
    public_url: str,
    issuer: str,
    security: TransportSecuritySettings,
    max_request_bytes: int,
    extra_routes: list[BaseRoute] | None = None,
    recorder: Recorder | None = None,
) -> Starlette:
    """The Starlette app: `/mcp` (both eras) behind bearer auth, PRM, and any extra routes.
    With a `recorder`, every `/mcp` message in and out is recorded (inside the auth, so the
    caller is known and the token never reaches the recording)."""
    manager = StreamableHTTPSessionManager(
        app=server,
        security_settings=security,
        max_request_body_size=max_request_bytes,
    )
    mcp_path = urlsplit(public_url).path or "/mcp"
    mcp_app: ASGIApp = StreamableHTTPASGIApp(manager)
    if recorder is not None:
        recorder.session_idle = manager.session_idle_timeout  # legacy sessions end together
        mcp_app = HttpAuditTap(mcp_app, recorder)
    endpoint = BearerAuth(mcp_app, verifier, resource_metadata_url(public_url))
    routes: list[BaseRoute] = [Route(mcp_path, endpoint=endpoint)]
    routes += _prm_routes(public_url, issuer)
    routes += extra_routes or []

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(routes=routes, lifespan=lifespan)
