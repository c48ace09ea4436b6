"""Rendering a recorded session as a readable terminal timeline (rich).

One line per event, at its offset from the session's start: the direction (`→` from the
client, `←` to it), the method and request id; tool calls with their SQL highlighted; the
decision with its reasons (and approval id); approval events (who approved or denied, why);
results truncated sensibly (the first rows and columns of a table, long text cut with "… N
more characters"); what a write did (its command tag and affected rows); a plan's estimate
and its first nodes; timings. Reads the event shapes the recorder writes (`recorder.py`) and
stays readable for anything else (shown as compact JSON, cut).

Offsets count from the session's start, or from its first event when that came earlier:
stores written before the recorder dated a session's start by the arrival of the initialize
that opened it hold a `session_start` a few milliseconds after that request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from .model import EventKind, SessionInfo, StoredEvent

MAX_TEXT = 400  # characters of a result's text shown
MAX_ROWS = 5  # rows of a table result shown
MAX_COLUMNS = 12  # columns of a table result shown
MAX_CELL = 40
MAX_PLAN_NODES = 8  # nodes of an EXPLAIN plan shown
MAX_JSON = 240
_DECISION_STYLE = {"allow": "bold green", "deny": "bold red", "review": "bold yellow"}


def when(ts: float | None) -> str:
    """A Unix time as `2026-12-02 07:04:18Z` (or `–`)."""
    if ts is None:
        return "–"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """`850ms`, `12.3s`, `4m 05s`, `2h 03m`; `–` for None."""
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def cut(text: str, limit: int = MAX_TEXT) -> str:
    """`text`, or its first `limit` characters and "… N more characters"."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… {len(text) - limit} more characters"


