"""Recording in the gateway, end to end: real `mcp-gate serve` processes, real SDK clients over
HTTP (both eras) and stdio, real PostgreSQL, real JWTs, the real SQLite audit store.

Every message a client sends or receives is in the store, in its session (with principal, era
and client info); a call's decision is committed before the call runs; results are recorded
as the agent saw them (masked); planted secrets never reach the file; a SIGKILL loses no
decision whose result a client received; a store that cannot commit makes calls fail closed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

from gateway_helpers import MCP_GATE, Gateway, text_of
from mcp_gate.audit import EventKind, SqliteAuditStore, StoredEvent
from mcp_gate.audit.chain import public_keys, verify
from pgserver import run_sync
from shop_helpers import Shop, sample_policy, sample_shop, shop_gateway

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
DSN_SECRET = "hunter2-s3cret"


@pytest.fixture(scope="module")
def shop(pg_dsn: str) -> Iterator[Shop]:
    with sample_shop(pg_dsn, "test_audit_gw") as shop:
        yield shop


@dataclass(frozen=True)
class Pii:
    """Sensitive values in the shop that a recording must hold only masked."""

    emails: tuple[str, ...]
    ssns: tuple[str, ...]


@pytest.fixture(scope="module")
def pii(shop: Shop) -> Pii:
    async def read() -> Pii:
        conn = await asyncpg.connect(shop.dsn)
        try:
            rows = await conn.fetch("SELECT email, ssn FROM customers ORDER BY id LIMIT 5")
        finally:
            await conn.close()
        return Pii(tuple(r["email"] for r in rows), tuple(r["ssn"] for r in rows if r["ssn"]))

    return run_sync(read)


# Held calls come back after 1 s, not the sample's 2 minutes.
POLICY = sample_policy(wait='"1s"')


@pytest.fixture(scope="module")
def gateway(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shop_gateway(shop, tmp_path_factory.mktemp("audit-gateway"), POLICY) as gw:
        yield gw


def db_file(gateway: Gateway) -> Path:
    return gateway.config.parent / ".mcp-gate" / "gate.db"


# -- a client transport that counts what the client really sent and received -------------


class _CountingRead:
    def __init__(self, inner: Any, seen: list[Any]) -> None:
        self._inner, self._seen = inner, seen

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        item = await self._inner.receive()
        if isinstance(item, SessionMessage):
            self._seen.append(item.message.model_dump(by_alias=True, exclude_unset=True))
        return item

    def __aiter__(self) -> _CountingRead:
        return self

    async def __anext__(self) -> Any:
        import anyio

        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _CountingRead:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _CountingWrite:
    def __init__(self, inner: Any, sent: list[Any]) -> None:
        self._inner, self._sent = inner, sent

    async def send(self, item: SessionMessage) -> None:
        self._sent.append(item.message.model_dump(by_alias=True, exclude_unset=True))
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _CountingWrite:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Counting:
    """A `Transport` around another one, keeping every message sent and received."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[Any] = []
        self.received: list[Any] = []

    async def __aenter__(self) -> tuple[Any, Any]:
        read, write = await self.inner.__aenter__()
        return _CountingRead(read, self.received), _CountingWrite(write, self.sent)

    async def __aexit__(self, *exc: Any) -> Any:
        return await self.inner.__aexit__(*exc)


def http_transport(gateway: Gateway, token: str) -> tuple[Counting, httpx2.AsyncClient]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return Counting(streamable_http_client(gateway.url, http_client=http)), http


# -- reading the store ---------------------------------------------------------------------


def read_store(path: Path, session_id: str | None = None) -> list[StoredEvent]:
    async def read() -> list[StoredEvent]:
        store = SqliteAuditStore(path)
        await store.open()
        try:
            return await store.events(session_id=session_id)
        finally:
            await store.close()

    return run_sync(read)


def assert_starts_first(session: Any, events: list[Any]) -> None:
    """The session began when the initialize that opened it arrived, not when it was
    answered: its start is the first event, at or before every other one."""
    assert events[0].event.kind == EventKind.SESSION_START
    assert session.started_at == events[0].event.at
    assert all(events[0].event.at <= e.event.at for e in events[1:]), [
        (e.event.kind, e.event.at) for e in events[:3]
    ]


def sessions_of(path: Path, subject: str) -> list[Any]:
    async def read() -> list[Any]:
        store = SqliteAuditStore(path)
        await store.open()
        try:
            return await store.sessions(principal=subject)
        finally:
            await store.close()

    return run_sync(read)


