"""Running the gateway: streamable HTTP (uvicorn) or one client over stdio."""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator

import anyio
import uvicorn
from mcp.server.stdio import stdio_server

from mcp_gate.approvals.api import admin_routes, bearer_authenticator
from mcp_gate.audit.api import session_routes
from mcp_gate.auth import dev_issuer_routes
from mcp_gate.auth.dev_issuer import dev_issuer_for
from mcp_gate.calls import Principal
from mcp_gate.config import GateConfig
from mcp_gate.gateway.audit_tap import StdioTap
from mcp_gate.gateway.http import build_http_app, transport_security
from mcp_gate.gateway.mcp_server import build_server, http_audit_session, http_principal
from mcp_gate.gateway.recording import open_audit
from mcp_gate.gateway.runtime import (
    PolicyHolder,
    build_pipeline,
    open_approvals,
    open_connections,
    verifier_for,
)
from mcp_gate.store_target import StartupError

log = logging.getLogger("mcp_gate.serve")


class _Uvicorn(uvicorn.Server):
    """uvicorn that stops gracefully on SIGINT/SIGTERM and then returns normally.

    Stock uvicorn re-raises the signal after shutting down, which turns a clean stop into a
    KeyboardInterrupt or a killed process before our own cleanup (pools, demo database) runs.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket first, so a busy port is a clear error, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Without it, a response written in two parts waits
    # for the client's delayed ACK: measured 48 ms instead of 2 ms per 2026-07-28 request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{host}:{port} is already in use: stop the other process or set "
                "[server] listen to another port"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def serve_http(
    config: GateConfig,
    *,
    on_ready: Callable[[], Awaitable[None] | None] | None = None,
    log_level: str = "info",
) -> None:
    """Serve `/mcp` (both eras), PRM and the dev issuer until interrupted."""
    policy = PolicyHolder.load(config.policies)
    dev = dev_issuer_for(config)
    if dev is not None:
        log.warning(
            "DEV ISSUER ENABLED: this gateway signs its own tokens (mcp-gate token). "
            "Use it on this machine only, never in production."
        )
    verifier = verifier_for(config, dev)
    host, port = config.listen
    sock = bind_socket(host, port)
    try:
        async with (
            open_connections(config) as connections,
            open_approvals(config, policy().model.approval.webhook) as approvals,
            open_audit(config, approvals) as recorder,
        ):
            pipeline = build_pipeline(policy, connections, config.data_dir, approvals, recorder)
            await pipeline.list_tools()
            server = build_server(pipeline, http_principal, http_audit_session)
            authenticate = bearer_authenticator(verifier, resource_metadata_url=None)
            admin = admin_routes(approvals, authenticate)
            if recorder is not None:
                # `[audit] viewers` see every session, by default the approvers (they judge
                # what agents do); others their own.
                viewers = config.model.audit.viewers
                admin += session_routes(
                    recorder.store,
                    authenticate,
                    viewer_groups=lambda: viewers or policy().model.approval.approvers,
                )
            app = build_http_app(
                server,
                verifier=verifier,
                public_url=config.public_url,
                issuer=config.issuer or "",
                security=transport_security(host, port, config.model.server.allowed_origins),
                max_request_bytes=config.model.server.max_request_bytes,
                extra_routes=admin + (dev_issuer_routes(dev) if dev is not None else []),
                recorder=recorder,
            )
            uv = _Uvicorn(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on"))
            async with anyio.create_task_group() as tg:
                tg.start_soon(policy.watch)
                if on_ready is not None:
                    tg.start_soon(_when_started, uv, on_ready)
                await uv.serve(sockets=[sock])
                tg.cancel_scope.cancel()
    finally:
        sock.close()
        await verifier.aclose()


async def _when_started(uv: uvicorn.Server, on_ready: Callable[[], Awaitable[None] | None]) -> None:
    while not uv.started:
        if uv.should_exit:
            return
        await anyio.sleep(0.05)
    outcome = on_ready()
    if outcome is not None:
        await outcome


async def serve_stdio(config: GateConfig) -> None:
    """Serve one client over stdin/stdout as the `[auth.local]` principal."""
    policy = PolicyHolder.load(config.policies)
    local = config.model.auth.local
    principal = Principal(local.subject, frozenset(local.groups))
    async with (
        open_connections(config) as connections,
        open_approvals(config, policy().model.approval.webhook) as approvals,
        open_audit(config, approvals) as recorder,
    ):
        pipeline = build_pipeline(policy, connections, config.data_dir, approvals, recorder)
        await pipeline.list_tools()
        tap = StdioTap(recorder, principal) if recorder is not None else None
        server = build_server(
            pipeline, lambda _ctx: principal, lambda _ctx: tap.session if tap else None
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(policy.watch)
            async with stdio_server() as (read, write):
                if tap is not None:
                    read, write = tap.wrap(read, write)  # the run's one audit session
                await server.run(read, write, server.create_initialization_options())
            tg.cancel_scope.cancel()
