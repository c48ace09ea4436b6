"""Tool results the gateway writes itself: refusals and errors, each with its verdict."""

from __future__ import annotations

from typing import Any

from mcp import types

from mcp_gate.policy.engine import Decision

DECISION_META_KEY = "io.mcp-gate/decision"


def with_decision(
    result: types.CallToolResult, decision: Decision | None, approval_id: str | None = None
) -> types.CallToolResult:
    """Attach the verdict to a result's `_meta` (DESIGN §2), keeping any meta it had."""
    if decision is None:
        return result
    meta: dict[str, Any] = dict(result.meta or {})
    meta[DECISION_META_KEY] = decision.to_meta(approval_id)
    return result.model_copy(update={"meta": meta})


def error_result(text: str, decision: Decision | None = None, **meta: Any) -> types.CallToolResult:
    """An `isError` result the agent can read and act on."""
    result = types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], is_error=True
    )
    if decision is not None:
        result = with_decision(result, decision, meta.get("approval_id"))
    elif meta:
        result = result.model_copy(update={"meta": meta})
    return result


def refusal_text(decision: Decision) -> str:
    """What a denied or held call says: the verdict, the rules, and what to do."""
    rules = ", ".join(f'"{r}"' for r in decision.deciding)
    risks = ", ".join(decision.risks)
    if decision.decision == "deny":
        why = f"denied by policy rule {rules}" if rules else "denied: no policy rule allows it"
        if not rules:
            why += f" (the default is {decision.decision})"
        text = f"mcp-gate: {why}."
    else:
        text = (
            f"mcp-gate: needs approval (approvals not configured): rule {rules} holds this "
            f"call for {', '.join(decision.approvers) or 'an approver'}; it was not run."
        )
    if risks:
        text += f" Risk flags: {risks}."
    for hit in decision.matched:
        if hit.rule in decision.deciding:
            text += f' Rule "{hit.rule}": ' + "; ".join(hit.why) + "."
    return text
