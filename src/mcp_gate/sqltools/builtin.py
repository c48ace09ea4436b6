"""The built-in SQL tools (DESIGN §6) as an upstream of the pipeline, served in-process."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import jsonschema
from mcp import types

from mcp_gate.calls import Principal, ToolCall
from mcp_gate.config import ConnectionSettings
from mcp_gate.inspect.model import Inspection, SqlKind
from mcp_gate.sqltools import catalog_queries, execute, results
from mcp_gate.sqltools.errors import SqlToolError

log = logging.getLogger("mcp_gate.sqltools")

UPSTREAM_NAME = "builtin"
READ_KINDS = frozenset({SqlKind.SELECT, SqlKind.EXPLAIN})
#: Kinds that run on `write_dsn`, in their own transaction, once the policy allowed them.
WRITE_KINDS = frozenset(
    {SqlKind.INSERT, SqlKind.UPDATE, SqlKind.DELETE, SqlKind.MERGE, SqlKind.DDL}
)
#: Statement kinds `sql_explain` may wrap: the planner explains, nothing executes.
EXPLAINABLE = frozenset(
    {SqlKind.SELECT, SqlKind.INSERT, SqlKind.UPDATE, SqlKind.DELETE, SqlKind.MERGE}
)


@dataclass
class Connection:
    """A configured connection with its pools (the write pool only with `write_dsn`)."""

    name: str
    settings: ConnectionSettings
    read_pool: Any
    write_pool: Any | None = None

    @property
    def statement_timeout_ms(self) -> int:
        return int(self.settings.statement_timeout * 1000)

    @property
    def lock_timeout_ms(self) -> int:
        return int(self.settings.lock_timeout * 1000)


def _text(text: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=text)]


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=_text(text), is_error=True)


class BuiltinSql:
    """`sql_query`, `sql_list_tables`, `sql_describe_table`, `sql_explain` over the pools."""

    name = UPSTREAM_NAME

    def __init__(self, connections: dict[str, Connection]) -> None:
        if not connections:
            raise ValueError("the built-in SQL tools need at least one connection")
        self.connections = connections
        self._tools = self._build_tools()
        self._validators = {
            t.name: jsonschema.Draft202012Validator(t.input_schema) for t in self._tools
        }

    # -- tool definitions ----------------------------------------------------------------
    def _connection_property(self) -> dict[str, dict[str, Any]]:
        if len(self.connections) == 1:
            return {}
        described = "; ".join(
            f"{n}: {c.settings.description}" if c.settings.description else n
            for n, c in self.connections.items()
        )
        return {
            "connection": {
                "type": "string",
                "enum": sorted(self.connections),
                "description": f"Which database to use ({described}).",
            }
        }

    def _schema(self, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        conn = self._connection_property()
        return {
            "type": "object",
            "properties": {**properties, **conn},
            "required": required + (["connection"] if conn else []),
            "additionalProperties": False,
        }

    def _build_tools(self) -> list[types.Tool]:
        cap = max(c.settings.max_rows for c in self.connections.values())
        read_only = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
        return [
            types.Tool(
                name="sql_query",
                title="Run a SQL query",
                description=(
                    "Run ONE PostgreSQL statement and return its rows. Reads run in a "
                    "read-only transaction; writes are judged by the gateway's policy (often "
                    f"held for a human or refused). At most max_rows rows (limit {cap}) come "
                    "back, with `truncated` set when there were more: add LIMIT/WHERE rather "
                    "than asking for everything. Sensitive columns may come back masked. Use "
                    "$1, $2 … placeholders with `params` for values."
                ),
                input_schema=self._schema(
                    {
                        "sql": {"type": "string", "description": "One SQL statement."},
                        "params": {
                            "type": "array",
                            "description": "Values for $1, $2 … in order.",
                            "items": {},
                        },
                        "max_rows": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": cap,
                            "description": f"Rows to return at most (default and limit {cap}).",
                        },
                    },
                    ["sql"],
                ),
                annotations=types.ToolAnnotations(open_world_hint=False),
            ),
            types.Tool(
                name="sql_list_tables",
                title="List tables",
                description=(
                    "List the tables and views you can read, with their kind, estimated row "
                    "count and comment. Start here to learn the schema."
                ),
                input_schema=self._schema(
                    {
                        "schema": {
                            "type": "string",
                            "description": "Only this schema (default: the configured ones).",
                        }
                    },
                    [],
                ),
                annotations=read_only,
            ),
            types.Tool(
                name="sql_describe_table",
                title="Describe a table",
                description=(
                    "Columns (name, type, nullable, default, comment), primary key, foreign "
                    "keys and indexes of one table or view."
                ),
                input_schema=self._schema(
                    {
                        "table": {
                            "type": "string",
                            "description": "Table name, optionally schema-qualified "
                            "(`orders`, `sales.orders`).",
                        }
                    },
                    ["table"],
                ),
                annotations=read_only,
            ),
            types.Tool(
                name="sql_explain",
                title="Explain a query",
                description=(
                    "Show PostgreSQL's plan and row estimate for one statement without running "
                    "it (EXPLAIN, never ANALYZE)."
                ),
                input_schema=self._schema(
                    {"sql": {"type": "string", "description": "One SQL statement."}}, ["sql"]
                ),
                annotations=read_only,
            ),
        ]

    # -- Upstream protocol -----------------------------------------------------------------
    async def list_tools(self) -> list[types.Tool]:
        """The four SQL tools."""
        return list(self._tools)

    def sql_argument(self, tool: str) -> str | None:
        """`sql` for the tools that carry SQL."""
        return "sql" if tool in ("sql_query", "sql_explain") else None

    def connection_of(self, tool: str, arguments: dict[str, Any]) -> str | None:
        """The connection a call names, or the only one there is."""
        if len(self.connections) == 1:
            return next(iter(self.connections))
        name = arguments.get("connection")
        return name if isinstance(name, str) else None

    def validate(self, tool: str, arguments: dict[str, Any]) -> str | None:
        """A message naming the bad argument, or None when the arguments fit the schema."""
        validator = self._validators.get(tool)
        if validator is None:
            return f"unknown tool {tool!r}"
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is None:
            return None
        where = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required":
            return f"invalid arguments for {tool}: {error.message}"
        if error.validator == "additionalProperties":
            return f"invalid arguments for {tool}: {error.message}"
        return f"invalid arguments for {tool}: argument {where or '(root)'!r}: {error.message}"

    async def call_tool(
        self, call: ToolCall, principal: Principal, inspection: Inspection
    ) -> types.CallToolResult:
        """Run an allowed call on the connection it targets."""
        conn = self.connections.get(call.connection or "")
        if conn is None:
            return _error(f"mcp-gate: unknown connection {call.connection!r}.")
        try:
            if call.tool == "sql_query":
                return await self._query(conn, call.arguments, inspection)
            if call.tool == "sql_explain":
                return await self._explain(conn, call.arguments, inspection)
            if call.tool == "sql_list_tables":
                return await self._list_tables(conn, call.arguments)
            if call.tool == "sql_describe_table":
                return await self._describe(conn, call.arguments)
        except SqlToolError as exc:
            return _error(f"mcp-gate: {exc}")
        return _error(f"mcp-gate: unknown tool {call.tool!r}.")

    # -- the tools -------------------------------------------------------------------------
    async def _query(
        self, conn: Connection, args: dict[str, Any], inspection: Inspection
    ) -> types.CallToolResult:
        sql = inspection.sql
        if sql is None or sql.statement_count != 1:
            return _error("mcp-gate: sql_query runs exactly one statement.")
        params = args.get("params") or None
        max_rows = min(int(args.get("max_rows") or conn.settings.max_rows), conn.settings.max_rows)
        if sql.kind in READ_KINDS:
            result = await execute.run_read(
                conn.read_pool,
                sql.text,
                params,
                max_rows=max_rows,
                statement_timeout_ms=conn.statement_timeout_ms,
                lock_timeout_ms=conn.lock_timeout_ms,
                idle_timeout_ms=conn.statement_timeout_ms + 5000,
            )
        elif sql.kind in WRITE_KINDS:
            if conn.write_pool is None:
                return _error(
                    f"mcp-gate: the policy allows this {sql.kind}, but connection "
                    f"{conn.name!r} has no write_dsn, so the gateway cannot run writes on it."
                )
            result = await execute.run_write(
                conn.write_pool,
                sql.text,
                params,
                statement_timeout_ms=conn.statement_timeout_ms,
                lock_timeout_ms=conn.lock_timeout_ms,
                max_rows=max_rows,
            )
        else:
            return _error(f"mcp-gate: the gateway does not run {sql.kind} statements.")
        return types.CallToolResult(
            content=_text(results.text_table(result)),
            structured_content=results.structured(result),
        )

    async def _explain(
        self, conn: Connection, args: dict[str, Any], inspection: Inspection
    ) -> types.CallToolResult:
        sql = inspection.sql
        if sql is None or sql.statement_count != 1 or sql.kind not in EXPLAINABLE:
            kind = sql.kind if sql else "no"
            return _error(f"mcp-gate: sql_explain explains one query or DML statement, not {kind}.")
        plan = await execute.explain(
            conn.read_pool,
            sql.text,
            None,
            statement_timeout_ms=conn.statement_timeout_ms,
            lock_timeout_ms=conn.lock_timeout_ms,
        )
        text = f"Estimated rows: {plan.get('estimated_rows')}\n" + json.dumps(
            plan.get("plan"), indent=2
        )
        return types.CallToolResult(content=_text(text), structured_content=plan)

    async def _list_tables(self, conn: Connection, args: dict[str, Any]) -> types.CallToolResult:
        schema = args.get("schema")
        tables = await catalog_queries.list_tables(
            conn.read_pool, [schema] if schema else list(conn.settings.schemas)
        )
        lines = [
            f"{t['schema']}.{t['name']}  ({t['kind']}"
            + (f", ~{t['estimated_rows']} rows" if t.get("estimated_rows") is not None else "")
            + ")"
            + (f"  -- {t['comment']}" if t.get("comment") else "")
            for t in tables
        ]
        text = "\n".join(lines) if lines else "No tables are visible to the gateway's role."
        return types.CallToolResult(content=_text(text), structured_content={"tables": tables})

    async def _describe(self, conn: Connection, args: dict[str, Any]) -> types.CallToolResult:
        info = await catalog_queries.describe_table(conn.read_pool, args["table"])
        return types.CallToolResult(
            content=_text(json.dumps(info, indent=2, default=str)),
            structured_content=json.loads(json.dumps(info, default=str)),
        )
