"""A gateway restart with requests pending: a real `mcp-gate serve` process holds a call, is
stopped with SIGTERM and started again on the same store. The request is still pending, its
approval lets the identical call run exactly once; a request whose expiry passed while the
gateway was down is expired as soon as the gateway is back."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from approval_helpers import admin, db_value
from gateway_helpers import Gateway, text_of
from pgserver import admin_execute
from shop_helpers import Shop, sample_policy, sample_shop, shop_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shop(pg_dsn: str) -> Iterator[Shop]:
    """The sample database with a `ledger` table the held writes insert into."""
    with sample_shop(pg_dsn, "test_restart") as shop:
        admin_execute(
            shop.dsn,
            "CREATE TABLE ledger (id serial PRIMARY KEY, note text NOT NULL)",
            f'GRANT SELECT ON ledger TO "{shop.reader_role}"',
            f'GRANT SELECT, INSERT ON ledger TO "{shop.writer_role}"',
            f'GRANT USAGE ON SEQUENCE ledger_id_seq TO "{shop.writer_role}"',
        )
        yield shop


def serve(shop: Shop, folder: Path, expires: str) -> contextlib.AbstractContextManager[Gateway]:
    """`mcp-gate serve` over `folder`: every start uses the same store (the SQLite file under
    `folder`) and, for the same `expires`, the same policy text, so the same policy version."""
    return shop_gateway(shop, folder, sample_policy(wait='"1s"', expires=f'"{expires}"'))


def stopped_cleanly(gateway: Gateway) -> bool:
    assert gateway.process is not None
    return gateway.process.returncode == 0


def ledger(shop: Shop, note: str) -> int:
    return db_value(shop.dsn, f"SELECT count(*) FROM ledger WHERE note = '{note}'")


def stored_status(folder: Path, approval_id: str, wanted: str, timeout: float = 10) -> str:
    """The request's status in the SQLite store itself (not through the gateway), polled
    until it is `wanted` or `timeout` passes."""
    path = folder / ".mcp-gate" / "gate.db"  # the default `[server] store`
    assert path.exists()
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT status FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row[0] == wanted or time.monotonic() > deadline:
            return row[0]
        time.sleep(0.05)


async def held_call(gateway: Gateway, sql: str, token: str | None = None) -> str:
    """The agent's write; no elicitation, so after `wait` it comes back still pending."""
    async with gateway.client(token or gateway.token("agent", "developers"), "legacy") as client:
        result = await client.call_tool("sql_query", {"sql": sql})
    assert result.is_error and "still waiting for approval by dba" in text_of(result)
    return result.meta["io.mcp-gate/decision"]["approval_id"]


@pytest.mark.anyio
async def test_pending_survives_restart_and_runs_once(shop: Shop, tmp_path: Path) -> None:
    sql = "INSERT INTO ledger (note) VALUES ('restart-once')"
    with serve(shop, tmp_path, "1h") as first:
        approval_id = await held_call(first, sql)
    assert stopped_cleanly(first)
    assert stored_status(tmp_path, approval_id, "pending", timeout=0) == "pending"
    assert ledger(shop, "restart-once") == 0

    with serve(shop, tmp_path, "1h") as second:
        dba = second.token("dana", "dba")  # a new process: new tokens, same people
        pending = admin(second, dba, "GET", "/approvals?status=pending").json()["approvals"]
        assert [a["id"] for a in pending] == [approval_id]
        assert pending[0]["sql"] == sql and pending[0]["estimated_rows"] == 1
        done = admin(second, dba, "POST", f"/approvals/{approval_id}/approve", json={})
        assert done.status_code == 200 and done.json()["status"] == "approved", done.text

        async with second.client(second.token("agent", "developers"), "legacy") as client:
            ran = await client.call_tool("sql_query", {"sql": sql})
            assert not ran.is_error, text_of(ran)
            assert ran.meta["io.mcp-gate/decision"]["approval_id"] == approval_id
            assert ran.structured_content["affected_rows"] == 1
            # The approval is spent: the same call again is a new request, not a second run.
            again = await client.call_tool("sql_query", {"sql": sql})
        assert again.is_error and "still waiting" in text_of(again)
        assert again.meta["io.mcp-gate/decision"]["approval_id"] != approval_id
        record = admin(second, dba, "GET", f"/approvals/{approval_id}").json()
        assert record["status"] == "executed" and record["decisions"][0]["approver"] == "dana"
    assert ledger(shop, "restart-once") == 1


@pytest.mark.anyio
async def test_expiry_while_down_is_expired_at_start(shop: Shop, tmp_path: Path) -> None:
    sql = "INSERT INTO ledger (note) VALUES ('expired-while-down')"
    with serve(shop, tmp_path, "8s") as first:
        agent, dba = first.token("agent", "developers"), first.token("dana", "dba")
        approval_id = await held_call(first, sql, agent)
        listed = admin(first, dba, "GET", f"/approvals/{approval_id}")
        expires_at = datetime.fromisoformat(listed.json()["expires_at"]).timestamp()
    assert stopped_cleanly(first)
    assert time.time() < expires_at, "the gateway stopped after the request expired"
    time.sleep(max(0.0, expires_at - time.time()) + 0.2)  # it comes due while nothing runs

    with serve(shop, tmp_path, "8s") as second:
        # Expired by the gateway itself, before anybody asks for it (reads expire too).
        assert stored_status(tmp_path, approval_id, "expired") == "expired"
        dba = second.token("dana", "dba")
        record = admin(second, dba, "GET", f"/approvals/{approval_id}").json()
        assert record["status"] == "expired", record
        refused = admin(second, dba, "POST", f"/approvals/{approval_id}/approve", json={})
        assert refused.status_code == 409
        assert admin(second, dba, "GET", "/approvals?status=pending").json()["approvals"] == []
    assert ledger(shop, "expired-while-down") == 0
