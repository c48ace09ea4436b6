"""The built-in SQL tools (DESIGN §6) as an upstream of the pipeline, served in-process."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import jsonschema
from mcp import types

from mcp_gate.calls import Principal, ToolCall
from mcp_gate.config import ConnectionSettings
from mcp_gate.gateway.upstream import Estimate, PreparedCall
from mcp_gate.inspect.catalog import CatalogCache, CatalogError
from mcp_gate.inspect.lineage import LineageCache, LineageUnresolved, explained_statement
from mcp_gate.inspect.model import Inspection, Risk, SqlKind
from mcp_gate.mask.apply import mask_result, scan_tool_result, scan_tool_result_text
from mcp_gate.mask.messages import withhold_values
from mcp_gate.mask.rules import MaskPlan
from mcp_gate.mask.scan import scan_value
from mcp_gate.sqltools import catalog_queries, estimate, execute, results
from mcp_gate.sqltools.errors import FieldCountMismatch, SqlToolError
from mcp_gate.sqltools.estimate import EXPLAINABLE, estimate_rows

log = logging.getLogger("mcp_gate.sqltools")

UPSTREAM_NAME = "builtin"
READ_KINDS = frozenset({SqlKind.SELECT, SqlKind.EXPLAIN})
#: Kinds that run on `write_dsn`, in their own transaction, once the policy allowed them.
WRITE_KINDS = frozenset(
    {SqlKind.INSERT, SqlKind.UPDATE, SqlKind.DELETE, SqlKind.MERGE, SqlKind.DDL}
)
#: Statement kinds whose output is traced column by column (DML: its RETURNING list).
TRACED_KINDS = frozenset(
    {SqlKind.SELECT, SqlKind.INSERT, SqlKind.UPDATE, SqlKind.DELETE, SqlKind.MERGE}
)
#: Tools whose statement is traced (`sql_explain` for its predicates).
TRACED_TOOLS = frozenset({"sql_query", "sql_explain"})


@dataclass
class Connection:
    """A configured connection with its pools (the write pool only with `write_dsn`) and the
    catalog its queries are traced against."""

    name: str
    settings: ConnectionSettings
    read_pool: Any
    write_pool: Any | None = None
    catalog: CatalogCache | None = None

    def __post_init__(self) -> None:
        if self.catalog is None and self.read_pool is not None:
            # Refreshed on this interval, after DDL the gateway ran, and when a result's
            # field count disagrees with the analysis.
            self.catalog = CatalogCache(self.read_pool, stale_after=self.settings.catalog_refresh)

    @property
    def statement_timeout_ms(self) -> int:
        return int(self.settings.statement_timeout * 1000)

    @property
    def lock_timeout_ms(self) -> int:
        return int(self.settings.lock_timeout * 1000)


@dataclass
class Masking:
    """What masking needs at run time: the policy's compiled `[[mask]]` rules and the key
    of the `hash` strategy."""

    plan: Callable[[], MaskPlan]
    hash_key: bytes

    def detectors(self, principal: Principal) -> list[tuple[str, str]]:
        return self.plan().detectors_for(principal)

    def scrub(self, value: Any, principal: Principal) -> Any:
        """Value detectors over any JSON-like value (tool output, error text)."""
        detectors = self.detectors(principal)
        if not detectors:
            return value
        if isinstance(value, str):  # a message: a `null` span is redacted, never None
            return scan_tool_result_text(value, detectors, self.hash_key)
        return scan_value(value, detectors, hash_key=self.hash_key)


def _text(text: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=text)]


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=_text(text), is_error=True)


class BuiltinSql:
    """`sql_query`, `sql_list_tables`, `sql_describe_table`, `sql_explain` over the pools."""

    name = UPSTREAM_NAME

    def __init__(self, connections: dict[str, Connection], masking: Masking) -> None:
        if not connections:
            raise ValueError("the built-in SQL tools need at least one connection")
        self.connections = connections
        self.masking = masking
        self._lineage = LineageCache()
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

    async def analyze(
        self, call: ToolCall, principal: Principal, inspection: Inspection
    ) -> Inspection:
        """Trace the lineage of what `sql_query` returns, against the connection's catalog.

        Reads and DML with RETURNING are traced; a query that cannot be traced is marked
        unresolved (refused). Masked columns used in predicates set `sensitive_predicate`,
        for `sql_explain` too: the planner's row estimate for `WHERE ssn < '5'` comes from
        the column's statistics, an oracle on its values.
        """
        sql = inspection.sql
        conn = self.connections.get(call.connection or "")
        if call.tool not in TRACED_TOOLS or sql is None or conn is None or conn.catalog is None:
            return inspection
        if sql.statement_count != 1:
            return inspection
        # `EXPLAIN <query>` run through sql_query: the plan holds no values, but its row
        # estimates answer the explained query's predicates, so those are traced
        explained = sql.kind is SqlKind.EXPLAIN and call.tool == "sql_query"
        if sql.kind not in TRACED_KINDS and not explained:
            return inspection
        try:
            catalog = await conn.catalog.get()
            if explained:
                inner = explained_statement(sql.text)
                lineage = self._lineage.trace(inner, catalog)
            else:
                lineage = self._lineage.trace(sql.text, catalog, inspection=sql)
        except LineageUnresolved as exc:
            return replace(
                inspection,
                unresolved=exc.reason,
                extra_risks=inspection.extra_risks | {"lineage_unresolved"},
            )
        except (CatalogError, SqlToolError) as exc:
            return replace(
                inspection,
                unresolved=f"the catalog could not be loaded ({type(exc).__name__})",
                extra_risks=inspection.extra_risks | {"lineage_unresolved"},
            )
        plan = self.masking.plan()
        copies = [] if explained else plan.unmasked_copies(lineage.written, principal)
        if copies:
            target, sources = copies[0]
            return replace(
                inspection,
                unresolved=(
                    f"it writes values of masked column(s) {', '.join(sources)} into {target}, "
                    "which is not masked as strictly: reading it back would bypass the mask"
                ),
                extra_risks=inspection.extra_risks | {"lineage_unresolved"},
            )
        risks = set(inspection.extra_risks)
        if plan.masked_columns(lineage.predicate_columns, principal):
            risks.add(str(Risk.SENSITIVE_PREDICATE))
        if explained:  # its output is a plan, not the explained query's columns
            return replace(inspection, extra_risks=frozenset(risks))
        return replace(
            inspection,
            lineage=lineage,
            columns=lineage.referenced_columns,
            extra_risks=frozenset(risks),
        )

    async def estimate(
        self, call: ToolCall, principal: Principal, inspection: Inspection
    ) -> Estimate:
        """The planner's row estimate for the statement of `sql_query` or `sql_explain`
        (`sqltools.estimate`: EXPLAIN without ANALYZE, read-only, rolled back)."""
        sql = inspection.sql
        conn = self.connections.get(call.connection or "")
        if call.tool not in ("sql_query", "sql_explain") or sql is None or conn is None:
            return Estimate(None, "only the SQL tools' statements have a row estimate")
        params = call.arguments.get("params")
        found = await estimate_rows(
            sql,
            params if isinstance(params, list) else None,
            read_pool=conn.read_pool,
            write_pool=conn.write_pool,
            connection=conn.name,
            statement_timeout_ms=conn.statement_timeout_ms,
            lock_timeout_ms=conn.lock_timeout_ms,
            withhold=self._reads_masked(inspection, principal),
        )
        return self._scrubbed(found, principal)

    def _reads_masked(self, inspection: Inspection, principal: Principal) -> bool:
        lineage = inspection.lineage
        return lineage is not None and bool(
            self.masking.plan().masked_columns(lineage.referenced_columns, principal)
        )

    def _scrubbed(self, found: Estimate, principal: Principal) -> Estimate:
        if found.problem is None:
            return found
        # PostgreSQL quotes values in its messages: the reason passes the detectors too.
        return Estimate(None, self.masking.scrub(found.problem, principal))

    def prepare(
        self, call: ToolCall, principal: Principal, inspection: Inspection, *, explain: bool = True
    ) -> AbstractAsyncContextManager[PreparedCall] | None:
        """A traced single SELECT of `sql_query`: EXPLAIN (unless `explain` is False) and the
        read in one read-only transaction (`execute.explained_read`). Anything else (writes,
        which are explained on the write pool, `sql_explain`, untraced text) goes through
        `estimate` and `call_tool`."""
        sql = inspection.sql
        conn = self.connections.get(call.connection or "")
        if (
            call.tool != "sql_query"
            or conn is None
            or sql is None
            or sql.statement_count != 1
            or sql.kind is not SqlKind.SELECT
            or inspection.lineage is None
        ):
            return None
        return self._prepared_query(conn, call, principal, inspection, explain)

    @asynccontextmanager
    async def _prepared_query(
        self,
        conn: Connection,
        call: ToolCall,
        principal: Principal,
        inspection: Inspection,
        explain: bool,
    ) -> AsyncIterator[PreparedCall]:
        sql = inspection.sql
        assert sql is not None  # checked by prepare()
        params = call.arguments.get("params")
        async with execute.explained_read(
            conn.read_pool,
            sql.text,
            params if isinstance(params, list) else None,
            statement_timeout_ms=conn.statement_timeout_ms,
            lock_timeout_ms=conn.lock_timeout_ms,
            idle_timeout_ms=conn.statement_timeout_ms + 5000,
            explain=explain,
        ) as read:
            if read.plan is not None:
                found = Estimate(int(read.plan["estimated_rows"]))
            elif read.error is None:
                found = Estimate(None, "not explained")
            else:
                failure = estimate.failed(
                    read.error, withhold=self._reads_masked(inspection, principal)
                )
                found = self._scrubbed(failure, principal)

            async def run() -> types.CallToolResult:
                return await self._query(
                    conn, call.arguments, inspection, principal, explained=read
                )

            yield PreparedCall(found, run)

    async def call_tool(
        self, call: ToolCall, principal: Principal, inspection: Inspection
    ) -> types.CallToolResult:
        """Run an allowed call on the connection it targets; mask what it returns."""
        conn = self.connections.get(call.connection or "")
        if conn is None:
            return _error(f"mcp-gate: unknown connection {call.connection!r}.")
        try:
            if call.tool == "sql_query":
                return await self._query(conn, call.arguments, inspection, principal)
            if call.tool == "sql_explain":
                result = await self._explain(conn, call.arguments, inspection)
            elif call.tool == "sql_list_tables":
                result = await self._list_tables(conn, call.arguments)
            elif call.tool == "sql_describe_table":
                result = await self._describe(conn, call.arguments)
            else:
                return _error(f"mcp-gate: unknown tool {call.tool!r}.")
        except SqlToolError as exc:
            # PostgreSQL quotes offending values in its messages (`invalid input syntax for
            # type integer: "ann@example.com"`): errors pass the detectors too.
            return _error(self.masking.scrub(f"mcp-gate: {exc}", principal))
        return self._scrub_result(result, principal)

    def _scrub_result(
        self, result: types.CallToolResult, principal: Principal
    ) -> types.CallToolResult:
        detectors = self.masking.detectors(principal)
        if not detectors:
            return result
        return scan_tool_result(result, detectors, self.masking.hash_key)

    # -- the tools -------------------------------------------------------------------------
    async def _query(
        self,
        conn: Connection,
        args: dict[str, Any],
        inspection: Inspection,
        principal: Principal,
        explained: execute.ExplainedRead | None = None,
    ) -> types.CallToolResult:
        sql = inspection.sql
        if sql is None or sql.statement_count != 1:
            return _error("mcp-gate: sql_query runs exactly one statement.")
        lineage = inspection.lineage
        if sql.kind in TRACED_KINDS and lineage is None:
            # analyze() traces every such statement; never run one untraced.
            return _error("mcp-gate: denied (lineage_unresolved): the query was not traced.")
        try:
            result = await self._run_query(conn, args, sql, lineage, explained)
        except FieldCountMismatch:
            if conn.catalog is not None:
                conn.catalog.invalidate()  # the schema changed under the catalog
            return _error(
                "mcp-gate: denied (lineage_unresolved): the database returns a different number "
                "of columns than the gateway's catalog expects; the catalog is being refreshed, "
                "try again."
            )
        except SqlToolError as exc:
            plan = self.masking.plan()
            if lineage is not None and plan.masked_columns(lineage.referenced_columns, principal):
                # PostgreSQL quotes values in its messages, not always in a shape detectors
                # know (`chr(replace(ssn, '-', '')::int)`: nine bare digits)
                message = withhold_values(
                    getattr(exc, "message", str(exc)), getattr(exc, "sqlstate", None)
                )
                return _error(self.masking.scrub(f"mcp-gate: {message}", principal))
            return _error(self.masking.scrub(f"mcp-gate: {exc}", principal))
        if isinstance(result, types.CallToolResult):
            return result
        plan = self.masking.plan()
        if lineage is not None:
            strategies = plan.output_strategies(lineage.outputs, principal)
        else:
            strategies = [None] * len(result.columns)
        masked, flags = mask_result(
            result, strategies, plan.detectors_for(principal), hash_key=self.masking.hash_key
        )
        return types.CallToolResult(
            content=_text(results.text_table(masked, flags)),
            structured_content=results.structured(masked, flags),
        )

    async def _run_query(
        self,
        conn: Connection,
        args: dict[str, Any],
        sql: Any,
        lineage: Any,
        explained: execute.ExplainedRead | None = None,
    ) -> Any:
        expected = len(lineage.outputs) if lineage is not None else None
        params = args.get("params") or None
        max_rows = min(int(args.get("max_rows") or conn.settings.max_rows), conn.settings.max_rows)
        if explained is not None:  # the transaction its EXPLAIN ran in (a SELECT)
            result = await explained.fetch(max_rows=max_rows, expected_columns=expected)
        elif sql.kind in READ_KINDS:
            result = await execute.run_read(
                conn.read_pool,
                sql.text,
                params,
                max_rows=max_rows,
                statement_timeout_ms=conn.statement_timeout_ms,
                lock_timeout_ms=conn.lock_timeout_ms,
                idle_timeout_ms=conn.statement_timeout_ms + 5000,
                expected_columns=expected,
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
            if sql.kind is SqlKind.DDL and conn.catalog is not None:
                conn.catalog.invalidate()
            if expected is not None and len(result.columns) != expected:
                raise FieldCountMismatch(expected, len(result.columns))
        else:
            return _error(f"mcp-gate: the gateway does not run {sql.kind} statements.")
        return result

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
