"""Inspect a tool call: find the SQL it carries (if any) and classify it."""

from __future__ import annotations

from mcp_gate.calls import ToolCall
from mcp_gate.inspect.model import Inspection, Risk, SqlInspection, SqlKind
from mcp_gate.inspect.sql import inspect_sql

#: Built-in tools whose argument `sql` is SQL text the gateway will run.
BUILTIN_SQL_ARGUMENT = {"sql_query": "sql", "sql_explain": "sql"}


def inspect_call(call: ToolCall, sql_argument: str | None = None) -> Inspection:
    """Inspect `call`; `sql_argument` names the argument holding SQL for non-built-in tools.

    A SQL-bearing call whose SQL argument is missing or not a string is classified as
    unparseable rather than as a call without SQL, so that it cannot slip past SQL rules.
    """
    if sql_argument is None and call.upstream == "builtin":
        sql_argument = BUILTIN_SQL_ARGUMENT.get(call.tool)
    if sql_argument is None:
        return Inspection()
    text = call.arguments.get(sql_argument)
    if not isinstance(text, str):
        return Inspection(
            sql=SqlInspection(
                text="",
                kind=SqlKind.OTHER,
                kinds=(SqlKind.OTHER,),
                risks=frozenset({Risk.UNPARSEABLE}),
                error=f"argument {sql_argument!r} must be a string of SQL",
            )
        )
    return Inspection(sql=inspect_sql(text))
