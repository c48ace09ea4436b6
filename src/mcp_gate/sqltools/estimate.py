"""The planner's row estimate of one agent statement, for `estimated_rows` rules and approvers.

`EXPLAIN (FORMAT JSON)`, never ANALYZE, on the read-only recipe (`execute.explain`): nothing
executes, and the transaction is rolled back. Reads are explained on the read pool; DML on the
write pool, because EXPLAIN checks the privileges the statement itself needs (the reader role
may not DELETE, so it may not EXPLAIN a DELETE either). Every failure is an unknown estimate
with its reason, never an exception: the caller decides what unknown means (the gateway fails
closed when a rule that needs the estimate would restrict the call).
"""

from __future__ import annotations

from typing import Any

from mcp_gate.gateway.upstream import Estimate
from mcp_gate.inspect.model import SqlInspection, SqlKind
from mcp_gate.mask.messages import withhold_values
from mcp_gate.sqltools import execute
from mcp_gate.sqltools.errors import SqlToolError

#: Statement kinds PostgreSQL can EXPLAIN without running them.
EXPLAINABLE = frozenset(
    {SqlKind.SELECT, SqlKind.INSERT, SqlKind.UPDATE, SqlKind.DELETE, SqlKind.MERGE}
)


async def estimate_rows(
    sql: SqlInspection,
    params: list[Any] | None,
    *,
    read_pool: Any,
    write_pool: Any | None,
    connection: str,
    statement_timeout_ms: int,
    lock_timeout_ms: int,
    withhold: bool = False,
) -> Estimate:
    """The rows `sql` would return (reads) or insert/update/delete (DML), per the planner.

    `withhold`: the statement reads masked columns, so a failure's database message keeps
    only its wording (`mask.messages.withhold_values`), as a failed query's would.
    """
    if sql.statement_count != 1 or sql.kind not in EXPLAINABLE:
        return Estimate(None, f"PostgreSQL does not estimate {sql.kind} statements")
    pool = read_pool if sql.kind is SqlKind.SELECT else write_pool
    if pool is None:
        return Estimate(None, f"connection {connection!r} has no write_dsn to explain writes on")
    try:
        plan = await execute.explain(
            pool,
            sql.text,
            params,
            statement_timeout_ms=statement_timeout_ms,
            lock_timeout_ms=lock_timeout_ms,
            idle_timeout_ms=statement_timeout_ms + 5000,
        )
    except (SqlToolError, ValueError) as exc:
        return failed(exc, withhold=withhold)
    return Estimate(int(plan["estimated_rows"]))


def failed(exc: SqlToolError | ValueError, *, withhold: bool) -> Estimate:
    """The unknown estimate of an EXPLAIN that failed with `exc` (`withhold`: as for
    `estimate_rows`). A ValueError is invalid limits: configuration, no agent values."""
    if withhold and isinstance(exc, SqlToolError):
        message = withhold_values(getattr(exc, "message", str(exc)), getattr(exc, "sqlstate", None))
        return Estimate(None, f"EXPLAIN failed: {message}")
    return Estimate(None, f"EXPLAIN failed: {exc}")
