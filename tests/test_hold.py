"""The requester's side of a held call (`gateway/hold.py`) against real approval stores:
a store that fails mid-call, and an approval that expires before it runs."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import types

from mcp_gate.approvals import ApprovalService, PostgresApprovalStore, SqliteApprovalStore
from mcp_gate.calls import Principal, ToolCall
from mcp_gate.gateway.approval_state import ApprovalStateCodec
from mcp_gate.gateway.hold import Approvals, Interaction, hold
from mcp_gate.gateway.results import DECISION_META_KEY
from mcp_gate.inspect.model import Inspection
from mcp_gate.policy.engine import Decision
from mcp_gate.policy.model import ApprovalSettings
from pgserver import TestDatabase, admin_execute, quote_ident, quote_literal, unique_name

ALICE = Principal("alice", frozenset({"developers"}))
BOB = Principal("bob", frozenset({"dba"}))
CALL = ToolCall("execute_sql", {"sql": "DELETE FROM orders WHERE id = 1"}, connection="main")
DECISION = Decision(
    decision="review",
    deciding=("writes need a DBA",),
    matched=(),
    exempted=(),
    default_used=False,
    risks=("write",),
    approvers=("dba",),
    quorum=1,
    unknown=(),
    policy_version="v1",
)


class Runs:
    """The executor stand-in: counts how often the held call actually ran."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> types.CallToolResult:
        self.count += 1
        return types.CallToolResult(content=[types.TextContent(type="text", text="ran")])


def approvals(service: ApprovalService, wait: float = 5.0, expires: float = 60.0) -> Approvals:
    settings = ApprovalSettings(approvers=["dba"], wait=wait, expires=expires)
    return Approvals(service, ApprovalStateCodec(secrets.token_bytes(32)), lambda: settings)


async def held(approvals: Approvals, interaction: Interaction, runs: Runs) -> Any:
    return await hold(approvals, ALICE, CALL, Inspection(), DECISION, interaction, runs)


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def assert_store_failure(result: Any, *forbidden: str) -> None:
    assert isinstance(result, types.CallToolResult) and result.is_error
    text = text_of(result)
    assert text.startswith(
        "mcp-gate: the approval store is unavailable, so the call was not run: "
    ), text
    for word in forbidden:
        assert word not in text, (word, text)
    meta = (result.meta or {})[DECISION_META_KEY]
    assert meta["decision"] == "review" and "writes need a DBA" in meta["reasons"]


@pytest.mark.anyio
async def test_sqlite_store_closed_mid_call_fails_closed(tmp_path: Path) -> None:
    store = SqliteApprovalStore(tmp_path / "approvals.db")
    service = ApprovalService(store)
    await service.start()
    runs = Runs()

    async def close_then_approve(*_: Any) -> None:
        # The store goes away while the call waits; an approval can no longer reach it.
        await store.close()

    try:
        result = await held(approvals(service), Interaction(progress=close_then_approve), runs)
    finally:
        await service.aclose()
    assert_store_failure(result, str(tmp_path))
    assert runs.count == 0


@pytest.mark.anyio
async def test_sqlite_store_closed_before_the_request_fails_closed(tmp_path: Path) -> None:
    service = ApprovalService(SqliteApprovalStore(tmp_path / "approvals.db"))
    await service.start()
    await service.store.close()
    runs = Runs()
    try:
        result = await held(approvals(service), Interaction(), runs)
    finally:
        await service.aclose()
    assert_store_failure(result, str(tmp_path))
    assert runs.count == 0


@pytest.mark.anyio
async def test_postgres_outage_mid_call_names_no_host_nor_password(
    module_db: TestDatabase,
) -> None:
    schema = unique_name("hold")
    admin_execute(module_db.dsn, f"CREATE SCHEMA {quote_ident(schema)}")
    dsn = module_db.dsn + ("&" if "?" in module_db.dsn else "?") + f"search_path={schema}"
    store = PostgresApprovalStore(dsn, min_size=2, connect_attempts=1, connect_timeout=2)
    service = ApprovalService(store)
    await service.start()
    db = quote_ident(module_db.name)
    runs = Runs()

    async def outage(*_: Any) -> None:
        admin_execute(
            module_db.admin_dsn,
            f"ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = {quote_literal(module_db.name)} AND pid <> pg_backend_pid()",
        )
        await anyio.sleep(0.2)  # the pool notices its connections are gone

    try:
        result = await held(approvals(service), Interaction(progress=outage), runs)
    finally:
        admin_execute(module_db.admin_dsn, f"ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true")
        await service.aclose()
    host = store.target.split("@")[-1].split("/")[0]
    assert_store_failure(result, host, host.split(":")[0], store.target, "127.0.0.1")
    assert runs.count == 0


@pytest.mark.anyio
async def test_approved_then_expired_says_who_approved(tmp_path: Path) -> None:
    async with ApprovalService(SqliteApprovalStore(tmp_path / "approvals.db")) as service:
        runs = Runs()

        async def approve_then_let_it_expire(*_: Any) -> None:
            (pending,) = await service.list("pending")
            await service.decide(pending.id, BOB, True, "ok")
            # Past expires_at before the gateway gets to run it: approved → expired.
            await anyio.sleep(max(0.0, pending.expires_at - time.time()) + 0.05)

        result = await held(
            approvals(service, wait=5.0, expires=0.5),
            Interaction(progress=approve_then_let_it_expire),
            runs,
        )
        assert isinstance(result, types.CallToolResult) and result.is_error
        text = text_of(result)
        assert "was approved by bob but expired before it ran" in text, text
        assert "call again to request a new approval" in text
        assert "without a decision" not in text
        assert runs.count == 0
        (expired,) = await service.list("expired")
        assert (result.meta or {})[DECISION_META_KEY]["approval_id"] == expired.id


@pytest.mark.anyio
async def test_expired_without_a_decision_still_says_so(tmp_path: Path) -> None:
    async with ApprovalService(SqliteApprovalStore(tmp_path / "approvals.db")) as service:
        runs = Runs()

        async def let_it_expire(*_: Any) -> None:
            (pending,) = await service.list("pending")
            await anyio.sleep(max(0.0, pending.expires_at - time.time()) + 0.05)

        result = await held(
            approvals(service, wait=5.0, expires=0.3), Interaction(progress=let_it_expire), runs
        )
        assert "expired without a decision; the call was not run" in text_of(result)
        assert runs.count == 0
