"""`mcp-gate policy check|test`: the work behind the commands, returning exit codes.

`test` imports the inspection stack (SQL parsers, lineage, the database tools) when it
runs, so `check` starts without loading it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from mcp_gate.calls import Principal, ToolCall
from mcp_gate.policy.loader import LoadedPolicy, PolicyError, load_policy
from mcp_gate.policy.report import (
    columns_to_dict,
    print_check,
    print_columns,
    print_problems,
    print_test,
    test_result_to_dict,
)

if TYPE_CHECKING:
    from mcp_gate.policy.columns import ColumnReport

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _load(path: Path, err: Console) -> LoadedPolicy | None:
    try:
        return load_policy(path)
    except PolicyError as exc:
        print_problems(err, exc)
        return None


def check(path: Path, out: Console, err: Console) -> int:
    """Validate a policy file: 0 when valid, 2 with every located problem otherwise."""
    policy = _load(path, err)
    if policy is None:
        return EXIT_USAGE
    print_check(out, policy)
    return EXIT_OK


def test(
    path: Path,
    *,
    sql: str | None,
    tool: str | None,
    arguments: str | None,
    connection: str | None,
    upstream: str,
    subject: str,
    groups: list[str],
    as_json: bool,
    expect: str | None,
    out: Console,
    err: Console,
    config: Path | None = None,
) -> int:
    """Inspect and decide one call as the gateway would; print why."""
    from mcp_gate.inspect.toolcall import inspect_call
    from mcp_gate.mask.rules import MaskPlan
    from mcp_gate.policy.columns import column_report
    from mcp_gate.sqltools.builtin import TRACED_KINDS

    if (sql is None) == (tool is None):
        err.print("[red]give exactly one of --sql or --tool[/]")
        return EXIT_USAGE
    args: dict[str, Any] = {}
    if arguments is not None:
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as exc:
            err.print(f"[red]--args is not valid JSON: {exc.msg} (column {exc.colno})[/]")
            return EXIT_USAGE
        if not isinstance(parsed, dict):
            err.print('[red]--args must be a JSON object, e.g. \'{"path": "/tmp"}\'[/]')
            return EXIT_USAGE
        args = parsed
    policy = _load(path, err)
    if policy is None:
        return EXIT_USAGE
    if sql is not None:
        call = ToolCall("sql_query", {"sql": sql, **args}, "builtin", connection)
    else:
        call = ToolCall(tool or "", args, upstream, connection)
    principal = Principal(subject, frozenset(g for g in groups if g))
    inspection = inspect_call(call)
    report: ColumnReport | None = None
    traced = inspection.sql is not None and inspection.sql.kind in TRACED_KINDS
    if config is not None and traced and inspection.sql is not None:
        report = column_report(
            config, connection, inspection.sql, MaskPlan(policy.model.mask), principal
        )
        risks = set(inspection.extra_risks)
        if report.unresolved:
            risks.add("lineage_unresolved")
        elif report.sensitive_predicates:
            risks.add("sensitive_predicate")
        inspection = replace(inspection, extra_risks=frozenset(risks))
        if report.lineage is not None:
            inspection = replace(inspection, columns=report.lineage.referenced_columns)
        if report.estimate is not None:
            inspection = replace(inspection, estimated_rows=report.estimate.rows)
    decision = policy.engine.decide(principal, call, inspection)
    if report is not None and report.unresolved and decision.decision != "deny":
        decision = replace(decision, decision="deny", deciding=("lineage_unresolved",))
    elif report is not None and report.estimate is not None and decision.blocked_by_estimate:
        # As the gateway: a restricting rule it could not evaluate without an estimate.
        decision = replace(decision, decision="deny", deciding=("estimated_rows_unknown",))
    if as_json:
        answer = test_result_to_dict(principal, call, inspection, decision)
        if report is not None:
            answer["columns"] = columns_to_dict(report)
        out.print_json(json.dumps(answer))
    else:
        print_test(out, call, inspection, decision)
        if report is not None:
            print_columns(out, report)
        elif traced:
            out.print(
                "columns: pass --config mcp-gate.toml to trace which output columns the "
                "gateway would mask (lineage needs the database's catalog)",
                style="dim",
                highlight=False,
            )
    if expect is not None and expect != decision.decision:
        err.print(f"[red]expected {expect}, got {decision.decision}[/]")
        return EXIT_FAILURE
    return EXIT_OK
