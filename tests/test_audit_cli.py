"""The reading side of the audit store as users meet it: `mcp-gate sessions list`, `replay`,
`audit verify`, `audit export` as real subprocesses against stores filled through the real
store API (recorder-shaped events), and the admin API's session routes over real HTTP with
real JWTs."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from starlette.applications import Starlette

from mcp_gate.approvals.api import bearer_authenticator
from mcp_gate.audit import (
    AuditEvent,
    AuditStore,
    Direction,
    EventKind,
    SqliteAuditStore,
    chain,
    commands,
)
from mcp_gate.audit.api import session_routes
from mcp_gate.audit.pg_store import PostgresAuditStore
from mcp_gate.auth import DevIssuer
from pgserver import TestDatabase, admin_execute, dsn_with, free_port, quote_ident, unique_name
from test_approvals_api import Server  # uvicorn on a free port in the test's loop

NOW = time.time()
OLD = NOW - 3 * 86400
SQL = "UPDATE orders SET status = 'refunded' WHERE id = 42 RETURNING id, status"
LONG = "row " * 400  # 1,600 characters of result text


def approval_json(status: str, decisions: list[dict]) -> dict:
    """What the recorder stores for an approval event: the request's admin-API form."""
    return {
        "id": "ap_7f3c",
        "status": status,
        "tool": "sql_query",
        "target": "builtin/demo",
        "principal": {"subject": "alice", "groups": ["developers"]},
        "sql": SQL,
        "reasons": ["writes need a DBA"],
        "approvers": ["dba"],
        "quorum": 1,
        "decisions": decisions,
        "created_at": "2026-12-02T07:00:00.000Z",
        "expires_at": "2026-12-02T08:00:00.000Z",
    }


def recorded_session(sid: str, subject: str, t: float) -> list[AuditEvent]:
    """A session as the recorder writes it: a read, then a held write a DBA approves."""

    def msg(at: float, direction: Direction, body: dict, **kw: object) -> AuditEvent:
        return AuditEvent(
            sid, EventKind.MESSAGE, at, direction=direction, data={"message": body}, **kw
        )  # type: ignore[arg-type]

    read = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "sql_query", "arguments": {"sql": "SELECT id, email FROM users"}},
    }
    rows = {
        "columns": [
            {"name": "id", "type": "int4", "masked": False},
            {"name": "email", "type": "text", "masked": True},
        ],
        "rows": [[i, f"u{i}***@example.com"] for i in range(12)],
        "row_count": 12,
        "truncated": False,
    }
    write = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "sql_query", "arguments": {"sql": SQL}},
    }
    decided = [
        {
            "approver": "bob",
            "approver_groups": ["dba"],
            "decision": "approve",
            "reason": "ticket OPS-1234",
            "at": "2026-12-02T07:00:05.000Z",
        }
    ]
    principal = {"subject": subject, "groups": ["developers"], "client_id": "agent-cli"}
    return [
        AuditEvent(
            sid,
            EventKind.SESSION_START,
            t,
            data={
                "principal": principal,
                "transport": "http",
                "era": "2025-11-25",
                "client_info": {"name": "claude-code", "version": "2.1.0"},
            },
        ),
        msg(t + 0.05, Direction.IN, read, method="tools/call", request_id="1", tool="sql_query"),
        AuditEvent(
            sid,
            EventKind.DECISION,
            t + 0.06,
            tool="sql_query",
            decision="allow",
            data={
                "principal": principal,
                "tool": "sql_query",
                "upstream": "builtin",
                "connection": "demo",
                "arguments": read["params"]["arguments"],
                "decision": "allow",
                "reasons": ["reads"],
                "risks": [],
                "policy_version": "v1",
            },
        ),
        msg(
            t + 0.09,
            Direction.OUT,
            {
                "jsonrpc": "2.0",
                "id": 1,
                "result": {"content": [{"type": "text", "text": LONG}], "structuredContent": rows},
            },
            method="tools/call",
            request_id="1",
            tool="sql_query",
            duration_ms=31.25,
        ),
        msg(t + 1, Direction.IN, write, method="tools/call", request_id="2", tool="sql_query"),
        AuditEvent(
            sid,
            EventKind.DECISION,
            t + 1.01,
            tool="sql_query",
            decision="review",
            data={
                "principal": principal,
                "tool": "sql_query",
                "upstream": "builtin",
                "connection": "demo",
                "arguments": {"sql": SQL},
                "decision": "review",
                "reasons": ["writes need a DBA"],
                "risks": [],
                "policy_version": "v1",
                "approvers": ["dba"],
                "quorum": 1,
            },
        ),
        AuditEvent(
            sid,
            EventKind.APPROVAL,
            t + 1.02,
            tool="sql_query",
            approval_id="ap_7f3c",
            data={"event": "created", "approval": approval_json("pending", [])},
        ),
        AuditEvent(
            sid,
            EventKind.APPROVAL,
            t + 5,
            tool="sql_query",
            approval_id="ap_7f3c",
            decision="allow",
            data={"event": "decided", "approval": approval_json("approved", decided)},
        ),
        msg(
            t + 5.2,
            Direction.OUT,
            {
                "jsonrpc": "2.0",
                "id": 2,
                "result": {
                    "isError": True,
                    "content": [{"type": "text", "text": "permission denied for table orders"}],
                },
            },
            method="tools/call",
            request_id="2",
            tool="sql_query",
            duration_ms=4200.0,
        ),
        AuditEvent(sid, EventKind.SESSION_END, t + 9, data={"reason": "deleted"}),
    ]


