"""A call held for approval holds nothing in the database: while a human decides, none of the
gateway's pooled connections is inside a transaction and none holds a lock, whatever the
EXPLAIN that priced the call left behind; after approval the call runs and the connections
are idle again.

A real `mcp-gate serve` over the sample shop, a real SDK client (legacy era, no elicitation:
the call blocks in the hold), a dba approving through the admin API. PostgreSQL is watched
from a separate superuser connection: `pg_stat_activity` and `pg_locks` of the backends whose
`application_name` is the gateway's, and a `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` that only
succeeds when no session holds a lock on the table (autovacuum excepted: it gives way).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from approval_helpers import admin, db_value, wait_pending
from gateway_helpers import Gateway, text_of
from mcp_gate.sqltools.pool import APPLICATION_NAME
from shop_helpers import Shop, sample_policy, sample_shop, shop_gateway

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SAMPLES = 5  # looks at the database while the call is held, SAMPLE_EVERY apart
SAMPLE_EVERY = 0.2


@pytest.fixture(scope="module")
def shop(pg_dsn: str) -> Iterator[Shop]:
    with sample_shop(pg_dsn, "test_held_conn") as made:
        yield made


@pytest.fixture(scope="module")
def gateway(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder: Path = tmp_path_factory.mktemp("held-connections")
    with shop_gateway(shop, folder, sample_policy(wait='"30s"')) as gw:
        yield gw


@dataclass(frozen=True)
class View:
    """What the gateway's sessions look like in PostgreSQL at one moment."""

    backends: list[dict[str, Any]]  # pid, role, state, backend_xid, xact_start
    locks: list[dict[str, Any]]  # every lock the gateway's backends hold or wait for
    table_free: bool  # LOCK TABLE orders IN ACCESS EXCLUSIVE MODE succeeded within 3 s

    def roles(self) -> set[str]:
        return {b["role"] for b in self.backends}

    def assert_idle(self) -> None:
        """No backend in a transaction, no lock held or awaited, the table lockable."""
        assert self.backends, "the gateway has no connection to watch"
        for backend in self.backends:
            assert backend["state"] == "idle", backend
            assert backend["xact_start"] is None and backend["backend_xid"] is None, backend
        assert self.locks == [], self.locks
        assert self.table_free


async def observe(db: str) -> View:
    """The gateway's backends and locks in `db`, seen from a fresh superuser session."""
    conn = await asyncpg.connect(db)
    try:
        backends = await conn.fetch(
            "SELECT pid, usename AS role, state, backend_xid::text, xact_start"
            " FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = $1 ORDER BY pid",
            APPLICATION_NAME,
        )
        locks = await conn.fetch(
            "SELECT l.pid, l.locktype, l.relation::regclass::text AS relation, l.mode, l.granted"
            " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE a.datname = current_database() AND a.application_name = $1",
            APPLICATION_NAME,
        )
        # Not NOWAIT: an autovacuum of the freshly loaded table holds a conflicting lock,
        # but gives way to a waiting lock request after deadlock_timeout (1 s); a lock
        # held by a gateway session would not, and times this out.
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '3s'")
                await conn.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            table_free = True
        except asyncpg.LockNotAvailableError:
            table_free = False
    finally:
        await conn.close()
    return View([dict(b) for b in backends], [dict(lk) for lk in locks], table_free)


HELD = {
    # Explained on the write pool (EXPLAIN checks the DELETE privilege), held for a dba.
    "delete": (
        "DELETE FROM orders WHERE status = 'cancelled' AND id % 13 = 5",
        "writes need a DBA",
    ),
    # Explained on the read pool inside the transaction the read would run in
    # (`explained_read`): the estimate (5000 × 2500 rows) holds it for "bulk export".
    "bulk read": (
        "SELECT o.id AS order_id, p.id AS payment_id FROM orders o CROSS JOIN payments p",
        "bulk export",
    ),
}


@pytest.mark.parametrize("case", HELD)
async def test_a_held_call_holds_no_transaction_and_no_lock(
    gateway: Gateway, shop: Shop, case: str
) -> None:
    sql, reason = HELD[case]
    doomed = "SELECT count(*) FROM orders WHERE status = 'cancelled' AND id % 13 = 5"
    before = db_value(shop.dsn, doomed)
    agent, dba = gateway.token("agent", "developers"), gateway.token("dana", "dba")
    seen: dict[str, Any] = {}

    async def approver() -> None:
        pending = await wait_pending(gateway, dba)
        seen["pending"] = pending
        seen["views"] = []
        for _ in range(SAMPLES):
            seen["views"].append(await observe(shop.dsn))
            await anyio.sleep(SAMPLE_EVERY)
        approved = await anyio.to_thread.run_sync(
            lambda: admin(
                gateway, dba, "POST", f"/approvals/{pending['id']}/approve", json={"reason": "ok"}
            )
        )
        assert approved.status_code == 200, approved.text

    async with gateway.client(agent, "legacy") as client, anyio.create_task_group() as tg:
        tg.start_soon(approver)
        with anyio.fail_after(60):
            result = await client.call_tool("sql_query", {"sql": sql})
        after = await observe(shop.dsn)

    assert seen["pending"]["sql"] == sql and seen["pending"]["reasons"][0] == reason
    assert seen["pending"]["estimated_rows"] > 0  # it was explained before it was held
    for view in seen["views"]:
        # Both pools are there to be watched (reader and writer), and all of them are idle.
        assert view.roles() == {shop.reader_role, shop.writer_role}, view.backends
        view.assert_idle()

    assert not result.is_error, text_of(result)
    assert result.meta["io.mcp-gate/decision"]["approval_id"] == seen["pending"]["id"]
    if case == "delete":
        assert result.structured_content["affected_rows"] == before > 0
        assert db_value(shop.dsn, doomed) == 0
    else:
        assert result.structured_content["row_count"] == 100  # max_rows of the connection
        assert result.structured_content["truncated"] is True
        assert db_value(shop.dsn, doomed) == before
    # The client has its answer: the connection that ran the call is back, idle.
    after.assert_idle()
