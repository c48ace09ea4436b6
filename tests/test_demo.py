"""`mcp-gate demo` as a new user runs it: start, connect with the printed token, list tables,
run a select, see a DELETE refused with its rule, Ctrl-C, and nothing left behind but the
recording (no PostgreSQL, token or key), which `sessions list` and `audit verify` still read.

Then the audit side (issue 6, "Done when"): after a demo session with a masked read, a refused
DELETE and an approved one, `sessions list`, `replay`, `audit export` and `audit verify` run
from the demo's folder without `--config`, and `audit verify` fails once a row is edited.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from approval_helpers import decide_when_pending
from gateway_helpers import MCP_GATE, Gateway, text_of
from mcp_gate.demo.embedded import free_port
from mcp_gate.demo.run import choose_port, keep_recording
from mcp_gate.gateway.serve import bind_socket

pytestmark = pytest.mark.slow


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return
        if process.poll() is not None:
            raise RuntimeError(f"demo exited with {process.returncode}")
        time.sleep(0.2)
    raise TimeoutError("the demo did not become ready")


async def use_the_gateway(url: str, token: str, mode: str) -> list[str]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    seen = []
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as c:
        tables = await c.call_tool("sql_list_tables", {})
        seen.append(text_of(tables))
        rows = await c.call_tool(
            "sql_query", {"sql": "SELECT id, total FROM orders ORDER BY total DESC LIMIT 5"}
        )
        assert not rows.is_error and rows.structured_content["row_count"] == 5
        refused = await c.call_tool("sql_query", {"sql": "DELETE FROM orders"})
        assert refused.is_error
        seen.append(text_of(refused))
    return seen


def start_demo(cwd: Path, port: int) -> subprocess.Popen[str]:
    """`mcp-gate demo` in `cwd`, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "mcp_gate", "demo", "--port", str(port)],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_end_to_end(tmp_path: Path, stop: signal.Signals) -> None:
    port = free_port()
    process = start_demo(tmp_path, port)
    tokens = tmp_path / ".mcp-gate-demo" / "tokens.json"
    try:
        wait_for(tokens, process)
        state = json.loads(tokens.read_text())
        assert state["url"] == f"http://127.0.0.1:{port}/mcp"
        for mode in ("legacy", "auto"):
            tables, refusal = anyio.run(use_the_gateway, state["url"], state["agent"], mode)
            assert "public.customers" in tables and "public.orders" in tables
            assert 'denied by policy rule "never unbounded"' in refusal
    finally:
        process.send_signal(stop)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    for expected in (
        f"http://127.0.0.1:{port}/mcp",
        "claude mcp add --transport http mcp-gate",
        '"mcpServers"',
        '"servers"',
        "demo stopped and cleaned up",
        "The recording stays in",
    ):
        assert expected in output
    assert state["agent"] in output  # printed whole, on one line, ready to paste
    assert_only_the_recording_stays(tmp_path / ".mcp-gate-demo", [state["agent"]])
    listed = gate(tmp_path, "sessions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)["sessions"]
    assert len(sessions) >= 2 and all(s["ended"] is not None for s in sessions)
    assert {s["subject"] for s in sessions} == {"agent"}
    verified = gate(tmp_path, "audit", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("ok:"), verified.stdout
    pg_dir = next(line for line in output.splitlines() if "PostgreSQL 127.0.0.1:" in line)
    assert "started" in pg_dir
    # The cluster's data directory is gone with it.
    leftovers = [p for p in Path("/tmp").glob("mcp-gate-pg-*") if (p / "owner.pid").exists()]
    assert all(int((p / "owner.pid").read_text()) != process.pid for p in leftovers)


def assert_only_the_recording_stays(folder: Path, secrets: list[str]) -> None:
    """The stopped demo's folder: its config, audit store and public key, nothing else, and
    none of `secrets` (the tokens it printed) in any of it."""
    kept = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert [k for k in kept if not k.startswith(".mcp-gate/gate.db")] == [
        ".mcp-gate",
        "audit-signing.pub",
        "mcp-gate.toml",
    ], kept
    for path in folder.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(s.encode() in blob for s in secrets), path


def test_keep_recording_keeps_an_allowlist(tmp_path: Path) -> None:
    """Whatever a future gateway writes into its folder goes, unless it is the recording; a
    demo that recorded nothing leaves nothing."""
    folder = tmp_path / "demo"
    (folder / ".mcp-gate").mkdir(parents=True)
    (folder / ".mcp-gate" / "gate.db").write_bytes(b"db")
    (folder / "mcp-gate.toml").write_text("[server]\n")
    (folder / "audit-signing.pub").write_text("pub")
    for secret in ("audit-signing.key", "tokens.json", "some-new.key"):
        (folder / secret).write_text("secret")
    (folder / "cache").mkdir()
    (folder / "cache" / "x").write_text("x")
    (folder / "link").symlink_to(folder / "cache")
    assert keep_recording(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        ".mcp-gate",
        "audit-signing.pub",
        "mcp-gate.toml",
    ]
    assert (folder / ".mcp-gate" / "gate.db").read_bytes() == b"db"
    empty = tmp_path / "nothing-recorded"
    empty.mkdir()
    (empty / "tokens.json").write_text("secret")
    assert not keep_recording(empty)
    assert not empty.exists()


# -- audit: replay and verify a demo session, from the demo's folder, without --config -----------

READ = "SELECT id, email, card_number FROM customers WHERE id = 7"
# The sample is generated with a fixed seed: customer 7's real email and card number (the
# masked forms the agent gets must be hints of these, which checks they are the right ones).
RAW_EMAIL, RAW_CARD = "ken.7@example.org", "4000000000554339"
MASKED_EMAIL, MASKED_CARD = "k***@example.org", "************4339"
UNBOUNDED = "DELETE FROM orders"
BOUNDED = "DELETE FROM orders WHERE status = 'cancelled'"
REASON = "cancelled orders only, ticket 7"


def gate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One `mcp-gate` command run in `cwd`, as a user types it there."""
    return subprocess.run(
        [*MCP_GATE, *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def agent_session(gateway: Gateway, agent: str, approver: str) -> dict[str, object]:
    """The demo's suggested session as the agent: a masked read, an unbounded DELETE (refused)
    and a bounded one (held), which the approver approves through the admin API meanwhile."""
    async with gateway.client(agent, "legacy") as client:
        read = await client.call_tool("sql_query", {"sql": READ})
        refused = await client.call_tool("sql_query", {"sql": UNBOUNDED})
        decided: dict[str, object] = {}

        async def approve() -> None:
            decided.update(await decide_when_pending(gateway, approver, "approve", REASON))

        async with anyio.create_task_group() as tg:
            tg.start_soon(approve)
            held = await client.call_tool("sql_query", {"sql": BOUNDED})
    return {"read": read, "refused": refused, "held": held, "decided": decided}


def test_demo_session_replayed_and_verified_without_config(tmp_path: Path) -> None:
    process = start_demo(tmp_path, 0)  # any free port: the URL and tokens name the real one
    folder = tmp_path / ".mcp-gate-demo"
    try:
        wait_for(folder / "tokens.json", process)
        state = json.loads((folder / "tokens.json").read_text())
        port = int(state["url"].removeprefix("http://127.0.0.1:").removesuffix("/mcp"))
        assert (
            0 < port < 65536
            and f'listen = "127.0.0.1:{port}"' in (folder / "mcp-gate.toml").read_text()
        )
        gateway = Gateway(
            folder=folder, config=folder / "mcp-gate.toml", url=state["url"], env=dict(os.environ)
        )
        seen = anyio.run(agent_session, gateway, state["agent"], state["approver"])

        read = seen["read"]
        assert not read.is_error, text_of(read)
        assert read.structured_content["rows"] == [[7, MASKED_EMAIL, MASKED_CARD]]
        refused = seen["refused"]
        assert refused.is_error
        assert 'denied by policy rule "never unbounded"' in text_of(refused)
        held, decided = seen["held"], seen["decided"]
        assert not held.is_error, text_of(held)
        assert held.structured_content["affected_rows"] > 0
        assert decided["status"] == "approved"
        assert held.meta["io.mcp-gate/decision"]["approval_id"] == decided["id"]

        # No --config anywhere below: the commands find the demo's config from its folder.
        listed = gate(tmp_path, "sessions", "list", "--json", "--principal", "agent")
        assert listed.returncode == 0, listed.stderr
        (session,) = json.loads(listed.stdout)["sessions"]
        assert (session["calls"], session["denied"]) == (3, 1)
        assert session["ended"] is not None
        table = gate(tmp_path, "sessions", "list")
        assert table.returncode == 0, table.stderr
        assert session["id"][:16] in table.stdout and "agent" in table.stdout

        replay = gate(tmp_path, "replay", session["id"][:16])  # the id as the table shows it
        assert replay.returncode == 0, replay.stderr
        timeline = replay.stdout
        for expected in (
            f"session {session['id']}",
            "session started",
            READ,
            "ALLOW sql_query",
            "email (masked)",
            MASKED_EMAIL,
            MASKED_CARD,
            UNBOUNDED,
            "DENY sql_query",
            "never unbounded",
            BOUNDED,
            "REVIEW sql_query",
            "writes need a DBA",
            f"approval {decided['id']} created",
            f"approved by alice: {REASON}",
            f"approval {decided['id']} executed",
            # what the approved write did, not an empty table
            f"{held.structured_content['status']} ({held.structured_content['affected_rows']:,} "
            "rows affected)",
            "session ended",
        ):
            assert expected in timeline, f"{expected!r} missing from the replay:\n{timeline}"
        # The session starts at or before its first event: no negative offsets, and the
        # initialize that opened it comes after "session started".
        offsets = [float(m) for m in re.findall(r"(?m)^\s*([+-]\d+\.\d{3})s ", timeline)]
        assert len(offsets) >= session["events"] and min(offsets) >= 0, timeline
        assert timeline.index("session started") < timeline.index("→ initialize")
        # In order: the read, the refusal, then the held call and its approval.
        assert timeline.index(READ) < timeline.index("DENY") < timeline.index("REVIEW")
        assert timeline.index("REVIEW") < timeline.index("approved by alice")
        # What was recorded is what the agent saw.
        assert RAW_EMAIL not in timeline and RAW_CARD not in timeline

        export = gate(tmp_path, "audit", "export", "--session", session["id"])
        assert export.returncode == 0, export.stderr
        events = [json.loads(line) for line in export.stdout.splitlines()]
        assert len(events) == session["events"]
        assert RAW_EMAIL not in export.stdout and RAW_CARD not in export.stdout
        assert state["agent"] not in export.stdout and state["approver"] not in export.stdout

        verified = gate(tmp_path, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.startswith("ok:")

        # `mcp-gate token` signs with the demo's issuer from its folder, no --config: the
        # gateway takes bob (dba) as an approver.
        minted = gate(tmp_path, "token", "--sub", "bob", "--groups", "dba")
        assert minted.returncode == 0, minted.stderr
        bob = minted.stdout.strip()
        assert minted.stdout == bob + "\n" and bob.count(".") == 2
        queue = gate(
            tmp_path, "approvals", "list", "--token", bob, "--status", "executed", "--json"
        )
        assert queue.returncode == 0, queue.stdout + queue.stderr
        assert [a["id"] for a in json.loads(queue.stdout)["approvals"]] == [decided["id"]]

        # A hand edit of one byte of one event's payload (the refusal's rule name, in the
        # SQLite store) breaks the chain at that event.
        store = folder / ".mcp-gate" / "gate.db"
        with contextlib.closing(sqlite3.connect(store, timeout=10)) as db, db:
            ((seq, data),) = db.execute(
                "SELECT seq, data FROM audit_events "
                "WHERE session_id = ? AND kind = 'decision' AND decision = 'deny'",
                (session["id"],),
            ).fetchall()
            edited = data.replace("never unbounded", "never Unbounded", 1)
            assert len(edited) == len(data) and edited != data
            db.execute("UPDATE audit_events SET data = ? WHERE seq = ?", (edited, seq))
        broken = gate(tmp_path, "audit", "verify")
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert f"broken at seq {seq}: edited" in broken.stdout
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    # The printed instructions: the audit commands as typed from this folder, no --config.
    for command in (
        "mcp-gate sessions list",
        "mcp-gate replay <session id>",
        "mcp-gate audit verify",
        "mcp-gate token --sub bob --groups dba",
    ):
        line = next(x for x in output.splitlines() if command in x)
        assert "--config" not in line
    assert f"http://127.0.0.1:{port}/mcp" in output and "127.0.0.1:0" not in output
    # Stopped, the demo leaves its recording, which still replays and still fails verify.
    assert_only_the_recording_stays(folder, [state["agent"], state["approver"], bob])
    replayed = gate(tmp_path, "replay", session["id"][:16])
    assert replayed.returncode == 0, replayed.stderr
    assert READ in replayed.stdout and "approved by alice" in replayed.stdout
    still_broken = gate(tmp_path, "audit", "verify")
    assert still_broken.returncode == 1 and f"broken at seq {seq}: edited" in still_broken.stdout


def test_demo_port_zero_taken_or_invalid(tmp_path: Path) -> None:
    """`--port 0` means any free port (never a URL naming port 0); a taken port gives way to
    a free one; a number that is no port is refused before anything starts."""
    for _ in range(3):
        port = choose_port(0)
        assert port != 0
        bind_socket("127.0.0.1", port).close()  # really free
    with contextlib.closing(bind_socket("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        assert choose_port(busy) != busy
    free = free_port()
    assert choose_port(free) == free
    for bad in (-1, 65536, 10**6):
        with pytest.raises(ValueError, match="TCP port"):
            choose_port(bad)
    refused = gate(tmp_path, "demo", "--port", "70000")
    assert refused.returncode == 2
    assert "--port 70000" in refused.stdout + refused.stderr
    assert not (tmp_path / ".mcp-gate-demo").exists()


def test_token_without_any_config(tmp_path: Path) -> None:
    """`mcp-gate token` with no ./mcp-gate.toml and no demo here: exit 2, nothing on stdout,
    both places named."""
    result = gate(tmp_path, "token", "--sub", "bob")
    assert result.returncode == 2 and result.stdout == ""
    message = " ".join(result.stderr.split())
    assert "./mcp-gate.toml" in message and "./.mcp-gate-demo/mcp-gate.toml" in message


@pytest.mark.parametrize(
    "command",
    [["sessions", "list"], ["replay", "ses_x"], ["audit", "verify"], ["audit", "export"]],
    ids=" ".join,
)
def test_audit_commands_without_any_config(tmp_path: Path, command: list[str]) -> None:
    """No ./mcp-gate.toml and no demo here: exit 2, naming both places and what to do."""
    result = gate(tmp_path, *command)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    for expected in (
        "./mcp-gate.toml",
        "./.mcp-gate-demo/mcp-gate.toml",
        "--config",
        "mcp-gate demo",
    ):
        assert expected in message, message
    assert result.stdout == ""


def test_explicit_or_local_config_wins_over_the_demo(tmp_path: Path) -> None:
    """The demo's config is only a fallback: a --config that does not exist, or a broken
    ./mcp-gate.toml, is reported as such rather than quietly reading the demo's store."""
    demo = tmp_path / ".mcp-gate-demo"
    demo.mkdir()
    (demo / "mcp-gate.toml").write_text('[server]\nlisten = "127.0.0.1:1"\n')
    missing = gate(tmp_path, "audit", "verify", "--config", "elsewhere.toml")
    assert missing.returncode == 2
    assert (
        "no config at elsewhere.toml" in missing.stderr and ".mcp-gate-demo" not in missing.stderr
    )
    (tmp_path / "mcp-gate.toml").write_text("[server\n")
    broken = gate(tmp_path, "sessions", "list")
    assert broken.returncode == 2
    assert "mcp-gate.toml:1: not valid TOML" in broken.stderr
    assert ".mcp-gate-demo" not in broken.stderr
