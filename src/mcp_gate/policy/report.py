"""Showing policies and decisions to people (rich) and to scripts (JSON)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from mcp_gate.calls import Principal, ToolCall
from mcp_gate.inspect.model import Inspection, SqlInspection
from mcp_gate.policy.engine import Decision
from mcp_gate.policy.loader import LoadedPolicy, PolicyError

if TYPE_CHECKING:
    # Only for annotations: the columns module pulls in the database tools.
    from mcp_gate.policy.columns import ColumnReport

_STYLE = {"allow": "bold green", "review": "bold yellow", "deny": "bold red"}
_MAX_SHOWN_SQL = 2000


def sql_to_dict(sql: SqlInspection) -> dict[str, Any]:
    """A SQL inspection as plain JSON values (the text itself is left to the caller)."""
    return {
        "kind": str(sql.kind),
        "kinds": [str(k) for k in sql.kinds],
        "statement_count": sql.statement_count,
        "relations_read": sorted(sql.relations_read),
        "relations_written": sorted(sql.relations_written),
        "columns": sorted(sql.columns),
        "functions": sorted(sql.functions),
        "risks": sorted(str(r) for r in sql.risks),
        "error": sql.error,
        "details": list(sql.details),
    }


def decision_to_dict(decision: Decision) -> dict[str, Any]:
    """A decision as plain JSON values, every matched rule with its reasons."""
    return {
        "decision": decision.decision,
        "reasons": decision.reasons,
        "deciding_rules": list(decision.deciding),
        "default_used": decision.default_used,
        "matched": [
            {"rule": h.rule, "decision": h.decision, "why": list(h.why)} for h in decision.matched
        ],
        "exempted": [
            {
                "rule": h.rule,
                "decision": h.decision,
                "why": list(h.why),
                "unless": list(h.exempted_by),
            }
            for h in decision.exempted
        ],
        "approvers": list(decision.approvers),
        "quorum": decision.quorum,
        "not_evaluated": list(decision.unknown),
        "policy_version": decision.policy_version,
    }


def test_result_to_dict(
    principal: Principal, call: ToolCall, inspection: Inspection, decision: Decision
) -> dict[str, Any]:
    """The whole `policy test` answer for `--json`."""
    return {
        "principal": {"subject": principal.subject, "groups": sorted(principal.groups)},
        "call": {
            "tool": call.tool,
            "upstream": call.upstream,
            "connection": call.connection,
            "arguments": call.arguments,
        },
        "inspection": {
            "sql": sql_to_dict(inspection.sql) if inspection.sql else None,
            "estimated_rows": inspection.estimated_rows,
        },
        "decision": decision_to_dict(decision),
    }


def print_problems(console: Console, error: PolicyError) -> None:
    """Every problem of a bad policy, one per line, file:line first."""
    count = len(error.problems)
    console.print(f"[bold red]{count} problem{'s' if count != 1 else ''} found[/]")
    for problem in error.problems:
        where = f"{problem.file}:{problem.line}" if problem.line else problem.file
        key = f" [bold]{escape(problem.key)}[/]:" if problem.key else ""
        console.print(
            f"  [cyan]{escape(where)}[/]:{key} {escape(problem.message)}",
            highlight=False,
            soft_wrap=True,  # one problem per line, whatever the terminal width
        )


def print_check(console: Console, policy: LoadedPolicy) -> None:
    """A short summary of a valid policy."""
    m = policy.model
    table = Table(
        title=Text(f"{policy.path} is valid (version {policy.version})"), title_justify="left"
    )
    table.add_column("#", justify="right", style="dim")
    table.add_column("rule")
    table.add_column("decision")
    table.add_column("match")
    for i, rule in enumerate(m.rule, 1):
        match = rule.match.model_dump(exclude_none=True)
        text = ", ".join(f"{k}={v}" for k, v in match.items()) or "(every call)"
        if rule.unless:
            text += " unless " + ", ".join(
                f"{k}={v}" for k, v in rule.unless.model_dump(exclude_none=True).items()
            )
        table.add_row(
            str(i), Text(rule.name), Text(rule.decision, style=_STYLE[rule.decision]), Text(text)
        )
    console.print(table)
    console.print(
        f"default: [{_STYLE[m.default]}]{m.default}[/] · approvers: "
        f"{', '.join(m.approval.approvers) or '(none)'} · quorum {m.approval.quorum} · "
        f"{len(m.mask)} mask rule{'s' if len(m.mask) != 1 else ''}",
        highlight=False,
    )


def _sql_panel(sql: SqlInspection) -> Panel:
    shown = sql.text if len(sql.text) <= _MAX_SHOWN_SQL else sql.text[:_MAX_SHOWN_SQL] + " …"
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    kinds = ", ".join(str(k) for k in sql.kinds) or str(sql.kind)
    # Names come from the SQL text: Text(), never markup, so `[` in a name stays literal.
    facts.add_row("kind", Text(f"{sql.kind}  (statements: {sql.statement_count}; {kinds})"))
    facts.add_row("reads", Text(", ".join(sorted(sql.relations_read)) or "-"))
    facts.add_row("writes", Text(", ".join(sorted(sql.relations_written)) or "-"))
    facts.add_row("functions", Text(", ".join(sorted(sql.functions)) or "-"))
    risks = Text(", ".join(sorted(str(r) for r in sql.risks)) or "none")
    if sql.risks:
        risks.stylize("bold red")
    facts.add_row("risks", risks)
    if sql.error:
        facts.add_row("error", Text(sql.error, style="red"))
    for detail in sql.details:
        facts.add_row("", Text(f"• {detail}", style="yellow"))
    body = Group(Syntax(shown, "sql", word_wrap=True, background_color="default"), Text(), facts)
    return Panel(body, title="inspection", title_align="left")


def print_test(
    console: Console, call: ToolCall, inspection: Inspection, decision: Decision
) -> None:
    """The inspection, then the decision and every rule that took part in it."""
    if inspection.sql is not None:
        console.print(_sql_panel(inspection.sql))
    else:
        console.print(
            Panel(
                Text(f"tool {call.tool} on upstream {call.upstream}, arguments {call.arguments}"),
                title="call",
                title_align="left",
            )
        )
    headline = Text(decision.summary())
    headline.stylize(_STYLE[decision.decision], 0, len(decision.decision))
    lines: list[Text] = [headline]
    for hit in decision.matched:
        mark = "→" if hit.rule in decision.deciding else " "
        lines.append(
            Text(f' {mark} rule "{hit.rule}" ({hit.decision})', style=_STYLE[hit.decision])
        )
        lines.extend(Text(f"     {why}") for why in hit.why)
    for hit in decision.exempted:
        lines.append(Text(f'   rule "{hit.rule}" ({hit.decision}) exempted by unless', style="dim"))
        lines.extend(Text(f"     {why}") for why in hit.exempted_by)
    for note in decision.unknown:
        lines.append(Text(f"   not evaluated: {note}", style="dim"))
    console.print(Panel(Group(*lines), title="decision", title_align="left"))


def columns_to_dict(report: ColumnReport) -> dict[str, Any]:
    """The per-column masking verdicts for `--json`."""
    estimate = report.estimate
    return {
        "problem": report.problem,
        "estimate_problem": estimate.problem if estimate is not None else None,
        "sensitive_predicates": list(report.sensitive_predicates),
        "outputs": [
            {
                "position": c.position,
                "name": c.name,
                "sources": list(c.sources),
                "masked": c.strategy,
                "rules": [
                    {"mask": r.index + 1, "patterns": list(r.patterns), "exempt": r.exempt}
                    for r in c.reasons
                ],
            }
            for c in report.columns
        ],
    }


def print_columns(console: Console, report: ColumnReport) -> None:
    """The row estimate, then each output column: masked or not, the base columns it derives
    from, and the rule."""
    if report.estimate is not None:
        rows = report.estimate.rows
        console.print(
            Text(
                f"estimated rows: {rows:,} (EXPLAIN, not run)"
                if rows is not None
                else f"estimated rows: unknown ({report.estimate.problem}); the gateway denies "
                "a call that a rule needing the estimate would hold or refuse",
                style="bold" if rows is not None else "yellow",
            )
        )
    if report.problem is not None:
        console.print(Panel(Text(report.problem, style="red"), title="columns", title_align="left"))
        return
    table = Table(title="columns", title_justify="left")
    for header in ("#", "output", "masked", "derives from", "because"):
        table.add_column(header)
    for c in report.columns:
        because = "; ".join(
            f"[[mask]] #{r.index + 1} {', '.join(r.patterns)}"
            + (" (exempt: your groups)" if r.exempt else "")
            for r in c.reasons
        )
        applied = {r.strategy for r in c.reasons if not r.exempt}
        if c.strategy == "redact" and applied and applied <= {"partial", "hash"}:
            # mask.rules.MaskPlan.output_strategy: why the rule's strategy is not the one shown
            because += "; a computed value: partial and hash apply only to plain column copies"
        table.add_row(
            str(c.position + 1),
            Text(c.name),
            Text(c.strategy or "no", style="bold yellow" if c.strategy else "green"),
            Text(", ".join(c.sources) or "(no column: a constant or expression)"),
            Text(because or "-"),
        )
    console.print(table)
    if report.sensitive_predicates:
        console.print(
            Text(
                "masked columns used to filter, join, group or sort (sensitive_predicate): "
                + ", ".join(report.sensitive_predicates),
                style="yellow",
            )
        )
