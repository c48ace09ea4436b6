"""`mcp-gate approvals`: a Textual app for approvers (DESIGN §5).

A live queue of approval requests (pending first, newest first), a detail pane for the selected
one (the SQL exactly as it will run, pretty-printed beside it, the matched rules, tables,
estimated rows, justification, approvers and votes, a ticking expiry), and keys to approve,
deny with a reason, filter and get help. It subscribes to the admin API's event stream first
and lists second (so nothing falls between the two), and on `lagged`, a dropped connection or
a restarted gateway it reconnects on its own with backoff, re-listing each time.

Everything on the network runs in Textual workers on the app's event loop (httpx async), so
the UI never waits on the gateway.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import httpx
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Input, Static

from mcp_gate.approvals.model import ApprovalRequest, Status
from mcp_gate.approvals.service import MAX_REASON

from . import view
from .client import AdminClient, Refused

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0

HELP = """\
[b]mcp-gate approvals[/b]: calls the gateway holds for a human decision.

  [b]↑ ↓[/b] or [b]j k[/b]   select a request
  [b]a[/b]           approve the selected request (it runs once the quorum is reached)
  [b]d[/b]           deny it: type a reason (required; the agent sees it), Enter sends,
              Escape cancels
  [b]/[/b]           filter by requester, target, SQL, status or id; Enter keeps the filter,
              Escape clears it
  [b]Tab[/b]         switch between the queue and the details (arrows scroll them)
  [b]?[/b]           this help
  [b]q[/b]           quit

Only members of a request's approver groups may decide it, and nobody decides their own.
The SQL pane shows the text exactly as it will run; characters that could hide part of it
(control codes, bidirectional overrides, zero-width characters) appear as ⟨U+XXXX⟩.
The queue updates live; if the gateway goes away the app reconnects by itself.