def wait_for(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the recording")
        time.sleep(0.1)


def messages(events: list[StoredEvent], direction: str) -> list[dict[str, Any]]:
    return [
        e.event.data["message"]
        for e in events
        if e.event.kind == EventKind.MESSAGE and str(e.event.direction) == direction
    ]


def assert_same_messages(recorded: list[dict[str, Any]], seen: list[dict[str, Any]]) -> None:
    """The recording holds exactly the client's messages (ids and methods, in order per
    kind); payloads may only differ by redaction, which these tests do not trigger."""
    assert len(recorded) == len(seen), (recorded, seen)

    def shape(m: dict[str, Any]) -> tuple[Any, ...]:
        return (m.get("id"), m.get("method"), "result" in m, "error" in m)

    assert sorted(map(shape, recorded), key=repr) == sorted(map(shape, seen), key=repr)


# -- sessions: every message in and out ---------------------------------------------------


async def test_legacy_http_session_is_recorded_whole(gateway: Gateway, pii: Pii):
    token = gateway.token("legacy-agent", "developers")
    transport, http = http_transport(gateway, token)
    async with http, Client(transport, mode="legacy", cache=None) as client:
        await client.list_tools()
        rows = await client.call_tool(
            "sql_query", {"sql": "SELECT name, email, ssn FROM customers"}
        )
        assert not rows.is_error, text_of(rows)
        refused = await client.call_tool("sql_query", {"sql": "DELETE FROM orders"})
        assert refused.is_error
    path = db_file(gateway)
    session = wait_for(
        lambda: [s for s in sessions_of(path, "legacy-agent") if s.ended_at is not None]
    )[0]
    assert session.transport == "http" and session.era == "2025-11-25"
    assert session.client_name and session.client_version is not None
    assert session.calls == 2 and session.denied == 1
    events = read_store(path, session.id)
    assert events[0].event.kind == EventKind.SESSION_START
    assert_starts_first(session, events)
    start = events[0].event.data
    assert start["principal"]["subject"] == "legacy-agent"
    assert start["principal"]["groups"] == ["developers"]
    assert events[-1].event.kind == EventKind.SESSION_END
    assert events[-1].event.data["reason"] == "deleted"
    assert_same_messages(messages(events, "in"), transport.sent)
    assert_same_messages(messages(events, "out"), transport.received)

    # The decision of the allowed call is on record before its result went out.
    decisions = [e for e in events if e.event.kind == EventKind.DECISION]
    allowed = next(d for d in decisions if d.event.decision == "allow")
    result = next(
        e
        for e in events
        if e.event.kind == EventKind.MESSAGE
        and str(e.event.direction) == "out"
        and e.event.method == "tools/call"
        and "SELECT name" not in json.dumps(e.event.data)  # the answer, not the request
        and e.seq > allowed.seq
    )
    assert result.event.duration_ms is not None and result.event.duration_ms > 0
    assert allowed.event.data["arguments"] == {"sql": "SELECT name, email, ssn FROM customers"}
    assert allowed.event.data["principal"]["subject"] == "legacy-agent"
    # What the agent saw is what was recorded: masked.
    recorded = json.dumps([e.event.data for e in events])
    assert "[MASKED]" in recorded or "***" in recorded
    for value in pii.emails + pii.ssns:
        assert value not in recorded


async def test_modern_requests_group_into_one_logical_session(gateway: Gateway):
    token = gateway.token("modern-agent", "developers")
    sent: list[Any] = []
    received: list[Any] = []
    for _ in range(2):  # two clients in a row, same principal and client: one session
        transport, http = http_transport(gateway, token)
        async with http, Client(transport, mode="auto", cache=None) as client:
            result = await client.call_tool("sql_query", {"sql": "SELECT count(*) FROM orders"})
            assert not result.is_error, text_of(result)
        sent += transport.sent
        received += transport.received
    path = db_file(gateway)
    sessions = wait_for(lambda: sessions_of(path, "modern-agent"))
    assert len(sessions) == 1
    session = sessions[0]
    assert session.era == "2026-07-28" and session.transport == "http"
    assert session.client_name and session.calls == 2
    events = wait_for(
        lambda: (
            (e := read_store(path, session.id)) and len(messages(e, "out")) >= len(received) and e
        )
    )
    assert_same_messages(messages(events, "in"), sent)
    assert_same_messages(messages(events, "out"), received)
    for e in events:
        if e.event.kind == EventKind.MESSAGE and "result" in e.event.data["message"]:
            assert e.event.duration_ms is not None


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_stdio_run_is_one_session(gateway: Gateway, mode: str):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_gate", "serve", "--stdio", "--config", str(gateway.config)],
        env=gateway.env,
    )
    before = {s.id for s in sessions_of(db_file(gateway), "stdio-user")}
    transport = Counting(stdio_client(params))
    async with Client(transport, mode=mode, cache=None) as client:
        ok = await client.call_tool("sql_query", {"sql": "SELECT 1 AS one"})
        assert not ok.is_error, text_of(ok)
        await client.call_tool("sql_query", {"sql": "DELETE FROM orders"})
    path = db_file(gateway)
    new = wait_for(
        lambda: [
            s
            for s in sessions_of(path, "stdio-user")
            if s.id not in before and s.ended_at is not None
        ]
    )
    assert len(new) == 1
    session = new[0]
    assert session.transport == "stdio"
    assert session.era == ("2025-11-25" if mode == "legacy" else "2026-07-28")
    assert session.client_name and session.calls == 2 and session.denied == 1
    events = read_store(path, session.id)
    assert_starts_first(session, events)
    assert_same_messages(messages(events, "in"), transport.sent)
    assert_same_messages(messages(events, "out"), transport.received)


