"""Holding a `review` call for a human: the requester's side of approvals, through MCP.

- 2025-11-25 client that declared elicitation: an `elicitation/create` form names what is
  held, why, who must approve and the approval id, and asks for a justification; declining
  withdraws the request.
- 2026-07-28 client: an `input_required` result with the same form and a sealed
  `requestState`; the retry carries the answer.
- Clients without elicitation skip the form.

Then the call waits up to `[approval] wait` with progress notifications and returns the real
result on approval (run exactly once), an error naming the approver and reason on denial, or
an error with the approval id when still pending: the identical call repeated after approval
runs once; a changed argument is a new request.

Fail closed: when the approval store fails at any point (`StoreError`, e.g. PostgreSQL went
away), the call is not run and the agent gets an isError result saying so, with a reason that
names neither the store's host nor its credentials (the full error goes to the log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mcp import types

from mcp_gate.approvals import ApprovalError, ApprovalService, StoreError, arguments_digest
from mcp_gate.approvals.model import ApprovalRequest
from mcp_gate.calls import Principal, ToolCall
from mcp_gate.gateway.approval_state import ApprovalStateCodec, StateRefused
from mcp_gate.gateway.results import error_result, with_decision
from mcp_gate.inspect.model import Inspection
from mcp_gate.policy.engine import Decision
from mcp_gate.policy.model import ApprovalSettings

log = logging.getLogger(__name__)

FORM_KEY = "io.mcp-gate/approval"
PROGRESS_EVERY = 5.0
FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "justification": {
            "type": "string",
            "title": "Justification",
            "description": "Why this call is needed; the approver sees it.",
            "maxLength": 2000,
        }
    },
}


@dataclass
class Interaction:
    """What the client's era and capabilities allow during one tools/call."""

    modern: bool = False
    can_elicit: bool = False
    elicit: Callable[[str, dict[str, Any]], Awaitable[types.ElicitResult]] | None = None
    progress: Callable[[float, float | None, str | None], Awaitable[None]] | None = None
    input_responses: dict[str, Any] | None = None
    request_state: str | None = None


@dataclass
class Approvals:
    """The approval service plus what the hold flow needs around it."""

    service: ApprovalService
    codec: ApprovalStateCodec
    settings: Callable[[], ApprovalSettings]


def _form_message(req: ApprovalRequest) -> str:
    what = req.sql or f"{req.tool} on {req.target}"
    return (
        f"mcp-gate: this call needs approval by {', '.join(req.approvers)} "
        f"({', '.join(req.reasons)}); approval id {req.id}.\n\n{what}\n\n"
        "Add a justification for the approver, or decline to withdraw the request."
    )


def _answer(response: Any) -> tuple[str, str | None]:
    """(action, justification) from an elicitation result or its wire form."""
    if isinstance(response, types.ElicitResult):
        action, content = response.action, response.content or {}
    elif isinstance(response, dict):
        action, content = str(response.get("action")), response.get("content") or {}
    else:
        return "cancel", None
    text = content.get("justification") if isinstance(content, dict) else None
    return action, text if isinstance(text, str) and text.strip() else None


def _final_error(req: ApprovalRequest, decision: Decision) -> types.CallToolResult:
    if req.status == "denied" and req.denial is not None:
        d = req.denial
        text = f"mcp-gate: {req.id} was denied by {d.approver}: {d.reason or 'no reason given'}."
    elif req.status == "expired" and req.approved_by:
        text = (
            f"mcp-gate: {req.id} was approved by {', '.join(req.approved_by)} but expired "
            "before it ran; call again to request a new approval."
        )
    elif req.status == "expired":
        text = f"mcp-gate: {req.id} expired without a decision; the call was not run."
    elif req.status == "withdrawn":
        text = f"mcp-gate: {req.id} was withdrawn; the call was not run."
    elif req.status == "executed":
        text = f"mcp-gate: {req.id} was already used: an approval runs its call once."
    else:
        text = (
            f"mcp-gate: still waiting for approval by {', '.join(req.approvers)} ({req.id}); "
            "the call was not run. Repeat the identical call once it is approved: it will run "
            "then, exactly once."
        )
    return error_result(text, decision, approval_id=req.id)


