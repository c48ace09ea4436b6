"""The interceptor pipeline every `tools/call` goes through: inspect → decide → execute.

Transports and upstreams plug into it: the built-in SQL tools are one upstream, served
in-process; wrapped MCP servers are others. Nothing reaches an upstream unless the policy
allowed it, and every result leaves with its verdict in `_meta`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any, TypeVar

from mcp import types

from mcp_gate.audit.recorder import Recorder
from mcp_gate.calls import Principal, ToolCall
from mcp_gate.gateway.hold import Approvals, Interaction, hold
from mcp_gate.gateway.results import error_result, refusal_text, with_decision
from mcp_gate.gateway.upstream import PreparedCall, Upstream
from mcp_gate.inspect.model import Inspection
from mcp_gate.inspect.toolcall import inspect_call
from mcp_gate.policy.engine import Decision
from mcp_gate.policy.loader import LoadedPolicy

log = logging.getLogger("mcp_gate.pipeline")
T = TypeVar("T")


class Pipeline:
    """Routes tool calls to upstreams through inspection and policy."""

    def __init__(
        self,
        policy: Callable[[], LoadedPolicy],
        upstreams: list[Upstream],
        approvals: Approvals | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self._policy = policy
        self._approvals = approvals
        self.recorder = recorder  # None: recording is off ([audit] enabled = false)
        self._upstreams = upstreams
        self._routes: dict[str, Upstream] = {}
        self._schemas: dict[str, dict[str, Any]] = {}

    async def list_tools(self) -> list[types.Tool]:
        """Every upstream's tools; the first upstream to offer a name owns it."""
        tools: list[types.Tool] = []
        routes: dict[str, Upstream] = {}
        for upstream in self._upstreams:
            for tool in await upstream.list_tools():
                if tool.name in routes:
                    log.warning(
                        "tool %r of upstream %r hidden by upstream %r",
                        tool.name,
                        upstream.name,
                        routes[tool.name].name,
                    )
                    continue
                routes[tool.name] = upstream
                tools.append(tool)
        self._routes = routes
        self._schemas = {t.name: t.input_schema for t in tools}
        return tools

    def input_schema(self, name: str) -> dict[str, Any] | None:
        """A tool's input schema from the last listing (the SDK checks `Mcp-Param-*` headers
        with it on 2026-07-28 requests instead of running tools/list for every call)."""
        return self._schemas.get(name)

    async def call_tool(
        self,
        principal: Principal,
        name: str,
        arguments: dict[str, Any] | None,
        interaction: Interaction | None = None,
        *,
        session_id: str | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Judge and, when allowed, run one call. Never raises for a bad call: it says why.
        The decision is recorded in the audit session `session_id`."""
        if not self._routes:
            await self.list_tools()
        upstream = self._routes.get(name)
        if upstream is None:
            return error_result(f"mcp-gate: unknown tool {name!r}.")
        args = dict(arguments or {})
        problem = upstream.validate(name, args)
        if problem is not None:
            return error_result(f"mcp-gate: {problem}")
        call = ToolCall(
            tool=name,
            arguments=args,
            upstream=upstream.name,
            connection=upstream.connection_of(name, args),
        )
        inspection = inspect_call(call, upstream.sql_argument(name))
        inspection = await upstream.analyze(call, principal, inspection)
        engine = self._policy().engine
        decision = engine.decide(principal, call, inspection)
        async with AsyncExitStack() as prepared_scope:
            prepared: PreparedCall | None = None
            if (
                inspection.estimated_rows is None
                and inspection.unresolved is None  # refused below whatever the estimate
                and (
                    decision.estimate_wanted
                    or (decision.decision == "review" and inspection.sql is not None)
                )
            ):
                # EXPLAIN only when a rule could change on the estimate, or for the approver of
                # a held SQL call. A read explains inside the transaction it will run in
                # (`Upstream.prepare`): nothing runs there unless allowed and on record below.
                opened = upstream.prepare(call, principal, inspection)
                if opened is not None:
                    prepared = await prepared_scope.enter_async_context(opened)
                    estimate = prepared.estimate
                else:
                    estimate = await upstream.estimate(call, principal, inspection)
                inspection = replace(inspection, estimated_rows=estimate.rows)
                decision = engine.decide(principal, call, inspection)
                blocked = decision.blocked_by_estimate
                if blocked:
                    # Fail closed: a rule that would hold or refuse the call cannot be evaluated.
                    rules = ", ".join(f'"{n}"' for n in blocked)
                    decision = replace(
                        decision,
                        decision="deny",
                        deciding=("estimated_rows_unknown",),
                        default_used=False,
                    )
                    return await self._refuse(
                        session_id,
                        principal,
                        call,
                        decision,
                        f"mcp-gate: denied (estimated_rows_unknown): rule {rules} depends on the "
                        f"planner's row estimate, which the gateway could not get: "
                        f"{estimate.problem or 'no estimate'}.",
                    )
            if inspection.unresolved is not None and decision.decision != "deny":
                # Fail closed: what cannot be traced cannot be masked, whatever the policy allows.
                decision = replace(
                    decision, decision="deny", deciding=("lineage_unresolved",), default_used=False
                )
                return await self._refuse(
                    session_id,
                    principal,
                    call,
                    decision,
                    "mcp-gate: denied (lineage_unresolved): the gateway cannot guarantee that "
                    f"masked columns stay masked: {inspection.unresolved}.",
                )
            if decision.decision != "allow":
                # Held or refused: the prepared transaction ends now, not after the approval.
                await prepared_scope.aclose()
                prepared = None
            # Debug only: the audit record (not the log) is the account of every call, and a
            # log line per call at info level was measured costing about 1 ms.
            log.debug(
                "call %s by %s: %s (%s)",
                name,
                principal.subject,
                decision.decision,
                ", ".join(decision.reasons),
            )
            if self.recorder is not None:
                # DESIGN §2.7: nothing runs (or is held to run later) before its decision is
                # committed, and no verdict, a refusal included, reaches the client before its
                # record is durable (a crash must not lose a decided call). No record, no run.
                # Opening an allowed read's transaction (no agent text) overlaps the commit.
                # Not preparing its statement early: asyncpg's prepare ends without a Sync,
                # so PostgreSQL's statement_timeout would run through the commit's wait.
                # The call itself runs only below, once the decision is on record.
                opened = None
                if decision.decision == "allow" and prepared is None:
                    opened = upstream.prepare(call, principal, inspection, explain=False)
                if opened is not None:
                    work = prepared_scope.enter_async_context(opened)
                    refused, prepared = await self._record_meanwhile(
                        session_id, principal, call, decision, work
                    )
                else:
                    refused = await self.recorder.decision(session_id, principal, call, decision)
                if refused is not None:
                    return error_result(refused, decision)
            if decision.decision == "review" and self._approvals is not None:
                return await hold(
                    self._approvals,
                    principal,
                    call,
                    inspection,
                    decision,
                    interaction or Interaction(),
                    lambda: self._run(upstream, call, principal, inspection, decision),
                )
            if decision.decision != "allow":
                return error_result(refusal_text(decision), decision)
            return with_decision(
                await self._run(upstream, call, principal, inspection, decision, prepared),
                decision,
            )

    async def _record_meanwhile(
        self,
        session_id: str | None,
        principal: Principal,
        call: ToolCall,
        decision: Decision,
        work: Awaitable[T],
    ) -> tuple[str | None, T | None]:
        """Commit an allowed call's decision while `work`, which executes nothing of the call,
        runs; whatever `work` opens is rolled back by the caller's scope if the record is
        refused. (The recorder's refusal text or None, `work`'s result or None if it
        failed.)"""
        assert self.recorder is not None
        recording = asyncio.ensure_future(
            self.recorder.decision(session_id, principal, call, decision)
        )
        done: T | None = None
        try:
            done = await work
        except Exception:
            # A bug in the upstream: the call then runs its plain way, after the commit.
            log.exception("upstream %s failed preparing %s", call.upstream, call.tool)
        except BaseException:
            # Cancelled: nothing of the call runs; a record already queued still commits.
            recording.cancel()
            raise
        return await recording, done

    async def _refuse(
        self,
        session_id: str | None,
        principal: Principal,
        call: ToolCall,
        decision: Decision,
        text: str,
    ) -> types.CallToolResult:
        """A refusal decided outside the policy's own verdict, answered once it is on record
        (or with the recorder's own refusal when it cannot be)."""
        if self.recorder is not None:
            refused = await self.recorder.decision(session_id, principal, call, decision)
            if refused is not None:
                return error_result(refused, decision)
        return error_result(text, decision)

    async def _run(
        self,
        upstream: Upstream,
        call: ToolCall,
        principal: Principal,
        inspection: Inspection,
        decision: Decision,
        prepared: PreparedCall | None = None,
    ) -> types.CallToolResult:
        try:
            if prepared is not None:
                return await prepared.run()
            return await upstream.call_tool(call, principal, inspection)
        except Exception:
            # The upstream's own errors are reported by it as isError results; anything
            # escaping here is a bug, and its text may hold internals, so it stays in the log.
            log.exception("upstream %s failed on %s", upstream.name, call.tool)
            return error_result(
                f"mcp-gate: the call was allowed but failed inside the gateway ({call.tool}).",
                decision,
            )
