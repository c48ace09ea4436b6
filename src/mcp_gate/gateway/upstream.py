"""What the gateway forwards calls to: built-in tools in-process, or wrapped MCP servers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from mcp import types

from mcp_gate.calls import Principal, ToolCall
from mcp_gate.inspect.model import Inspection


@dataclass(frozen=True, slots=True)
class Estimate:
    """The planner's estimate of the rows a call reads or touches, or why there is none."""

    rows: int | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """A call whose estimate was taken where it will run (one read-only transaction).

    `run` runs the call there, at most once, and only after the pipeline allowed it and its
    decision is on record; leaving the context without running it rolls everything back.
    """

    estimate: Estimate
    run: Callable[[], Awaitable[types.CallToolResult]]


class Upstream(Protocol):
    """A server of tools behind the gateway. The pipeline has already allowed every call."""

    name: str

    async def list_tools(self) -> list[types.Tool]:
        """The tools this upstream offers, as the client will see them."""
        ...

    def sql_argument(self, tool: str) -> str | None:
        """The argument of `tool` that carries SQL, if any."""
        ...

    def validate(self, tool: str, arguments: dict) -> str | None:
        """A message naming the bad argument, or None when the arguments are acceptable."""
        ...

    def connection_of(self, tool: str, arguments: dict) -> str | None:
        """The database connection a call of `tool` targets, if any."""
        ...

    async def analyze(
        self, call: ToolCall, principal: Principal, inspection: Inspection
    ) -> Inspection:
        """Add what only this upstream can know (lineage against its catalog) before deciding."""
        ...

    async def estimate(
        self, call: ToolCall, principal: Principal, inspection: Inspection
    ) -> Estimate:
        """The rows the call would read or touch, asked only when the policy or an approver
        needs it; `rows` is None (with the reason) when this upstream cannot tell."""
        ...

    def prepare(
        self, call: ToolCall, principal: Principal, inspection: Inspection, *, explain: bool = True
    ) -> AbstractAsyncContextManager[PreparedCall] | None:
        """The estimate and the call in one transaction, for a call whose policy needs the
        estimate; None when this upstream cannot (the pipeline then asks `estimate` and runs
        `call_tool`). Entering never runs the call and never raises for a database problem:
        that is an unknown estimate. With `explain=False` entering only opens the transaction
        (the estimate is unknown), so that it can open while the decision is committed."""
        ...

    async def call_tool(
        self, call: ToolCall, principal: Principal, inspection: Inspection
    ) -> types.CallToolResult:
        """Run an allowed call and return its result."""
        ...