# -- secrets never reach the file ----------------------------------------------------------


def raw_bytes(path: Path) -> bytes:
    """The database file and its WAL, as bytes on disk."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


async def test_planted_secrets_never_reach_the_store(gateway: Gateway, shop: Shop):
    token = gateway.token("secret-planter", "developers")
    reader_pw = shop.secrets[0]
    planted = [
        f"SELECT 'postgresql://u:{DSN_SECRET}@h/db' AS dsn",
        f"SELECT 'host=db user=u password={DSN_SECRET}x' AS kv",
        f"SELECT '{AWS_KEY}' AS key",
        f"SELECT '{reader_pw}' AS pw",
        f"SELECT 'Bearer {token}' AS bearer",
    ]
    async with gateway.client(token, mode="legacy") as client:
        for sql in planted:
            await client.call_tool("sql_query", {"sql": sql})
    async with gateway.client(token, mode="auto") as client:
        await client.call_tool("sql_query", {"sql": planted[0]})
    path = db_file(gateway)
    wait_for(lambda: [s for s in sessions_of(path, "secret-planter") if s.ended_at])
    data = raw_bytes(path)
    assert b"[REDACTED]" in data  # the calls were recorded, with the secrets replaced
    for secret in (DSN_SECRET, AWS_KEY, reader_pw, shop.secrets[1], token):
        assert secret.encode() not in data, secret
    events = [e for s in sessions_of(path, "secret-planter") for e in read_store(path, s.id)]
    recorded = json.dumps([e.event.data for e in events])
    assert "postgresql://u:[REDACTED]@h/db" in recorded


# -- durability ------------------------------------------------------------------------------


def _verify(path: Path, data_dir: Path) -> Any:
    async def run() -> Any:
        store = SqliteAuditStore(path)
        await store.open()
        try:
            return await verify(store, public_keys(data_dir))
        finally:
            await store.close()

    return run_sync(run)


async def test_sigkill_mid_load_loses_no_decision_a_client_saw(shop: Shop, tmp_path: Path) -> None:
    received: list[int] = []
    with shop_gateway(shop, tmp_path, POLICY, write_dsn=None) as gw:
        token = gw.token("loader", "developers")
        assert gw.process is not None

        async def load(worker: int) -> None:
            try:
                async with gw.client(token, mode="auto") as client:
                    for i in range(10_000):
                        n = worker * 100_000 + i
                        result = await client.call_tool("sql_query", {"sql": f"SELECT {n} AS n"})
                        if not result.is_error and result.structured_content:
                            received.append(result.structured_content["rows"][0][0])
            except Exception:
                return  # the gateway was killed under us

        async def kill_soon() -> None:
            while len(received) < 40:
                await asyncio.sleep(0.02)
            gw.process.send_signal(signal.SIGKILL)

        await asyncio.gather(kill_soon(), *(load(w) for w in range(6)))
        gw.process.wait(10)
        path = tmp_path / ".mcp-gate" / "gate.db"
        events = read_store(path)
        decided = {
            e.event.data["arguments"]["sql"]
            for e in events
            if e.event.kind == EventKind.DECISION and e.event.decision == "allow"
        }
        assert len(received) >= 40
        missing = [n for n in received if f"SELECT {n} AS n" not in decided]
        assert not missing, missing
        report = _verify(path, tmp_path / "state")
        assert report.ok, report


async def test_store_that_cannot_commit_fails_calls_closed(gateway: Gateway, shop: Shop):
    token = gateway.token("dba-under-test", "dba")
    sql = "UPDATE customers SET name = 'audit-was-down' WHERE id = 1"
    path = db_file(gateway)
    blocker = sqlite3.connect(path, isolation_level=None, timeout=5)
    async with gateway.client(token, mode="auto") as client:
        blocker.execute("BEGIN IMMEDIATE")  # every writer of the file waits, then gives up
        try:
            refused = await client.call_tool("sql_query", {"sql": sql})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert refused.is_error
        text = text_of(refused)
        assert "the audit store is unavailable, so nothing was run" in text, text
        assert refused.meta["io.mcp-gate/decision"]["decision"] == "allow"

        async def name() -> str:
            conn = await asyncpg.connect(shop.dsn)
            try:
                return await conn.fetchval("SELECT name FROM customers WHERE id = 1")
            finally:
                await conn.close()

        assert await name() != "audit-was-down"
        # The process keeps serving, and records again once the store is back.
        ok = await client.call_tool("sql_query", {"sql": "SELECT 1 AS back"})
        assert not ok.is_error, text_of(ok)
    session = wait_for(lambda: sessions_of(path, "dba-under-test"))[0]
    events = read_store(path, session.id)
    assert [e.event.decision for e in events if e.event.kind == EventKind.DECISION] == ["allow"]
    # The refusal the agent got is in the transcript (kept while the store was down).
    assert any("audit store is unavailable" in json.dumps(e.event.data) for e in events)


# -- approvals ------------------------------------------------------------------------------


async def test_approval_lifecycle_is_in_the_requesting_session(gateway: Gateway, shop: Shop):
    token = gateway.token("writer-agent", "developers")
    approver = gateway.token("alice", "dba")
    sql = "UPDATE customers SET name = 'approved-name' WHERE id = 2"
    async with gateway.client(token, mode="legacy") as client:
        held = await client.call_tool("sql_query", {"sql": sql})
        assert held.is_error
        approval_id = held.meta["io.mcp-gate/decision"]["approval_id"]
        admin = gateway.url.rsplit("/mcp", 1)[0] + f"/admin/v1/approvals/{approval_id}/approve"
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(
                admin, json={"reason": "ticket 42"}, headers={"Authorization": f"Bearer {approver}"}
            )
            assert response.status_code == 200, response.text
        done = await client.call_tool("sql_query", {"sql": sql})
        assert not done.is_error, text_of(done)
    path = db_file(gateway)
    session = wait_for(
        lambda: [s for s in sessions_of(path, "writer-agent") if s.ended_at is not None]
    )[0]
    events = wait_for(
        lambda: (
            (
                e := read_store(path, session.id),
                any(x.event.data.get("event") == "executed" for x in e),
            )[1]
            and e
        )
    )
    lifecycle = [
        (e.event.data["event"], e.event.approval_id)
        for e in events
        if e.event.kind == EventKind.APPROVAL
    ]
    kinds = [k for k, _ in lifecycle]
    assert kinds[0] == "created" and "decided" in kinds and kinds[-1] == "executed", kinds
    assert {a for _, a in lifecycle} == {approval_id}
    decided = next(e for e in events if e.event.data.get("event") == "decided")
    decisions = decided.event.data["approval"]["decisions"]
    assert decisions[0]["approver"] == "alice" and decisions[0]["reason"] == "ticket 42"
    reviews = [e for e in events if e.event.kind == EventKind.DECISION]
    assert [e.event.decision for e in reviews] == ["review", "review"]


# -- the "done when" -----------------------------------------------------------------


def cli(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MCP_GATE, *args, "--config", str(gateway.config)],
        env={**gateway.env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_replay_verify_export_then_a_hand_edit_is_caught(
    gateway: Gateway, shop: Shop, pii: Pii
):
    token = gateway.token("replayed-agent", "developers")
    async with gateway.client(token, mode="legacy") as client:
        await client.call_tool("sql_query", {"sql": "SELECT name, email FROM customers LIMIT 2"})
        await client.call_tool("sql_query", {"sql": f"SELECT '{AWS_KEY}' AS k"})
        await client.call_tool("sql_query", {"sql": "DELETE FROM orders"})
    path = db_file(gateway)
    session = wait_for(
        lambda: [s for s in sessions_of(path, "replayed-agent") if s.ended_at is not None]
    )[0]

    # The admin API lists it for its owner.
    admin = gateway.url.rsplit("/mcp", 1)[0] + f"/admin/v1/sessions/{session.id}"
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(admin, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text

    shown = cli(gateway, "replay", session.id)
    assert shown.returncode == 0, shown.stderr
    for needle in ("SELECT name, email FROM customers LIMIT 2", "DELETE FROM orders", "DENY"):
        assert needle in shown.stdout, (needle, shown.stdout)
    assert "@example." not in shown.stdout.replace("***@example.", "")  # emails masked
    assert AWS_KEY not in shown.stdout

    exported = cli(gateway, "audit", "export", "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    assert session.id in exported.stdout
    for secret in (AWS_KEY, token, *shop.secrets, *pii.emails):
        assert secret not in exported.stdout

    ok = cli(gateway, "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr

    events = read_store(path, session.id)
    # Someone turns the refusal into an allow, by hand.
    decision = next(e for e in events if e.event.decision == "deny")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_events SET decision = 'allow' WHERE seq = ?", (decision.seq,))
    broken = cli(gateway, "audit", "verify")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert str(decision.seq) in broken.stdout + broken.stderr


async def test_a_fail_closed_refusal_is_a_decision_on_record(gateway: Gateway):
    token = gateway.token("untraceable", "developers")
    async with gateway.client(token, mode="auto") as client:
        refused = await client.call_tool(
            "sql_query", {"sql": "SELECT (x).* FROM (SELECT c FROM customers c) s(x)"}
        )
    assert refused.is_error and "lineage_unresolved" in text_of(refused)
    path = db_file(gateway)
    session = wait_for(lambda: [s for s in sessions_of(path, "untraceable") if s.calls])[0]
    assert session.denied == 1
    decision = next(e for e in read_store(path, session.id) if e.event.kind == EventKind.DECISION)
    assert decision.event.decision == "deny"
    assert decision.event.data["reasons"][0] == "lineage_unresolved"


async def test_recording_off_records_nothing_and_still_decides(shop: Shop, tmp_path: Path):
    with shop_gateway(
        shop, tmp_path, POLICY, write_dsn=None, extra="[audit]\nenabled = false\n"
    ) as gw:
        token = gw.token("unrecorded", "developers")
        async with gw.client(token, mode="legacy") as client:
            ok = await client.call_tool("sql_query", {"sql": "SELECT 1 AS one"})
            assert not ok.is_error, text_of(ok)
            refused = await client.call_tool("sql_query", {"sql": "DELETE FROM orders"})
            assert refused.is_error and "never unbounded" in text_of(refused)
        assert "sessions and decisions are NOT recorded" in gw.stderr()
    path = tmp_path / ".mcp-gate" / "gate.db"
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        count = (
            conn.execute("SELECT count(*) FROM audit_events").fetchone()[0]
            if ("audit_events" in tables)
            else 0
        )
    assert count == 0


# -- the redactor on its own ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("SELECT 'postgresql://u:hunter2@h/db'", "hunter2"),
        ("postgres://app:p@ss:w0rd@db.internal:5432/x", "p@ss:w0rd"),
        ("host=db user=u password='it''s secret' dbname=x", "it''s secret"),
        ("https://h/x?user=u&password=hunter2&sslmode=require", "hunter2"),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        (f"key id {AWS_KEY} here", AWS_KEY),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----", "MIIEvQ"),
        ("my db password is s3cr3t-value!", "s3cr3t-value!"),
        # `(?i)` matches `ſ` (long s) as `s`, and `"paſſword".lower()` holds no "passw": the
        # prefilter case-folds, or this went into the store unredacted.
        ("host=db paſſword=hunter2", "hunter2"),
    ],
)
def test_redactor_replaces_secrets(text: str, gone: str):
    from mcp_gate.audit.redact import Redactor

    redactor = Redactor(["s3cr3t-value!"])
    for value in (text, {"message": {"params": {"arguments": {"sql": text}}}}, [text]):
        out = json.dumps(redactor.value(value))
        assert gone not in out and "[REDACTED]" in out, out


def test_redactor_folds_case_for_secret_keys():
    from mcp_gate.audit.redact import Redactor

    assert Redactor().value({"paſſword": "hunter2"}) == {"paſſword": "[REDACTED]"}


@given(
    st.lists(
        st.sampled_from(
            [
                "password=",
                "PASSWORD=",
                "paſſword=",
                "pwd=",
                "://u:",
                "@h",
                "Bearer ",
                "AKIA",
                "ASIA",
                "eyJ",
                "hbGciOiJIUzI1NiJ9",
                ".",
                "-----BEGIN ",
                "PRIVATE KEY",
                "-----",
                "aws_secret_access_key ",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "s3cr3t-value!",
                "x",
                " ",
                "'",
                "=",
                "Ab3",
                "İ",
                "K",
            ]
        )
        | st.text(max_size=4),
        max_size=12,
    ).map("".join)
)
def test_redactor_prefilter_never_skips_what_a_rule_would_change(text: str):
    """`text` skips the rules when no trigger occurs: that shortcut must never keep a string
    that the full rules would have changed."""
    from mcp_gate.audit.redact import Redactor

    redactor = Redactor(["s3cr3t-value!"])
    if not redactor._may_hold_secrets(text):
        assert redactor.text(text) is text
        slow = Redactor(["s3cr3t-value!"])
        slow._may_hold_secrets = lambda _blob: True  # type: ignore[method-assign]
        assert slow.text(text) == text


def test_redactor_leaves_ordinary_payloads_alone():
    from mcp_gate.audit.redact import Redactor

    redactor = Redactor(["s3cr3t-value!"])
    message = {
        "jsonrpc": "2.0",
        "id": 3,
        "result": {
            "content": [{"type": "text", "text": "id | email\n1 | j***@example.com"}],
            "structuredContent": {"rows": [[1, "j***@example.com", 4.5, None, True]]},
            "_meta": {"io.mcp-gate/decision": {"decision": "allow", "reasons": ["reads"]}},
        },
    }
    assert redactor.value(message) is message  # nothing to redact: not even copied
    secret_keys = {"password": "x", "client_secret": "y", "access_token": "z", "note": "ok"}
    assert redactor.value(secret_keys) == {
        "password": "[REDACTED]",
        "client_secret": "[REDACTED]",
        "access_token": "[REDACTED]",
        "note": "ok",
    }


async def test_elicitation_and_its_answer_are_recorded(gateway: Gateway):
    """A legacy client that can answer forms: the gateway's elicitation/create goes out on the
    call's stream, the client's answer comes back in another POST; both are in the session,
    paired, and declining withdraws the approval (on record too)."""
    from mcp import types

    async def decline(_ctx: Any, _params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    token = gateway.token("eliciting-agent", "developers")
    transport, http = http_transport(gateway, token)
    sql = "UPDATE customers SET name = 'never' WHERE id = 3"
    async with (
        http,
        Client(transport, mode="legacy", cache=None, elicitation_callback=decline) as client,
    ):
        withdrawn = await client.call_tool("sql_query", {"sql": sql})
        assert withdrawn.is_error and "withdrawn" in text_of(withdrawn)
    path = db_file(gateway)
    session = wait_for(
        lambda: [s for s in sessions_of(path, "eliciting-agent") if s.ended_at is not None]
    )[0]
    events = wait_for(
        lambda: (
            (e := read_store(path, session.id))
            and any(x.event.data.get("event") == "withdrawn" for x in e)
            and e
        )
    )
    assert_same_messages(messages(events, "in"), transport.sent)
    assert_same_messages(messages(events, "out"), transport.received)
    asked = next(e for e in events if e.event.method == "elicitation/create")
    assert str(asked.event.direction) == "out"
    answer = next(
        e
        for e in events
        if str(e.event.direction) == "in"
        and e.event.request_id == asked.event.request_id
        and "result" in e.event.data["message"]
    )
    assert answer.event.method == "elicitation/create" and answer.event.duration_ms is not None
    approvals = [e.event.data["event"] for e in events if e.event.kind == EventKind.APPROVAL]
    assert approvals == ["created", "withdrawn"]
    assert [e.event.decision for e in events if e.event.kind == EventKind.APPROVAL] == [
        None,
        "deny",
    ]
