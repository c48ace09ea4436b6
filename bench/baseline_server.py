"""The baseline for bench/overhead.py: a plain MCP SDK server with one `sql_query` tool on an
asyncpg pool, and none of the gateway: no auth, no inspection, no policy, no read-only recipe.

    python bench/baseline_server.py PORT DSN
"""

from __future__ import annotations

import sys

# bench/inspect.py is named like the standard library's `inspect` and a script's folder comes
# first on sys.path: move bench/ behind the standard library before anything imports it.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))  # after the standard library, not before

from typing import Any

import anyio
import asyncpg
import uvicorn
from mcp import types
from mcp.server import Server, ServerRequestContext

from mcp_gate.sqltools import results
from mcp_gate.sqltools.model import Column, QueryResult

TOOL = types.Tool(
    name="sql_query",
    input_schema={
        "type": "object",
        "properties": {"sql": {"type": "string"}, "max_rows": {"type": "integer"}},
        "required": ["sql"],
    },
)


async def main(port: int, dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[TOOL])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        args = params.arguments or {}
        max_rows = int(args.get("max_rows") or 1000)
        async with pool.acquire() as conn:
            stmt = await conn.prepare(args["sql"])
            rows = await stmt.fetch()
            columns = [Column(a.name, a.type.name) for a in stmt.get_attributes()]
        result = QueryResult(columns, rows[:max_rows], min(len(rows), max_rows),
                             len(rows) > max_rows, 0.0)  # fmt: skip
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=results.text_table(result))],
            structured_content=results.structured(result),
        )

    server = Server("baseline", on_list_tools=list_tools, on_call_tool=call_tool)
    app = server.streamable_http_app()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]), sys.argv[2])
