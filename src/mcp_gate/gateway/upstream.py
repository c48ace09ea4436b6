"""What the gateway forwards calls to: built-in tools in-process, or wrapped MCP servers."""

from __future__ import annotations

from typing import Protocol

from mcp import types

from mcp_gate.calls import Principal, ToolCall
from mcp_gate.inspect.model import Inspection


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

    async def call_tool(
        self, call: ToolCall, principal: Principal, inspection: Inspection
    ) -> types.CallToolResult:
        """Run an allowed call and return its result."""
        ...
