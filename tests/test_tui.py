"""The approvals TUI (`mcp-gate approvals`): what it shows, headless with Textual's pilot
against a real gateway (real PostgreSQL, real SDK clients making held calls, real tokens),
and the real command in a pseudo-terminal read through the pyte terminal emulator."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import secrets
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pyte
import pytest
from mcp import types
from rich.console import Console, RenderableType
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from gateway_helpers import MCP_GATE, Gateway, text_of, wait_for_port
from mcp_gate.approvals.model import ApprovalRequest, Status
from mcp_gate.calls import Principal
from mcp_gate.tui import commands as tui_commands
from mcp_gate.tui import view
from mcp_gate.tui.app import ApprovalsApp, DenyScreen, HelpScreen
from shop_helpers import sample_policy, sample_shop, shop_gateway

SIZE = (160, 50)


def render(renderable: RenderableType, width: int = 160) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def request(sql: str | None = "DELETE FROM orders WHERE id = 1", **kw: Any) -> ApprovalRequest:
    values: dict[str, Any] = {
        "id": "ap_" + secrets.token_hex(8),
        "status": Status.PENDING,
        "principal": Principal("agent", frozenset({"developers"})),
        "target": "demo",
        "tool": "sql_query",
        "arguments_digest": "sha256:0",
        "policy_version": "v1",
        "approvers": ("dba",),
        "quorum": 1,
        "created_at": time.time(),
        "expires_at": time.time() + 3600,
        "sql": sql,
        "reasons": ("writes need a DBA",),
    }
    values.update(kw)
    return ApprovalRequest(**values)


# -- what is shown (no gateway) -----------------------------------------------------------


def test_hidden_characters_are_made_visible() -> None:
    """Control codes and bidi overrides could hide what will run: they are shown as marks."""
    sql = "DELETE FROM orders WHERE id = 1 -- \u202e1 = di EREHW\x1b[2K\r\u200b;\n\tAND true"
    shown = view.visible(sql)
    for raw in ("\u202e", "\x1b", "\r", "\u200b"):
        assert raw not in shown
    assert "⟨U+202E⟩" in shown and "⟨U+001B⟩" in shown and "⟨U+000D⟩" in shown
    assert "\n\tAND true" in shown  # newlines and tabs stay as they are
    assert view.visible("SELECT 'é 日本'") == "SELECT 'é 日本'"
    pane = render(view.sql_view(request(sql)))
    assert "⟨U+202E⟩" in pane and "\x1b" not in pane and "\u202e" not in pane
    row = view.row_of(request(sql, principal=Principal("ev\x1bil", frozenset())), time.time())
    assert "\x1b" not in row.requester.plain and "⟨U+001B⟩" in row.requester.plain


def test_sql_pane_always_shows_the_original_text() -> None:
    """Pretty-printing drops comments and reformats: the exact text is always there too."""
    sql = "delete from orders /* keep: ticket 7 */ where id in (1,2)"
    pane = render(view.sql_view(request(sql)))
    assert "SQL, pretty-printed" in pane and "SQL exactly as it will run" in pane
    assert pane.index("exactly as it will run") < pane.index("pretty-printed")  # what runs first
    assert "DELETE FROM orders" in pane  # pglast's pretty form
    assert sql in pane  # and the original, comment included
    broken = "DELETE FROM orders WHERE id = = 1"
    pane = render(view.sql_view(request(broken)))
    assert view.pretty_sql(broken) is None
    assert broken in pane and "cannot pretty-print" in pane and "pretty-printed" not in pane
    plain = "SELECT 1"
    assert "pretty-printed" not in render(view.sql_view(request(plain)))
    assert "no SQL" in render(view.sql_view(request(None, tool="restart_service")))


def test_summary_kind_risk_and_order() -> None:
    now = time.time()
    a = request(
        "UPDATE customers SET email = 'x' WHERE id IN (SELECT customer_id FROM orders)",
        justification="ticket 42",
        estimated_rows=1234,
        expires_at=now + 125,
    )
    text = render(view.summary(a, now))
    for part in (a.id, "ticket 42", "1,234", "writes public.customers", "reads public.orders",
                 "quorum 1, 0 approved", "expires in 2m 05s", "writes need a DBA"):  # fmt: skip
        assert part in text, part
    assert view.kind_of(a) == "update"
    assert view.kind_of(request(None, tool="restart_service")) == "restart_service"
    assert "unknown" in render(view.summary(request(), now))  # no estimate yet
    old_pending = request(created_at=now - 100)
    new_pending = request(created_at=now - 10)
    newest_done = request(created_at=now, status=Status.DENIED, decided_at=now)
    ordered = sorted([newest_done, old_pending, new_pending], key=view.sort_key)
    assert ordered == [new_pending, old_pending, newest_done]
    assert view.matches(a, "CUSTOMERS") and view.matches(a, "pending")
    assert view.matches(a, "agent") and view.matches(a, "demo") and not view.matches(a, "zzz")
    assert view.duration(59) == "59s" and view.duration(3 * 86400 + 7200) == "3d 2h"


@pytest.mark.anyio
async def test_no_gateway_is_not_a_crash() -> None:
    """Nothing listens: "reconnecting…" and the keys still answer; nothing to decide."""
    from mcp_gate.demo.embedded import free_port

    app = ApprovalsApp(f"http://127.0.0.1:{free_port()}", "not-a-token")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connection == "reconnecting", "reconnecting")
        assert "cannot reach the gateway" in shown(app, "#status")
        await pilot.press("a", "d")
        assert notices(app).count("No request selected.") == 2
        assert not isinstance(app.screen, DenyScreen)
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None, "the app to quit")


def test_missing_token_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no demo here
    monkeypatch.delenv("MCP_GATE_TOKEN", raising=False)
    err = Console(file=io.StringIO(), width=200)
    config = tmp_path / "mcp-gate.toml"
    assert tui_commands.run(gateway="http://127.0.0.1:9", token=None, config=config, err=err) == 2
    assert "found no approver token" in err.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_command_needs_a_gateway_and_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MCP_GATE_TOKEN"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MCP_GATE, "approvals", *args], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    bare = cli()
    assert bare.returncode == 2 and "no gateway URL and no approver token" in bare.stderr
    # Options given to the group reach the script commands too.
    grouped = cli("--gateway", "http://127.0.0.1:9", "--token", "x", "list")
    assert grouped.returncode == 1 and "cannot reach http://127.0.0.1:9" in grouped.stderr
    helped = cli("--help")
    assert helped.returncode == 0 and "TUI" in helped.stdout and "list" in helped.stdout


# -- against a real gateway -----------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("tui")
    with (
        sample_shop(pg_dsn, "test_tui") as shop,
        shop_gateway(shop, folder, sample_policy(wait='"30s"')) as gw,
    ):
        first = gw.process
        try:
            yield gw
        finally:
            if gw.process is not first and gw.process is not None:
                stop(gw.process)  # restarted by a test


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def base_of(gateway: Gateway) -> str:
    return gateway.url.rsplit("/mcp", 1)[0]


def admin(gateway: Gateway, token: str, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.request(
        method, base_of(gateway) + "/admin/v1" + path, headers=headers, timeout=30, **kw
    )


async def until(pilot: Pilot[Any], condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def select(pilot: Pilot[Any], app: ApprovalsApp, approval_id: str) -> None:
    """Move the cursor up (`k`) to `approval_id`: arrivals never move the selection."""
    for _ in range(app.query_one("#queue", DataTable).row_count):
        if app.selected_id == approval_id:
            return
        await pilot.press("k")
    assert app.selected_id == approval_id


def pending(app: ApprovalsApp, sql: str) -> ApprovalRequest | None:
    return next(
        (a for a in app.approvals.values() if a.sql == sql and a.status is Status.PENDING), None
    )


def shown(app: ApprovalsApp, widget: str) -> str:
    return render(app.query_one(widget, Static).content)


def notices(app: ApprovalsApp) -> str:
    return "\n".join(text for _, text in app.notices)


async def justify(ctx: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"justification": "ticket 42"})


@pytest.mark.slow
@pytest.mark.anyio
async def test_live_queue_approve_and_deny(gateway: Gateway) -> None:
    agent = gateway.token("agent", "developers")
    alice = gateway.token("alice", "dba")
    results: dict[str, types.CallToolResult] = {}
    app = ApprovalsApp(base_of(gateway), alice)
    async with (
        app.run_test(size=SIZE) as pilot,
        gateway.client(agent, "legacy", elicitation_callback=justify) as client,
        anyio.create_task_group() as tg,
    ):
        await until(pilot, lambda: app.connection == "live", "the event stream")

        async def call(key: str, sql: str) -> None:
            results[key] = await client.call_tool("sql_query", {"sql": sql})

        # A request that arrives while the app is open: a notice, the bell, on top, selected.
        sql = "DELETE FROM orders WHERE status = 'cancelled' AND id % 11 = 1"
        bells = app.bells
        tg.start_soon(call, "approved", sql)
        await until(pilot, lambda: (a := pending(app, sql)) and a.justification, "the request")
        held = pending(app, sql)
        assert held is not None
        assert app.bells == bells + 1 and f"New request {held.id} from agent" in notices(app)
        assert held.id in app.shown_at
        table = app.query_one("#queue", DataTable)
        assert table.get_row_index(held.id) == 0 and app.selected_id == held.id
        row = " ".join(c.plain for c in table.get_row(held.id))
        assert "agent" in row and "delete" in row and "writes need a DBA" in row
        assert "pending" in row
        sql_pane, summary = shown(app, "#sql"), shown(app, "#summary")
        assert sql in sql_pane and "WHERE status = 'cancelled'" in sql_pane
        for part in ("ticket 42", "writes public.orders", "dba", "quorum 1", "expires in"):
            assert part in summary, part

        await pilot.press("a")
        await until(pilot, lambda: "approved" in results, "the approved call's result")
        assert not results["approved"].is_error, text_of(results["approved"])
        assert results["approved"].structured_content["affected_rows"] >= 0
        await until(
            pilot,
            lambda: app.approvals[held.id].status in (Status.APPROVED, Status.EXECUTED),
            "the approval to show",
        )
        assert f"{held.id} approved" in notices(app)

        # Deny: an empty reason and Escape send nothing; a reason and Enter deny.
        sql2 = "UPDATE orders SET status = 'paid' WHERE id = 3"
        tg.start_soon(call, "denied", sql2)
        await until(pilot, lambda: pending(app, sql2), "the second request")
        second = pending(app, sql2)
        assert second is not None and table.get_row_index(second.id) == 0
        # An arrival never moves the selection (a key pressed just then must not decide
        # another request): the settled one stays selected until the approver moves.
        assert app.selected_id == held.id
        await pilot.press("k")
        assert app.selected_id == second.id
        await pilot.press("d")
        assert isinstance(app.screen, DenyScreen)
        await pilot.press("enter")
        assert isinstance(app.screen, DenyScreen)  # no reason: still asking
        await pilot.press("escape")
        assert not isinstance(app.screen, DenyScreen)
        await pilot.pause(0.3)
        still = admin(gateway, alice, "GET", f"/approvals/{second.id}").json()
        assert still["status"] == "pending" and not still["decisions"]
        await pilot.press("j", "k")  # j/k move and come back
        assert app.selected_id == second.id
        await pilot.press("d", *"not today", "enter")
        await until(pilot, lambda: "denied" in results, "the denied call's result")
        assert results["denied"].is_error
        assert "denied by alice: not today" in text_of(results["denied"])
        await until(pilot, lambda: app.approvals[second.id].status is Status.DENIED, "denial")
        assert "not today" in shown(app, "#summary")

        # Deciding a settled request again: 409, shown as such.
        await pilot.press("a")
        await until(pilot, lambda: "(409)" in notices(app), "the 409 notice")
        assert "Already settled (409)" in notices(app)


@pytest.mark.slow
@pytest.mark.anyio
async def test_not_an_approver_filter_help_quit(gateway: Gateway) -> None:
    agent = gateway.token("agent", "developers")
    alice = gateway.token("alice", "dba")
    sql = "UPDATE orders SET status = 'paid' WHERE id = 4"
    results: dict[str, types.CallToolResult] = {}
    app = ApprovalsApp(base_of(gateway), agent)  # the requester: sees it, may not decide it
    async with (
        app.run_test(size=SIZE) as pilot,
        gateway.client(agent, "legacy") as client,
        anyio.create_task_group() as tg,
    ):
        await until(pilot, lambda: app.connection == "live", "the event stream")

        async def call() -> None:
            results["call"] = await client.call_tool("sql_query", {"sql": sql})

        tg.start_soon(call)
        await until(pilot, lambda: pending(app, sql), "the request")
        held = pending(app, sql)
        assert held is not None
        await select(pilot, app, held.id)
        await pilot.press("a")
        await until(pilot, lambda: "(403)" in notices(app), "the 403 notice")
        assert "Not allowed (403): nobody may decide their own request" in notices(app)
        assert "(you: nobody may decide their own request)" in shown(app, "#summary")
        assert admin(gateway, alice, "GET", f"/approvals/{held.id}").json()["status"] == "pending"

        table = app.query_one("#queue", DataTable)
        everything = table.row_count
        await pilot.press("/", *"no-such-thing")
        assert table.row_count == 0 and "No request matches" in shown(app, "#summary")
        await pilot.press("escape")
        assert table.row_count == everything and app.filter_text == ""
        await pilot.press("/", *"id = 4", "enter")
        assert table.row_count >= 1 and app.selected_id == held.id
        assert all(view.matches(app.approvals[k.value], "id = 4") for k in table.rows)
        assert app.focused is table  # Enter returns to the queue, keeping the filter
        await pilot.press("escape")

        await pilot.press("?")
        assert isinstance(app.screen, HelpScreen)
        assert "approve the selected request" in render(app.screen.query_one("#help").content)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)

        denied = admin(gateway, alice, "POST", f"/approvals/{held.id}/deny", json={"reason": "no"})
        assert denied.status_code == 200
        await until(pilot, lambda: "call" in results, "the call to end")
        await until(pilot, lambda: app.approvals[held.id].status is Status.DENIED, "the denial")
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None, "the app to quit")
    assert app.return_code == 0


@pytest.mark.slow
@pytest.mark.anyio
async def test_refused_token_is_shown_and_retried(gateway: Gateway) -> None:
    token = gateway.token("alice", "dba")
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[::-1]}"  # a signature that does not verify
    app = ApprovalsApp(base_of(gateway), forged)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connection == "reconnecting", "the refusal")
        status = shown(app, "#status")
        assert "reconnecting… the gateway refused (401:" in status and forged not in status
        assert not app.approvals


@pytest.mark.slow
@pytest.mark.anyio
async def test_reconnects_when_the_gateway_restarts(gateway: Gateway) -> None:
    """The gateway goes away: "reconnecting…", no crash; it comes back: live again, re-listed,
    and new requests arrive over the new stream."""
    agent = gateway.token("agent", "developers")
    alice = gateway.token("alice", "dba")
    app = ApprovalsApp(base_of(gateway), alice)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connection == "live", "the event stream")
        assert gateway.process is not None
        await anyio.to_thread.run_sync(stop, gateway.process)
        await until(pilot, lambda: app.connection == "reconnecting", "reconnecting")
        assert "reconnecting…" in shown(app, "#status")
        await pilot.pause(1.0)  # a few failed attempts while it is down
        assert app.return_code is None and app.connection == "reconnecting"
        port = int(base_of(gateway).rsplit(":", 1)[1])
        with (gateway.folder / "gateway.log").open("ab") as log:
            gateway.process = subprocess.Popen(
                [*MCP_GATE, "serve", "--config", str(gateway.config)],
                env=gateway.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        await anyio.to_thread.run_sync(wait_for_port, port, gateway.process)
        await until(pilot, lambda: app.connection == "live", "the stream to come back")

        sql = "UPDATE orders SET status = 'paid' WHERE id = 5"
        async with gateway.client(agent, "legacy") as client, anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "sql_query", {"sql": sql})
            await until(pilot, lambda: pending(app, sql), "a request after the restart")
            held = pending(app, sql)
            assert held is not None and held.id in app.shown_at
            await select(pilot, app, held.id)
            await pilot.press("a")
            await until(pilot, lambda: app.approvals[held.id].status is not Status.PENDING, "ok")


# -- the real command in a terminal --------------------------------------------------------


class Terminal:
    """A child process on a pseudo-terminal, its output fed to a pyte screen."""

    def __init__(self, argv: list[str], env: dict[str, str], size: tuple[int, int]) -> None:
        columns, lines = size
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)
        self.lock = threading.Lock()
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self.master = master
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            env={**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(lines)},
        )  # fmt: skip
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            with self.lock:
                self.stream.feed(data)

    def text(self) -> str:
        with self.lock:
            return "\n".join(self.screen.display)

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        with contextlib.suppress(OSError):
            os.close(self.master)


async def wait_screen(term: Terminal, needle: str) -> None:
    deadline = time.monotonic() + 30
    while needle not in term.text():
        if time.monotonic() > deadline or term.process.poll() is not None:
            raise AssertionError(f"{needle!r} never appeared on the screen:\n{term.text()}")
        await anyio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.anyio
async def test_real_command_in_a_terminal(gateway: Gateway) -> None:
    """`mcp-gate approvals` in a pty: the pending request is on screen, `a` approves it."""
    agent = gateway.token("agent", "developers")
    alice = gateway.token("alice", "dba")
    sql = "UPDATE orders SET status = 'paid' WHERE id = 6 RETURNING id"
    results: dict[str, types.CallToolResult] = {}
    async with gateway.client(agent, "legacy") as client, anyio.create_task_group() as tg:

        async def call() -> None:
            results["call"] = await client.call_tool("sql_query", {"sql": sql})

        tg.start_soon(call)
        held = None
        for _ in range(200):
            listed = admin(gateway, alice, "GET", "/approvals?status=pending").json()
            held = next((a for a in listed["approvals"] if a["sql"] == sql), None)
            if held:
                break
            await anyio.sleep(0.05)
        assert held is not None
        argv = [*MCP_GATE, "approvals", "--gateway", base_of(gateway), "--token", alice]
        term = Terminal(argv, gateway.env, SIZE)
        try:
            await wait_screen(term, held["id"])  # selected: its detail pane names it
            assert "id = 6" in term.text() and "pending" in term.text()
            term.send(b"a")
            for _ in range(200):
                state = admin(gateway, alice, "GET", f"/approvals/{held['id']}").json()
                if state["status"] != "pending":
                    break
                await anyio.sleep(0.05)
            assert state["status"] in ("approved", "executed")
            assert state["decisions"][0]["approver"] == "alice"
            await wait_screen(term, "approved")
            term.send(b"q")
            code = await anyio.to_thread.run_sync(lambda: term.process.wait(15))
            assert code == 0
        finally:
            term.close()
    assert not results["call"].is_error, text_of(results["call"])
    assert results["call"].structured_content["rows"] == [[6]]