def _store_failed(exc: StoreError, decision: Decision) -> types.CallToolResult:
    """The agent's answer when the approval store failed: the call was not run.

    The store's own message names its `user@host:port/database` and the driver's error
    (which may name an address too), so the agent gets a fixed phrase; operators read the
    full error in the log."""
    text = str(exc)
    if "not open" in text:
        reason = "it is not open (the gateway is starting or stopping)"
    elif "unavailable" in text:
        reason = "it cannot be reached"
    else:
        reason = "it failed while handling this call"
    log.warning("approval store failed during a held call: %s", text)
    return error_result(
        f"mcp-gate: the approval store is unavailable, so the call was not run: {reason}. "
        "Try again later.",
        decision,
    )


async def hold(
    approvals: Approvals,
    principal: Principal,
    call: ToolCall,
    inspection: Inspection,
    decision: Decision,
    interaction: Interaction,
    run: Callable[[], Awaitable[types.CallToolResult]],
) -> types.CallToolResult | types.InputRequiredResult:
    """Hold `call` until a human decides, as far as `[approval] wait` allows."""
    settings = approvals.settings()
    service = approvals.service
    digest = arguments_digest(call.tool, call.arguments)
    try:
        if interaction.request_state is not None:
            state = approvals.codec.open(interaction.request_state, principal, digest)
            req = await service.get(state.approval_id)
            response = (interaction.input_responses or {}).get(FORM_KEY)
            action, text = _answer(response)
            if req.status == "pending" and action != "accept":
                req = await service.withdraw(req.id, principal)
            elif req.status == "pending" and text:
                req = await service.set_justification(req.id, principal, text)
        else:
            req = await service.request(
                principal=principal,
                tool=call.tool,
                target=call.connection or call.upstream,
                arguments=call.arguments,
                sql=inspection.sql.text if inspection.sql else None,
                policy_version=decision.policy_version,
                reasons=decision.reasons,
                approvers=list(decision.approvers),
                quorum=decision.quorum,
                ttl_seconds=settings.expires,
                estimated_rows=inspection.estimated_rows,
            )
            if req.status == "pending" and interaction.can_elicit:
                if interaction.modern:
                    sealed = approvals.codec.seal(req.id, principal, digest, settings.expires)
                    form = types.ElicitRequestFormParams(
                        message=_form_message(req), requested_schema=FORM_SCHEMA
                    )
                    return types.InputRequiredResult(
                        input_requests={FORM_KEY: types.ElicitRequest(params=form)},
                        request_state=sealed,
                    )
                if interaction.elicit is not None:
                    action, text = _answer(
                        await interaction.elicit(_form_message(req), FORM_SCHEMA)
                    )
                    if action != "accept":
                        req = await service.withdraw(req.id, principal)
                    elif text:
                        req = await service.set_justification(req.id, principal, text)
    except StateRefused as exc:
        return error_result(f"mcp-gate: {exc}.", decision)
    except ApprovalError as exc:
        return error_result(f"mcp-gate: {exc.reason}.", decision)
    except StoreError as exc:
        return _store_failed(exc, decision)

    try:
        deadline = time.monotonic() + settings.wait
        while req.status == "pending":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if interaction.progress is not None:
                waited = settings.wait - remaining
                await interaction.progress(
                    waited, settings.wait, f"waiting for approval by {', '.join(req.approvers)}"
                )
            req = await service.wait(req.id, min(PROGRESS_EVERY, remaining))
        executing = req.status == "approved" and await service.mark_executed(req.id)
        if req.status == "approved" and not executing:
            req = await service.get(req.id)
    except StoreError as exc:
        return _store_failed(exc, decision)
    except ApprovalError as exc:
        return error_result(f"mcp-gate: {exc.reason}.", decision, approval_id=req.id)
    if executing:
        # Outside the store's try: the call's own errors are the executor's to report.
        return with_decision(await run(), decision, req.id)
    return _final_error(req, decision)