def compact(value: Any, limit: int = MAX_JSON) -> str:
    """Compact JSON, cut."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return cut(text, limit)


def session_header(info: SessionInfo) -> Panel:
    """Who, how and how long: the panel above a replay."""
    lines = Text()
    lines.append(f"{info.subject}", style="bold")
    if info.groups:
        lines.append(f" ({', '.join(info.groups)})")
    if info.client_id:
        lines.append(f" via client id {info.client_id}")
    lines.append("\n")
    client = " ".join(x for x in (info.client_name, info.client_version) if x) or "unknown client"
    lines.append(f"{client} over {info.transport}" + (f", MCP {info.era}" if info.era else ""))
    lines.append("\n")
    ended = info.ended_at
    lines.append(f"started {when(info.started_at)}, ")
    lines.append(
        f"lasted {duration(ended - info.started_at)}" if ended is not None else "still open"
    )
    lines.append(f"; {info.calls} calls, {info.denied} denied, {info.events} events")
    return Panel(lines, title=f"session {info.id}", title_align="left", expand=False)


class Timeline:
    """Renders events of one session one at a time (also for `--follow`)."""

    def __init__(self, console: Console, started_at: float) -> None:
        self.console = console
        self.t0 = started_at

    def show(self, events: Iterable[StoredEvent]) -> None:
        """Print each event's lines."""
        for stored in events:
            rendered = self.render(stored)
            if rendered is not None:
                self.console.print(rendered)

    def _line(self, stored: StoredEvent, *parts: tuple[str, str] | str) -> Text:
        # The session began no later than its first event (module docstring): never a
        # negative offset, and later offsets count from that first event.
        self.t0 = min(self.t0, stored.event.at)
        text = Text()
        text.append(f"{stored.event.at - self.t0:+9.3f}s ", style="dim")
        for part in parts:
            if isinstance(part, tuple):
                text.append(*part)
            else:
                text.append(part)
        return text

    def render(self, stored: StoredEvent) -> RenderableType | None:
        """The lines of one event."""
        ev = stored.event
        kind = ev.kind
        if kind == EventKind.SESSION_START:
            data = ev.data
            client = data.get("client_info") or {}
            name = " ".join(str(client.get(k)) for k in ("name", "version") if client.get(k))
            return self._line(
                stored,
                ("● session started", "bold"),
                f" over {data.get('transport', '?')}",
                f", MCP {data['era']}" if data.get("era") else "",
                f", client {name}" if name else "",
            )
        if kind == EventKind.SESSION_END:
            reason = ev.data.get("reason")
            return self._line(stored, ("● session ended", "bold"), f" ({reason})" if reason else "")
        if kind == EventKind.DECISION:
            return self._decision(stored)
        if kind == EventKind.APPROVAL:
            return self._approval(stored)
        if kind == EventKind.MESSAGE:
            return self._message(stored)
        return self._line(stored, (str(kind), "dim"), " ", compact(ev.data))

    # -- messages ---------------------------------------------------------------------------

    def _message(self, stored: StoredEvent) -> RenderableType:
        ev = stored.event
        if ev.method == "mcp-gate/audit-gap":
            lost = ev.data.get("lost", "?")
            return self._line(stored, (f"⚠ {lost} transcript events were lost", "bold red"))
        msg = ev.data.get("message")
        arrow = ("→ ", "cyan") if str(ev.direction) == "in" else ("← ", "magenta")
        rid = f" #{ev.request_id}" if ev.request_id is not None else ""
        if not isinstance(msg, dict):
            return self._line(stored, arrow, compact(msg))
        if set(msg) == {"unparsed"}:  # a body that was not JSON (or too big to record whole)
            raw = str(msg["unparsed"])
            head = self._line(
                stored, arrow, ("not JSON-RPC", "bold yellow"), f" ({len(raw)} characters)"
            )
            return Group(head, _indent(Text(cut(raw), style="dim"))) if raw else head
        timing = f" ({ev.duration_ms:g} ms)" if ev.duration_ms is not None else ""
        if "method" in msg:
            params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
            head = self._line(stored, arrow, (str(msg["method"]), "bold"), rid)
            if msg["method"] == "tools/call":
                head.append(f" {params.get('name', '?')}", style="bold")
                return Group(head, *self._arguments(params.get("arguments")))
            if msg["method"] == "elicitation/create":
                return Group(head, _indent(Text(cut(str(params.get("message", "")), MAX_TEXT))))
            return head
        if "error" in msg:
            err = msg.get("error") if isinstance(msg.get("error"), dict) else {}
            return self._line(
                stored,
                arrow,
                (f"error{rid}", "bold red"),
                f"{timing}: {err.get('code', '')} {cut(str(err.get('message', '')), MAX_TEXT)}",
            )
        result = msg.get("result")
        label = f"{ev.method} result" if ev.method else "result"
        head = self._line(stored, arrow, (f"{label}{rid}", "bold"), timing)
        if not isinstance(result, dict):
            return head
        if result.get("isError"):
            head.append(" error", style="bold red")
        if result.get("resultType") == "input_required":
            asked = result.get("inputRequests") or {}
            head.append(f" input required ({len(asked)} request(s))", style="bold yellow")
        if isinstance(result.get("action"), str):  # the client's answer to an elicitation
            head.append(f" {result['action']}", style="bold")
            content = result.get("content")
            if isinstance(content, dict) and content:
                return Group(head, _indent(Text(compact(content), style="dim")))
        if ev.method == "tools/call" or "content" in result:
            return Group(head, *self._result(result))
        return head

    def _arguments(self, arguments: Any) -> list[RenderableType]:
        if not isinstance(arguments, dict) or not arguments:
            return []
        out: list[RenderableType] = []
        rest = {k: v for k, v in arguments.items() if k != "sql"}
        sql = arguments.get("sql")
        if isinstance(sql, str):
            out.append(
                _indent(
                    Syntax(
                        cut(sql, 2000),
                        "sql",
                        word_wrap=True,
                        theme="ansi_dark",
                        background_color="default",
                    )
                )
            )
        if rest:
            out.append(_indent(Text(compact(rest), style="dim")))
        return out

    def _result(self, result: dict[str, Any]) -> list[RenderableType]:
        structured = result.get("structuredContent")
        if isinstance(structured, dict) and not result.get("isError"):
            if isinstance(structured.get("rows"), list):
                return [_indent(_rows_result(structured))]
            if "plan" in structured and "estimated_rows" in structured:
                return [_indent(_plan(structured))]
        texts = [
            str(block.get("text", ""))
            for block in result.get("content") or []
            if isinstance(block, dict) and block.get("type") == "text"
        ]
        if texts:
            style = "red" if result.get("isError") else ""
            return [_indent(Text(cut("\n".join(texts)), style=style))]
        return []

    # -- decisions and approvals ------------------------------------------------------------

    def _decision(self, stored: StoredEvent) -> RenderableType:
        ev = stored.event
        data = ev.data
        verdict = str(ev.decision or data.get("decision") or "?")
        line = self._line(
            stored,
            ("◆ ", _DECISION_STYLE.get(verdict, "bold")),
            (verdict.upper(), _DECISION_STYLE.get(verdict, "bold")),
            f" {ev.tool or data.get('tool') or ''}",
        )
        target = "/".join(str(x) for x in (data.get("upstream"), data.get("connection")) if x)
        if target:
            line.append(f" on {target}", style="dim")
        reasons = [str(r) for r in data.get("reasons") or []]
        risks = [str(r) for r in data.get("risks") or []]
        if reasons:
            line.append(f"  because: {', '.join(reasons)}")
        if risks:
            line.append(f"  risks: {', '.join(risks)}", style="yellow")
        if verdict == "review" and data.get("approvers"):
            line.append(
                f"  needs {', '.join(map(str, data['approvers']))} (quorum {data.get('quorum', 1)})"
            )
        if ev.approval_id:
            line.append(f"  approval {ev.approval_id}")
        return line

    def _approval(self, stored: StoredEvent) -> RenderableType:
        ev = stored.event
        approval = ev.data.get("approval") if isinstance(ev.data.get("approval"), dict) else {}
        what = str(ev.data.get("event") or "updated")
        status = str(approval.get("status") or "")
        aid = ev.approval_id or approval.get("id") or "?"
        style = {"deny": "bold red", "allow": "bold green"}.get(str(ev.decision), "bold yellow")
        line = self._line(stored, ("✋ ", style), (f"approval {aid}", style), f" {what}")
        if status and status != what:
            line.append(f" → {status}", style=style)
        if what == "created":
            approvers = ", ".join(map(str, approval.get("approvers") or []))
            if approvers:
                line.append(f": needs {approvers} (quorum {approval.get('quorum', 1)})")
            if approval.get("expires_at"):
                line.append(f", expires {approval['expires_at']}", style="dim")
        decisions = [d for d in approval.get("decisions") or [] if isinstance(d, dict)]
        lines: list[RenderableType] = [line]
        if what in ("decided", "updated") or status in ("approved", "denied"):
            for d in decisions:
                verb = "approved" if d.get("decision") == "approve" else "denied"
                who = Text(f"{verb} by {d.get('approver', '?')}", style="bold")
                if d.get("reason"):
                    who.append(f": {cut(str(d['reason']), 200)}", style="")
                lines.append(_indent(who))
        if approval.get("justification") and what == "created":
            lines.append(_indent(Text(f"justification: {cut(str(approval['justification']))}")))
        return Group(*lines) if len(lines) > 1 else line


