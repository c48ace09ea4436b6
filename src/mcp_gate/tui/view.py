"""What the approvals TUI shows, as plain functions of an `ApprovalRequest` (no Textual here).

Every string in a request came from the requester (SQL, justification) or the gateway; none of
it is trusted as markup, and characters that could hide what will run (terminal control
codes, bidirectional overrides, zero-width characters) are shown as visible `⟨U+XXXX⟩` marks.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import pglast
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from mcp_gate.approvals.model import ApprovalRequest, Status
from mcp_gate.inspect.model import SqlInspection
from mcp_gate.inspect.sql import inspect_sql

STATUS_STYLE: dict[Status, str] = {
    Status.PENDING: "bold yellow",
    Status.APPROVED: "green",
    Status.EXECUTED: "green",
    Status.DENIED: "red",
    Status.EXPIRED: "dim",
    Status.WITHDRAWN: "dim",
}
#: Unicode categories never shown raw: controls, format characters (bidi overrides,
#: zero-width joiners…), line and paragraph separators, unassigned and private-use code points.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cn", "Co", "Cs"})


def visible(text: str) -> str:
    """`text` with every character that could hide or rearrange what is shown replaced by a
    visible `⟨U+XXXX⟩` mark; newlines and tabs are kept as they are."""
    if text.isprintable() or all(
        c in "\n\t" or unicodedata.category(c) not in _HIDDEN_CATEGORIES for c in text
    ):
        return text
    return "".join(
        f"⟨U+{ord(c):04X}⟩"
        if c not in "\n\t" and unicodedata.category(c) in _HIDDEN_CATEGORIES
        else c
        for c in text
    )


def one_line(text: str, width: int) -> str:
    """A single display line of at most `width` characters (newlines become `⏎`)."""
    flat = " ".join(visible(text).replace("\t", " ").split("\n"))
    flat = " ".join(flat.split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


@lru_cache(maxsize=1024)
def inspection_of(sql: str) -> SqlInspection:
    """The gateway's own SQL inspector on the request's SQL (kind, tables, risk flags)."""
    return inspect_sql(sql)


@lru_cache(maxsize=1024)
def pretty_sql(sql: str) -> str | None:
    """The SQL pretty-printed by pglast (PostgreSQL's own parser), or None if it cannot be."""
    try:
        return pglast.prettify(sql)
    except Exception:  # any parser or printer failure: the caller shows the original text
        return None


def kind_of(approval: ApprovalRequest) -> str:
    """The statement kind for SQL (`delete`, `update`…), else the tool's name."""
    if approval.sql is None:
        return approval.tool
    return str(inspection_of(approval.sql).kind)


def risk_flags(approval: ApprovalRequest) -> list[str]:
    """The inspector's risk flags on the request's SQL (empty for calls without SQL)."""
    return sorted(str(r) for r in inspection_of(approval.sql).risks) if approval.sql else []


def risk_of(approval: ApprovalRequest) -> str:
    """The matched rules, then the risk flags, for one table cell."""
    return "; ".join([*approval.reasons, *risk_flags(approval)])


def duration(seconds: float) -> str:
    """A short human duration: `42s`, `5m 03s`, `2h 10m`, `3d 4h`."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def age(approval: ApprovalRequest, now: float) -> str:
    """How long ago the request was made."""
    return duration(now - approval.created_at)


def expiry(approval: ApprovalRequest, now: float) -> Text:
    """The expiry countdown of a pending request, or when it left `pending`."""
    if approval.status is Status.PENDING:
        left = approval.expires_at - now
        if left <= 0:
            return Text("expired (waiting for the gateway to record it)", style="red")
        return Text(f"expires in {duration(left)}", style="red" if left < 60 else "")
    when = approval.executed_at or approval.decided_at or now
    return Text(f"{approval.status} {duration(now - when)} ago")


@dataclass(frozen=True, slots=True)
class Row:
    """The queue's cells for one request (in column order)."""

    age: Text
    requester: Text
    target: Text
    kind: Text
    risk: Text
    status: Text

    def cells(self) -> tuple[Text, ...]:
        return (self.age, self.requester, self.target, self.kind, self.risk, self.status)


COLUMNS = ("age", "requester", "target", "kind", "risk", "status")


def row_of(approval: ApprovalRequest, now: float) -> Row:
    """The queue row of `approval`; every value is plain text, never markup."""
    return Row(
        age=Text(age(approval, now)),
        requester=Text(one_line(approval.principal.subject, 24)),
        target=Text(one_line(f"{approval.tool} @ {approval.target}", 32)),
        kind=Text(one_line(kind_of(approval), 16)),
        risk=Text(one_line(risk_of(approval), 48)),
        status=Text(str(approval.status), style=STATUS_STYLE[approval.status]),
    )


def sort_key(approval: ApprovalRequest) -> tuple[int, float]:
    """Pending first, newest first within each group."""
    return (0 if approval.status is Status.PENDING else 1, -approval.created_at)


def matches(approval: ApprovalRequest, needle: str) -> bool:
    """The filter: a case-insensitive substring of requester, target, tool, SQL, status,
    id or reasons."""
    if not needle.strip():
        return True
    hay = "\n".join(
        [
            approval.id,
            approval.principal.subject,
            approval.target,
            approval.tool,
            approval.sql or "",
            str(approval.status),
            *approval.reasons,
        ]
    ).casefold()
    return needle.strip().casefold() in hay


def _votes(approval: ApprovalRequest) -> Text:
    approved = len(approval.approved_by)
    text = Text(f"{', '.join(approval.approvers) or '(none)'}", style="bold")
    text.append(f"  quorum {approval.quorum}, {approved} approved so far")
    for d in approval.decisions:
        text.append("\n")
        style = "green" if d.decision == "approve" else "red"
        text.append(f"{d.decision}", style=style)
        text.append(f" by {visible(d.approver)}")
        if d.reason:
            text.append(f": {visible(d.reason)}")
    return text


def summary(approval: ApprovalRequest, now: float, me: str | None = None) -> RenderableType:
    """Everything about the request but its SQL: who, where, why, tables, estimate,
    justification, approvers and votes, and the (ticking) expiry. `me` is the approver's
    own subject: their own requests say so (nobody decides their own)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    title = Text(approval.id, style="bold")
    title.append("  ")
    title.append(str(approval.status), style=STATUS_STYLE[approval.status])
    grid.add_row("request", title)
    who = Text(visible(approval.principal.subject), style="bold")
    if approval.principal.groups:
        who.append(f"  groups {', '.join(sorted(approval.principal.groups))}")
    if approval.principal.client_id:
        who.append(f"  client {visible(approval.principal.client_id)}")
    if me is not None and approval.principal.subject == me:
        who.append("  (you: nobody may decide their own request)", style="yellow")
    grid.add_row("requester", who)
    grid.add_row(
        "call", Text(visible(f"{approval.tool} @ {approval.target}  ({kind_of(approval)})"))
    )
    grid.add_row("age", Text(age(approval, now)))
    grid.add_row("expiry", expiry(approval, now))
    grid.add_row("rules", Text(visible(", ".join(approval.reasons)) or "(none)"))
    flags = risk_flags(approval)
    if flags:
        grid.add_row("risk flags", Text(", ".join(flags), style="yellow"))
    if approval.sql is not None:
        inspection = inspection_of(approval.sql)
        tables = Text()
        if inspection.relations_written:
            tables.append("writes ", style="bold red")
            tables.append(visible(", ".join(sorted(inspection.relations_written))))
        if inspection.relations_read:
            tables.append("  reads " if tables else "reads ", style="bold")
            tables.append(visible(", ".join(sorted(inspection.relations_read))))
        grid.add_row("tables", tables or Text("(none found)", style="dim"))
    rows = "unknown" if approval.estimated_rows is None else f"{approval.estimated_rows:,}"
    grid.add_row("estimated rows", Text(rows))
    justification = approval.justification
    grid.add_row(
        "justification",
        Text(visible(justification)) if justification else Text("(none given)", style="dim"),
    )
    grid.add_row("approvers", _votes(approval))
    return grid


def sql_view(approval: ApprovalRequest) -> RenderableType:
    """The SQL: pretty-printed and highlighted when PostgreSQL's parser can, and always the
    original text exactly as it will run (with hidden characters made visible)."""
    if approval.sql is None:
        return Text(f"{approval.tool}: no SQL (the arguments are not stored)", style="dim")
    original = visible(approval.sql)
    pretty = pretty_sql(approval.sql)
    exact = Panel(
        Syntax(original, "postgresql", word_wrap=True, theme="ansi_dark"),
        title="SQL exactly as it will run",
        title_align="left",
        border_style="yellow",
    )
    if pretty is None:
        note = Text("(PostgreSQL's parser cannot pretty-print this text)", style="dim")
        return Group(note, exact)
    if pretty.strip() == approval.sql.strip():
        return exact
    # What will run comes first: the pretty form is a reading aid below it.
    return Group(
        exact,
        Panel(
            Syntax(visible(pretty), "postgresql", word_wrap=True, theme="ansi_dark"),
            title="SQL, pretty-printed",
            title_align="left",
            border_style="cyan",
        ),
    )
