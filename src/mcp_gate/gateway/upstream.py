"""What the gateway forwards calls to: built-in tools in-process, or wrapped MCP servers."""

from __future__ import annotations

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

    async def call_tool(
        self, call: ToolCall, principal: Principal, inspection: Inspection
    ) -> types.CallToolResult:
        """Run an allowed call and return its result."""
        ...
