"""The gateway as an MCP server (SDK low-level `Server`), serving both protocol eras."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_gate import __version__
from mcp_gate.audit.recorder import AUDIT_SESSION_SCOPE_KEY
from mcp_gate.calls import Principal
from mcp_gate.gateway.hold import Interaction
from mcp_gate.gateway.pipeline import Pipeline
from mcp_gate.gateway.results import error_result

PRINCIPAL_SCOPE_KEY = "mcp_gate.principal"

INSTRUCTIONS = (
    "mcp-gate sits between you and the databases it serves. Every tool call is checked "
    "against a policy: reads are usually allowed, writes and risky statements are refused or "
    "held for a human, and sensitive columns may come back masked. A refused call says which "
    "rule refused it; do not retry it unchanged."
)

PrincipalOf = Callable[[ServerRequestContext[Any, Any]], Principal | None]
SessionOf = Callable[[ServerRequestContext[Any, Any]], str | None]


def _scope_of(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    scope = getattr(ctx.request, "scope", None)
    return scope if isinstance(scope, dict) else {}


def http_principal(ctx: ServerRequestContext[Any, Any]) -> Principal | None:
    """The caller of an HTTP request, as the bearer-token middleware recorded it."""
    principal = _scope_of(ctx).get(PRINCIPAL_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else None


def http_audit_session(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The audit session of an HTTP request, as the audit tap recorded it."""
    session = _scope_of(ctx).get(AUDIT_SESSION_SCOPE_KEY)
    return session if isinstance(session, str) else None


def interaction_of(
    ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
) -> Interaction:
    """What this request's era and the client's declared capabilities allow."""
    session = ctx.session
    caps = session.client_capabilities
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS

    async def elicit(message: str, schema: dict[str, Any]) -> types.ElicitResult:
        return await session.elicit_form(message, schema, related_request_id=ctx.request_id)

    async def progress(done: float, total: float | None, message: str | None) -> None:
        await session.report_progress(done, total, message)

    return Interaction(
        modern=modern,
        can_elicit=caps is not None and caps.elicitation is not None,
        elicit=None if modern else elicit,
        progress=progress,
        input_responses=dict(params.input_responses or {}),
        request_state=params.request_state,
    )


def build_server(
    pipeline: Pipeline, principal_of: PrincipalOf, session_of: SessionOf | None = None
) -> Server[Any]:
    """An SDK server whose tools are the pipeline's; calls without a caller are refused.
    `session_of` names the audit session a call's decision is recorded in."""

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=await pipeline.list_tools())

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        principal = principal_of(ctx)
        if principal is None:
            return error_result("mcp-gate: the caller is not authenticated; nothing was run.")
        return await pipeline.call_tool(
            principal,
            params.name,
            params.arguments,
            interaction_of(ctx, params),
            session_id=session_of(ctx) if session_of is not None else None,
        )

    return Server(
        "mcp-gate",
        version=__version__,
        title="mcp-gate",
        instructions=INSTRUCTIONS,
        on_list_tools=on_list_tools,
        get_tool_input_schema=pipeline.input_schema,
        on_call_tool=on_call_tool,
    )