def write_config(folder: Path, store: str = "sqlite:///.mcp-gate/gate.db", extra: str = "") -> Path:
    path = folder / "mcp-gate.toml"
    path.write_text(f'[server]\nstore = "{store}"\n{extra}')
    return path


async def fill(store: AuditStore, data_dir: Path) -> None:
    await store.open()
    try:
        await store.append(recorded_session("ses_old", "carol", OLD))
        await store.append(recorded_session("ses_new", "alice", NOW - 60))
        await chain.make_checkpoint(store, chain.load_signing_key(data_dir))
    finally:
        await store.close()


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command, as a subprocess (each costs the CLI's start-up: used once per
    command; the variants below call the same command functions in-process)."""
    return subprocess.run(
        [sys.executable, "-m", "mcp_gate", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def call(command: Callable[..., int], *args: object, **kw: object) -> tuple[int, str, str]:
    """A command function in-process: (exit code, stdout, stderr), 200 columns, no colour."""
    out, err = io.StringIO(), io.StringIO()
    code = command(*args, out=Console(file=out, width=200), err=Console(file=err, width=200), **kw)
    return code, out.getvalue(), err.getvalue()


def export(config: Path, **kw: object) -> tuple[int, list[str], str]:
    stream, err = io.StringIO(), io.StringIO()
    code = commands.audit_export(
        config,
        fmt=str(kw.pop("fmt", "jsonl")),
        since=kw.pop("since", None),  # type: ignore[arg-type]
        session_id=kw.pop("session_id", None),  # type: ignore[arg-type]
        err=Console(file=err, width=200),
        stream=stream,
    )
    return code, stream.getvalue().splitlines(), err.getvalue()


def listing(config: Path, **kw: object) -> tuple[int, str, str]:
    opts: dict[str, object] = {"principal": None, "since": None, "limit": 100, "as_json": False}
    return call(commands.sessions_list, config, **{**opts, **kw})


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    config = write_config(tmp_path)
    asyncio.run(fill(SqliteAuditStore(tmp_path / ".mcp-gate" / "gate.db"), tmp_path / ".mcp-gate"))
    return config


# --------------------------------------------------------------------------- sessions list


@pytest.mark.slow  # real subprocesses: the CLI's start-up dominates
def test_sessions_list_table_filters_and_json(gate: Path) -> None:
    run = cli(gate, "sessions", "list")
    assert run.returncode == 0, run.stderr
    new = next(line for line in run.stdout.splitlines() if "ses_new" in line)
    for cell in ("alice", "http", "2025-11-25", "claude-code 2.1.0", "9.0s"):
        assert cell in new
    assert new.split()[0] == "ses_new" and new.split()[-2:] == ["2", "0"]  # calls, denied
    assert run.stdout.index("ses_new") < run.stdout.index("ses_old")  # newest first

    _, only, _ = listing(gate, principal="carol")
    assert "ses_old" in only and "ses_new" not in only
    _, recent, _ = listing(gate, since="1h")
    assert "ses_new" in recent and "ses_old" not in recent
    _, none, _ = listing(gate, principal="nobody")
    assert "no sessions recorded matching the filters" in none

    code, text, _ = listing(gate, as_json=True, since="2000-01-01")
    [alice] = [s for s in json.loads(text)["sessions"] if s["id"] == "ses_new"]
    assert (alice["subject"], alice["calls"], alice["denied"], alice["events"]) == (
        "alice",
        2,
        0,
        10,
    )
    assert alice["duration_s"] == pytest.approx(9.0) and alice["started"].endswith("Z")

    code, _, err = listing(gate, since="last tuesday")
    assert code == 2 and "--since" in err


# --------------------------------------------------------------------------- replay


@pytest.mark.slow  # real subprocesses: the CLI's start-up dominates
def test_replay_shows_sql_decisions_approvals_results_and_timings(gate: Path) -> None:
    run = cli(gate, "replay", "ses_new")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "session ses_new" in out and "alice (developers)" in out
    assert "claude-code 2.1.0 over http, MCP 2025-11-25" in out
    assert "SELECT id, email FROM users" in out
    assert "UPDATE orders SET status = 'refunded' WHERE id = 42" in out  # the held SQL
    assert "ALLOW sql_query on builtin/demo  because: reads" in out
    assert "REVIEW sql_query on builtin/demo  because: writes need a DBA  needs dba" in out
    assert "approval ap_7f3c created → pending: needs dba (quorum 1)" in out
    assert "approval ap_7f3c decided → approved" in out
    assert "approved by bob: ticket OPS-1234" in out
    # a table result: the first rows, then how many more
    assert "email (masked)" in out and "u4***@example.com" in out
    assert "u5***@example.com" not in out and "… 7 more rows" in out
    assert "(31.25 ms)" in out and "(4200 ms)" in out
    assert "permission denied for table orders" in out
    assert "session ended (deleted)" in out
    # offsets from the start, in order
    assert out.index("+0.050s") < out.index("+1.000s") < out.index("+9.000s")


def test_replay_cuts_long_text(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    events = recorded_session("ses_txt", "alice", NOW)
    reply = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": LONG}]}}
    events[3] = AuditEvent(
        "ses_txt",
        EventKind.MESSAGE,
        NOW + 0.09,
        direction=Direction.OUT,
        method="tools/call",
        request_id="1",
        data={"message": reply},
    )

    async def write() -> None:
        store = SqliteAuditStore(tmp_path / ".mcp-gate" / "gate.db")
        await store.open()
        await store.append(events)
        await store.close()

    asyncio.run(write())
    code, out, _ = call(commands.replay, config, "ses_txt", follow=False)
    assert code == 0 and "… 1200 more characters" in out
    assert LONG[:401] not in out.replace("\n", "")  # not the whole text


@pytest.mark.slow  # a real subprocess
@pytest.mark.anyio
async def test_replay_follow_tails_a_live_session(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    events = recorded_session("ses_live", "alice", NOW)
    store = SqliteAuditStore(tmp_path / ".mcp-gate" / "gate.db")
    await store.open()
    try:
        await store.append(events[:2])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mcp_gate", "replay", "ses_live", "--follow",
            "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert proc.stdout is not None
        seen = b""
        async with asyncio.timeout(60):
            while b"following the live session" not in seen:
                seen += await proc.stdout.readline()
            await store.append(events[2:6])
            while b"REVIEW" not in seen:
                seen += await proc.stdout.readline()
            await store.append(events[6:])  # … through session_end: the command returns
            rest, _ = await proc.communicate()
        assert proc.returncode == 0
        out = (seen + rest).decode()
        assert "SELECT id, email FROM users" in out and "approved by bob" in out
        assert out.rstrip().endswith("session ended (deleted)")
    finally:
        await store.close()


# --------------------------------------------------------------------------- verify


@pytest.mark.slow  # real subprocesses: the CLI's start-up dominates
def test_audit_verify_passes_then_fails_after_a_hand_edit(gate: Path) -> None:
    ok = cli(gate, "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok: 21 events (seq 1..21), 1 signed checkpoints verified" in ok.stdout
    db = sqlite3.connect(gate.parent / ".mcp-gate" / "gate.db")
    db.execute("UPDATE audit_events SET decision = 'allow' WHERE seq = 16")  # the review
    db.commit()
    db.close()
    broken = cli(gate, "audit", "verify")
    assert broken.returncode == 1
    expected = "broken at seq 16: edited: the content of event 16 does not match its hash"
    assert expected in broken.stdout


def test_audit_verify_without_the_public_key_flags_the_checkpoint(gate: Path) -> None:
    data = gate.parent / ".mcp-gate"
    (data / chain.KEY_FILE).unlink()
    (data / chain.PUBLIC_KEY_FILE).unlink()
    code, out, _ = call(commands.audit_verify, gate)
    assert code == 1 and "unknown key" in out


# --------------------------------------------------------------------------- export


def test_export_is_what_was_stored_and_re_verifiable(gate: Path) -> None:
    run = cli(gate, "audit", "export", "--format", "jsonl")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]

    async def read() -> list:
        store = SqliteAuditStore(gate.parent / ".mcp-gate" / "gate.db")
        await store.open()
        try:
            return await store.events()
        finally:
            await store.close()

    stored = asyncio.run(read())
    assert [x["seq"] for x in lines] == [s.seq for s in stored] == list(range(1, 22))
    for line, s in zip(lines, stored, strict=True):
        assert line["data"] == s.event.data and line["hash"] == s.hash
    # What a SIEM does with the export alone: recompute every hash and link.
    prev = "0" * 64
    for line in lines:
        event = AuditEvent(
            session_id=line["session_id"],
            kind=EventKind(line["kind"]),
            at=line["at"],
            direction=Direction(line["direction"]) if line["direction"] else None,
            method=line["method"],
            request_id=line["request_id"],
            tool=line["tool"],
            decision=line["decision"],
            approval_id=line["approval_id"],
            duration_ms=line["duration_ms"],
            data=line["data"],
        )
        assert line["prev_hash"] == prev
        assert event.chain_hash(line["seq"], prev) == line["hash"]
        prev = line["hash"]
    # nothing was added on the way: the planted result text is there verbatim, once each
    assert run.stdout.count(LONG) == 2

    code, only, _ = export(gate, session_id="ses_old")
    assert code == 0 and len(only) == 10 and all('"session_id":"ses_old"' in x for x in only)
    _, recent, _ = export(gate, since="1h")
    assert [json.loads(x)["seq"] for x in recent] == list(range(11, 22))
    code, _, err = export(gate, fmt="csv")
    assert code == 2 and "jsonl" in err


# --------------------------------------------------------------------------- errors


def test_sessions_list_fits_80_columns_and_replay_takes_the_shown_id(tmp_path: Path) -> None:
    """The table shows the start of each id (16 characters) and keeps calls and denials on
    an 80-column terminal; `replay` takes that start, or any unique one of 8 or more."""
    config = write_config(tmp_path)
    long_ids = ["ses_0123456789abcdef0123456789abcdef", "ses_0123456789abffff0123456789abcdef"]

    async def record() -> None:
        store = SqliteAuditStore(tmp_path / ".mcp-gate" / "gate.db")
        await store.open()
        try:
            for i, sid in enumerate(long_ids):
                await store.append(recorded_session(sid, "alice", NOW - 60 + i))
        finally:
            await store.close()

    asyncio.run(record())
    out = io.StringIO()
    opts = {"principal": None, "since": None, "limit": 100, "as_json": False}
    code = commands.sessions_list(
        config, out=Console(file=out, width=80), err=Console(file=io.StringIO()), **opts
    )
    lines = [line for line in out.getvalue().splitlines() if "ses_0123" in line]
    assert code == 0 and [line.split()[0] for line in lines] == [
        "ses_0123456789ab",
        "ses_0123456789ab",
    ]
    assert all(len(line) <= 80 and line.split()[-2:] == ["2", "0"] for line in lines)

    code, shown, _ = call(commands.replay, config, long_ids[1][:18], follow=False)
    assert code == 0 and long_ids[1] in shown and "approved by bob" in shown
    code, _, err = call(commands.replay, config, "ses_0123456789ab", follow=False)
    assert code == 2 and "several session ids" in err and long_ids[0] in err
    code, _, err = call(commands.replay, config, "ses_012", follow=False)  # under 8: not a prefix
    assert code == 2 and "no session 'ses_012'" in err


def test_clear_errors_for_config_session_and_store(gate: Path, tmp_path: Path) -> None:
    code, _, err = listing(tmp_path / "nope.toml")
    assert code == 2 and "no config at" in err
    code, _, err = call(commands.replay, gate, "ses_nope", follow=False)
    assert code == 2 and "no session 'ses_nope'" in err and "sessions list" in err
    assert export(gate, session_id="ses_nope")[0] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = call(commands.audit_verify, write_config(empty))
    assert code == 2 and "no audit store at" in err
    assert not (empty / ".mcp-gate").exists()  # reading never creates a store

    secret = "pw-" + unique_name("do-not-print")
    unreachable = write_config(
        empty,
        f"postgresql://auditor@127.0.0.1:{free_port()}/gate",
        'store_password_env = "GATE_STORE_PW"\n',
    )
    os.environ["GATE_STORE_PW"] = secret
    try:
        code, out, err = listing(unreachable)
    finally:
        del os.environ["GATE_STORE_PW"]
    assert code == 2 and "auditor@127.0.0.1" in err and secret not in out + err
    code, _, err = listing(unreachable)
    assert code == 2 and "GATE_STORE_PW" in err


@pytest.mark.slow  # real subprocesses: the CLI's start-up dominates
def test_commands_on_a_postgresql_store(module_db: TestDatabase, tmp_path: Path) -> None:
    role, password = unique_name("gate_audit"), "pw-" + unique_name("s3cret")
    schema = unique_name("audit")
    admin_execute(
        module_db.dsn,
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
        f"CREATE SCHEMA {quote_ident(schema)} AUTHORIZATION {role}",
    )
    admin_execute(module_db.admin_dsn, f"GRANT CONNECT ON DATABASE {module_db.name} TO {role}")
    dsn = dsn_with(module_db.dsn, user=role, password="") + f"?search_path={schema}"
    asyncio.run(fill(PostgresAuditStore(dsn, password=password), tmp_path / ".mcp-gate"))
    config = write_config(tmp_path, dsn, 'store_password_env = "GATE_STORE_PW"\n')
    verified = cli(config, "audit", "verify", env={"GATE_STORE_PW": password})
    assert verified.returncode == 0 and "ok: 21 events" in verified.stdout
    os.environ["GATE_STORE_PW"] = password
    try:
        listed = listing(config)
        assert listed[0] == 0 and "ses_new" in listed[1] and "ses_old" in listed[1]
        replayed = call(commands.replay, config, "ses_old", follow=False)
        assert "approved by bob: ticket OPS-1234" in replayed[1]
        admin_execute(
            module_db.dsn, f"DELETE FROM {quote_ident(schema)}.audit_events WHERE seq = 3"
        )
        broken = call(commands.audit_verify, config)
        assert broken[0] == 1 and "deleted: event 3 is missing" in broken[1]
    finally:
        del os.environ["GATE_STORE_PW"]
    shown = verified.stdout + verified.stderr + "".join(listed[1:] + replayed[1:] + broken[1:])
    assert password not in shown


# --------------------------------------------------------------------------- admin API


@pytest.fixture
async def api(gate: Path, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict]]:
    issuer = DevIssuer(tmp_path / "issuer", "http://127.0.0.1:1/issuer", "mcp-gate-admin")
    people = {"alice": ["developers"], "carol": ["developers"], "audrey": ["auditors"]}
    tokens = {n: {"Authorization": f"Bearer {issuer.mint(n, g)}"} for n, g in people.items()}
    store = SqliteAuditStore(gate.parent / ".mcp-gate" / "gate.db")
    await store.open()
    routes = session_routes(
        store, bearer_authenticator(issuer.verifier()), viewer_groups=["auditors"]
    )
    try:
        async with (
            Server(Starlette(routes=routes)) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            yield client, tokens
    finally:
        await store.close()


@pytest.mark.anyio
async def test_admin_api_sessions_visibility(api: tuple[httpx.AsyncClient, dict]) -> None:
    client, tokens = api
    assert (await client.get("/admin/v1/sessions")).status_code == 401
    everyone = (await client.get("/admin/v1/sessions", headers=tokens["audrey"])).json()
    assert [s["id"] for s in everyone["sessions"]] == ["ses_new", "ses_old"]
    own = (await client.get("/admin/v1/sessions", headers=tokens["alice"])).json()
    assert [s["id"] for s in own["sessions"]] == ["ses_new"]
    peek = await client.get("/admin/v1/sessions?principal=carol", headers=tokens["alice"])
    assert peek.status_code == 403 and peek.json()["error"] == "forbidden"
    recent = await client.get("/admin/v1/sessions?since=1h&limit=5", headers=tokens["audrey"])
    assert [s["id"] for s in recent.json()["sessions"]] == ["ses_new"]
    bad = await client.get("/admin/v1/sessions?limit=0", headers=tokens["audrey"])
    assert bad.status_code == 400
    assert (
        await client.get("/admin/v1/sessions?since=soon", headers=tokens["audrey"])
    ).status_code == 400


@pytest.mark.anyio
async def test_admin_api_one_session_with_events(api: tuple[httpx.AsyncClient, dict]) -> None:
    client, tokens = api
    doc = (await client.get("/admin/v1/sessions/ses_new", headers=tokens["alice"])).json()
    assert doc["subject"] == "alice" and len(doc["events"]) == 10
    assert doc["events"][0]["kind"] == "session_start" and doc["next_after_seq"] is None
    assert doc["events"][5]["data"]["arguments"]["sql"] == SQL
    page = (
        await client.get("/admin/v1/sessions/ses_new?limit=4&after_seq=12", headers=tokens["alice"])
    ).json()
    assert [e["seq"] for e in page["events"]] == [13, 14, 15, 16] and page["next_after_seq"] == 16
    theirs = await client.get("/admin/v1/sessions/ses_old", headers=tokens["alice"])
    assert theirs.status_code == 403
    assert (
        await client.get("/admin/v1/sessions/ses_old", headers=tokens["audrey"])
    ).status_code == 200
    missing = await client.get("/admin/v1/sessions/ses_nope", headers=tokens["audrey"])
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