Press Escape, q or ? to close this help."""


class DenyScreen(ModalScreen[str | None]):
    """Asks for the reason of a denial; dismisses with the reason, or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, approval: ApprovalRequest) -> None:
        super().__init__()
        self.approval = approval

    def compose(self) -> ComposeResult:
        what = Text("Deny ", style="bold")
        what.append(self.approval.id, style="bold")
        what.append(f" from {view.one_line(self.approval.principal.subject, 40)}")
        what.append(f" ({view.one_line(view.kind_of(self.approval), 20)} on ")
        what.append(f"{view.one_line(self.approval.target, 30)})?")
        with Vertical(id="dialog"):
            yield Static(what)
            yield Input(
                placeholder="reason (required: the agent sees it)",
                max_length=MAX_REASON,
                id="reason",
            )
            yield Static(Text("Enter denies, Escape cancels", style="dim"), id="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter: deny with the reason typed, unless it is empty."""
        event.stop()
        reason = event.value.strip()
        if not reason:
            self.query_one("#hint", Static).update(
                Text("A reason is required to deny (Escape cancels).", style="bold red")
            )
            return
        self.dismiss(reason)

    def action_cancel(self) -> None:
        """Escape: nothing is sent."""
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """The keys and what they do."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("q", "close", "Close", show=False),
        Binding("question_mark", "close", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(HELP, id="help")

    def action_close(self) -> None:
        """Back to the queue."""
        self.dismiss(None)


class ApprovalsApp(App[None]):
    """The approver's live queue over one gateway's admin API (module docstring).

    For tests and benchmarks: `approvals` is what the app knows, `notices` every notification
    shown (severity, text), `bells` how often it rang, `connection` the stream's state
    (`connecting`, `live`, `reconnecting`), and `shown_at[id]` the wall-clock time
    (`time.time()`) a request first entered the queue table: `shown_at[id] - created_at` is
    how long a new request took to reach this approver.
    """

    TITLE = "mcp-gate approvals"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #status { height: 1; padding: 0 1; background: $boost; }
    #queue { height: auto; max-height: 45%; min-height: 4; }
    #detail { height: 1fr; border-top: solid $primary; padding: 0 1; }
    #filter { dock: bottom; display: none; }
    #filter.shown { display: block; }
    DenyScreen, HelpScreen { align: center middle; }
    DenyScreen #dialog { width: 80; height: auto; border: thick $error; padding: 1 2;
        background: $surface; }
    HelpScreen #dialog { width: 100; height: auto; border: thick $primary; padding: 1 2;
        background: $surface; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "approve", "Approve"),
        Binding("d", "deny", "Deny"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("j", "cursor(1)", "Down", show=False),
        Binding("k", "cursor(-1)", "Up", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, base_url: str, token: str) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.client = AdminClient(self.base_url, token)
        self.approvals: dict[str, ApprovalRequest] = {}
        self.shown_at: dict[str, float] = {}
        self.notices: list[tuple[SeverityLevel, str]] = []
        self.bells = 0
        self.connection = "connecting"
        self.filter_text = ""
        self.selected_id: str | None = None
        #: Who the token says we are (from the event stream's `ready`).
        self.subject: str | None = None
        self._listed_once = False
        self._status_message = ""
        self._detail_id: str | None = None
        self._detail_version: ApprovalRequest | None = None

    # -- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="status")
        table: DataTable[Text] = DataTable(id="queue", cursor_type="row", zebra_stripes=True)
        yield table
        with VerticalScroll(id="detail"):
            yield Static(id="summary")
            yield Static(id="sql")
        yield Input(placeholder="filter: requester, target, SQL, status…", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        """Columns, the ticking clock, and the live subscription."""
        self.sub_title = self.base_url
        table = self._table()
        for name in view.COLUMNS:
            table.add_column(name.title(), key=name)
        table.focus()
        self._set_connection("connecting", f"connecting to {self.base_url}…")
        self._show_detail()
        self.set_interval(1.0, self._tick)
        self._live()

    async def on_unmount(self) -> None:
        """Close the HTTP connections."""
        await self.client.aclose()

    def _table(self) -> DataTable[Text]:
        return self.query_one("#queue", DataTable)

    # -- what the user sees -------------------------------------------------------------

    def _notice(self, message: str, severity: SeverityLevel = "information") -> None:
        self.notices.append((severity, message))
        self.notify(message, severity=severity, markup=False, timeout=8)

    def _ring(self) -> None:
        self.bells += 1
        self.bell()

    def _set_connection(self, state: str, message: str) -> None:
        self.connection = state
        style = {"live": "green", "connecting": "yellow"}.get(state, "bold red")
        mark = "●" if state == "live" else "○"
        line = Text(f"{mark} {message}", style=style)
        pending = sum(1 for a in self.approvals.values() if a.status is Status.PENDING)
        line.append(f"   {pending} pending", style="bold")
        if self.filter_text:
            line.append(f"   filter: {view.one_line(self.filter_text, 40)}", style="cyan")
        self.query_one("#status", Static).update(line)
        self._status_message = message

    def _refresh_status(self) -> None:
        self._set_connection(self.connection, self._status_message)

    def _visible(self) -> list[ApprovalRequest]:
        found = [a for a in self.approvals.values() if view.matches(a, self.filter_text)]
        return sorted(found, key=view.sort_key)

    def _refresh_queue(self) -> None:
        """Rebuild the table from `approvals`, keeping the selected request selected."""
        table = self._table()
        keep = self.selected_id
        now = time.time()
        table.clear()
        rows = self._visible()
        for approval in rows:
            table.add_row(*view.row_of(approval, now).cells(), key=approval.id)
            self.shown_at.setdefault(approval.id, now)
        ids = [a.id for a in rows]
        if keep in ids:
            table.move_cursor(row=ids.index(keep), animate=False)
        self.selected_id = ids[table.cursor_row] if ids else None
        self._refresh_status()
        self._show_detail()

    def _show_detail(self) -> None:
        approval = self.approvals.get(self.selected_id or "")
        summary = self.query_one("#summary", Static)
        sql = self.query_one("#sql", Static)
        if approval is None:
            empty = "No request matches the filter." if self.filter_text else "No requests."
            summary.update(Text(empty, style="dim"))
            sql.update("")
            self._detail_id, self._detail_version = None, None
            return
        summary.update(view.summary(approval, time.time(), self.subject))
        # The SQL pane only changes with the request; the summary ticks every second.
        if self._detail_id != approval.id or self._detail_version != approval:
            sql.update(view.sql_view(approval))
            self._detail_id, self._detail_version = approval.id, approval

    def _tick(self) -> None:
        table = self._table()
        now = time.time()
        for approval in self._visible():
            if approval.id in table.rows:
                table.update_cell(approval.id, "age", view.row_of(approval, now).age)
        if self.selected_id in self.approvals:
            self.query_one("#summary", Static).update(
                view.summary(self.approvals[self.selected_id], now, self.subject)
            )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Selecting a row shows its request.

        The table's cursor now, not the event's row, says which: a rebuild posts events for
        intermediate rows, and a key pressed between two of them must act on the request
        the pane shows.
        """
        table = self._table()
        if 0 <= table.cursor_row < table.row_count:
            self.selected_id = table.ordered_rows[table.cursor_row].key.value
            self._show_detail()

    # -- keys -----------------------------------------------------------------------------

    def action_cursor(self, step: int) -> None:
        """`j` / `k`: the same as the arrow keys."""
        table = self._table()
        if step > 0:
            table.action_cursor_down()
        else:
            table.action_cursor_up()

    def _selected(self) -> ApprovalRequest | None:
        approval = self.approvals.get(self.selected_id or "")
        if approval is None:
            self._notice("No request selected.", "warning")
        return approval

    def action_approve(self) -> None:
        """`a`: approve the selected request."""
        approval = self._selected()
        if approval is not None:
            self._decide(approval.id, True, None)

    def action_deny(self) -> None:
        """`d`: ask for a reason, then deny (Escape or an empty reason sends nothing)."""
        approval = self._selected()
        if approval is None:
            return

        def denied(reason: str | None) -> None:
            if reason:
                self._decide(approval.id, False, reason)
            else:
                self._notice(f"Not denied: {approval.id} was left as it is.")

        self.push_screen(DenyScreen(approval), denied)

    def action_help(self) -> None:
        """`?`: the keys."""
        self.push_screen(HelpScreen())

    def action_filter(self) -> None:
        """`/`: type a filter; the queue narrows as you type."""
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def action_clear_filter(self) -> None:
        """Escape: drop the filter."""
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        self._table().focus()
        if self.filter_text:
            self.filter_text = ""
            self._refresh_queue()

    def on_input_changed(self, event: Input.Changed) -> None:
        """The filter follows what is typed."""
        if event.input.id == "filter":
            self.filter_text = event.value
            self._refresh_queue()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the filter: keep it and go back to the queue."""
        if event.input.id == "filter":
            if not event.value.strip():
                event.input.remove_class("shown")
            self._table().focus()

    # -- talking to the gateway -------------------------------------------------------------

    @work(group="decide")
    async def _decide(self, approval_id: str, approve: bool, reason: str | None) -> None:
        verb = "approve" if approve else "deny"
        try:
            after = await self.client.decide(approval_id, approve, reason)
        except Refused as exc:
            what = {
                401: "Token refused",
                403: "Not allowed",
                404: "No such request",
                409: "Already settled",
            }.get(exc.status, "Refused")
            self._notice(f"{what} ({exc.status}): {exc.message}", "error")
            return
        except httpx.HTTPError as exc:
            # Refused before connecting means nothing was sent; later, the vote may be on
            # record: the event stream will show it once the gateway is back.
            outcome = (
                "nothing was sent"
                if isinstance(exc, httpx.ConnectError)
                else "it may have been recorded: the queue shows it once the gateway answers"
            )
            self._notice(
                f"Could not {verb} {approval_id}: cannot reach the gateway "
                f"({type(exc).__name__}); {outcome}.",
                "error",
            )
            return
        except (ValueError, KeyError, TypeError):
            self._notice(f"The gateway's answer to {verb} {approval_id} was unreadable.", "error")
            return
        self._upsert(after)
        if after.status is Status.PENDING:
            self._notice(
                f"Vote recorded on {after.id}: {len(after.approved_by)} of {after.quorum} "
                "approvals; still pending."
            )
        else:
            self._notice(f"{after.id} {after.status}.")

    def _upsert(self, approval: ApprovalRequest) -> bool:
        """Take `approval` unless what we hold is newer; True if the queue changed."""
        held = self.approvals.get(approval.id)
        if held is not None and _freshness(held) > _freshness(approval):
            return False
        if held == approval:
            return False
        self.approvals[approval.id] = approval
        self._refresh_queue()
        return True

    def _apply(self, data: object) -> None:
        try:
            kind = data["event"]  # type: ignore[index]
            approval = ApprovalRequest.from_json(data["approval"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            self._notice("The gateway sent an event this app cannot read; ignored.", "warning")
            return
        new = approval.id not in self.approvals
        changed = self._upsert(approval)
        if changed and new and kind == "created" and approval.status is Status.PENDING:
            self._announce([approval])

    def _announce(self, arrived: list[ApprovalRequest]) -> None:
        if len(arrived) == 1:
            a = arrived[0]
            self._notice(
                f"New request {a.id} from {view.one_line(a.principal.subject, 30)}: "
                f"{view.one_line(view.kind_of(a), 16)} on {view.one_line(a.target, 30)}",
                "warning",
            )
        else:
            self._notice(f"{len(arrived)} new requests", "warning")
        self._ring()

    async def _relist(self) -> None:
        listed = await self.client.list()
        before = set(self.approvals)
        self.approvals = {a.id: a for a in listed}
        arrived = [a for a in listed if a.id not in before and a.status is Status.PENDING]
        if self._listed_once and arrived:
            self._announce(arrived)
        self._listed_once = True
        self._refresh_queue()

    @work(group="live", exclusive=True)
    async def _live(self) -> None:
        """Subscribe, list, follow; on any failure wait (backoff) and start again."""
        delay = BACKOFF_MIN
        while True:
            try:
                async for event in self.client.events():
                    if event.event == "ready":
                        if isinstance(event.data, dict):
                            self.subject = event.data.get("subject")
                        await self._relist()
                        self._set_connection("live", f"live: {self.base_url}")
                        delay = BACKOFF_MIN
                    elif event.event == "approval":
                        self._apply(event.data)
                    elif event.event == "lagged":
                        break
                problem = "the event stream ended"
            except Refused as exc:
                problem = f"the gateway refused ({exc})"
                delay = max(delay, BACKOFF_MAX / 2)
            except (httpx.HTTPError, OSError) as exc:
                problem = f"cannot reach the gateway ({type(exc).__name__})"
            except (ValueError, KeyError, TypeError):  # a 200 that is not the admin API's JSON
                problem = "the gateway's answer could not be read"
            self._set_connection("reconnecting", f"reconnecting… {problem}; retry in {delay:g}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)


_RANK = {Status.PENDING: 0, Status.APPROVED: 1, Status.DENIED: 1, Status.EXPIRED: 1,
         Status.WITHDRAWN: 1, Status.EXECUTED: 2}  # fmt: skip


def _freshness(approval: ApprovalRequest) -> tuple[int, int]:
    """Later states outrank earlier ones, so a stale event never undoes a newer listing."""
    return (_RANK[approval.status], len(approval.decisions))