def _indent(renderable: RenderableType) -> Padding:
    return Padding(renderable, (0, 0, 0, 13))


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _rows_result(structured: dict[str, Any]) -> RenderableType:
    """A SQL result (`{columns, rows, row_count, truncated}`, plus `status` and
    `affected_rows` for writes): the write's outcome, then the first rows and columns, and
    what was left out."""
    columns = structured.get("columns") or []
    rows = structured.get("rows") or []
    total = structured.get("row_count")
    total = total if isinstance(total, int) else len(rows)
    status = structured.get("status")
    outcome: list[RenderableType] = []
    if status is not None:
        line = Text(str(status), style="bold")
        affected = structured.get("affected_rows")
        if isinstance(affected, int):
            line.append(f" ({_count(affected, 'row')} affected)")
        outcome.append(line)
    width = len(columns) or max((len(r) for r in rows if isinstance(r, list)), default=0)
    if not width:  # a write without RETURNING (or a statement without a result)
        return Group(*outcome) if outcome else Text("no columns, no rows", style="dim")
    shown = min(width, MAX_COLUMNS)
    table = Table(show_header=True, header_style="bold", show_lines=False, pad_edge=False)
    for i in range(shown):
        col = columns[i] if i < len(columns) else f"#{i + 1}"
        if isinstance(col, dict):
            name = str(col.get("name", "?")) + (" (masked)" if col.get("masked") else "")
        else:
            name = str(col)
        table.add_column(name, overflow="ellipsis", max_width=MAX_CELL)
    for row in rows[:MAX_ROWS]:
        cells = (row if isinstance(row, list) else [row])[:shown]
        cells = [*cells, *([""] * (shown - len(cells)))]
        table.add_row(*(cut("NULL" if c is None else _cell(c), MAX_CELL) for c in cells))
    notes = []
    if not rows:
        notes.append("0 rows")
    more = total - min(len(rows), MAX_ROWS)
    if more > 0:
        notes.append(f"… {_count(more, 'more row')}")
    if width > shown:
        notes.append(f"… {_count(width - shown, 'more column')}")
    if structured.get("truncated"):
        notes.append(f"truncated at max_rows ({_count(total, 'row')} returned)")
    if notes:
        return Group(*outcome, table, Text(", ".join(notes), style="dim"))
    return Group(*outcome, table)


def _cell(value: Any) -> str:
    # JSON cells (json/jsonb columns, arrays, records) as compact JSON, not Python reprs
    return value if isinstance(value, str) else compact(value, MAX_CELL)


def _plan(structured: dict[str, Any]) -> RenderableType:
    """An `sql_explain` result: the planner's estimate, then the plan's first nodes."""
    head = Text("plan", style="bold")
    head.append(f": estimated {structured.get('estimated_rows')} rows")
    cost = structured.get("estimated_cost")
    if isinstance(cost, int | float):
        head.append(f", cost {cost:g}")
    nodes: list[str] = []
    plan = structured.get("plan")
    top = (
        plan[0].get("Plan")
        if isinstance(plan, list) and plan and isinstance(plan[0], dict)
        else None
    )
    stack: list[tuple[Any, int]] = [(top, 0)]
    total = 0
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict):
            continue
        total += 1
        if len(nodes) < MAX_PLAN_NODES:
            name = str(node.get("Node Type", "?"))
            if node.get("Relation Name"):
                name += f" on {node['Relation Name']}"
            rows = node.get("Plan Rows")
            nodes.append("  " * depth + name + (f"  (rows {rows})" if rows is not None else ""))
        children = node.get("Plans")
        if isinstance(children, list):
            stack.extend((child, depth + 1) for child in reversed(children))
    lines: list[RenderableType] = [head]
    if nodes:
        lines.append(Text("\n".join(nodes), style="dim"))
    if total > len(nodes):
        lines.append(Text(f"… {_count(total - len(nodes), 'more node')}", style="dim"))
    return Group(*lines)
