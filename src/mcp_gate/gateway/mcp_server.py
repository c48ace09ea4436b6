"""The gateway as an MCP server (SDK low-level `Server`), serving both protocol eras."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_gate import __version__
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


def http_principal(ctx: ServerRequestContext[Any, Any]) -> Principal | None:
    """The caller of an HTTP request, as the bearer-token middleware recorded it."""
    request = ctx.request
    scope = getattr(request, "scope", None)
    principal = scope.get(PRINCIPAL_SCOPE_KEY) if isinstance(scope, dict) else None
    return principal if isinstance(principal, Principal) else None


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


def build_server(pipeline: Pipeline, principal_of: PrincipalOf) -> Server[Any]:
    """An SDK server whose tools are the pipeline's; calls without a caller are refused."""

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
            principal, params.name, params.arguments, interaction_of(ctx, params)
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
