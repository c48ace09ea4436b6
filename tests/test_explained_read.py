"""`explained_read` against a real PostgreSQL: the EXPLAIN executes nothing, the read runs in
the very transaction its EXPLAIN ran in, a failed EXPLAIN gives its connection back at once,
and the estimate is the planner's own.

Side effects of a read are made observable with advisory locks (a READ ONLY transaction
refuses anything that writes, so a lock is what a read can leave behind): a separate
superuser connection watches `pg_locks` and `pg_stat_activity` of the gateway's pool, which
PostgreSQL names by its `application_name`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
import pytest

from mcp_gate.inspect.sql import inspect_sql
from mcp_gate.sqltools import QueryError, create_pool, explain, run_read
from mcp_gate.sqltools.estimate import estimate_rows
from mcp_gate.sqltools.execute import explained_read
from pgserver import TestDatabase, connected, reader_database
from pool_helpers import pool_backends, reader_pool

pytestmark = pytest.mark.anyio

POOL_SIZE = 2
LOCK_KEY = 7_310_001  # an advisory key below 2**32: pg_locks shows it as objid, classid 0
LIMITS = {"statement_timeout_ms": 5000, "lock_timeout_ms": 1000, "idle_timeout_ms": 10_000}
ROWS = 5000

SCHEMA = f"""
CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, label text NOT NULL);
INSERT INTO items SELECT g, g % 10, 'item ' || g FROM generate_series(1, {ROWS}) g;
ANALYZE items;
-- Mislabelled IMMUTABLE on purpose: the planner folds immutable calls on constants, so
-- EXPLAIN SELECT slow_to_plan(5) sleeps while planning (a statement_timeout during EXPLAIN).
CREATE FUNCTION slow_to_plan(seconds float8) RETURNS int LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN PERFORM pg_catalog.pg_sleep(seconds); RETURN 1; END $$;
"""


@dataclass(frozen=True)
class Env:
    db: TestDatabase
    reader_dsn: str  # the SELECT-only role, password in `password` (as the gateway has it)
    password: str


@pytest.fixture(scope="module")
def env(module_db: TestDatabase) -> Iterator[Env]:
    with reader_database(module_db, SCHEMA) as (dsn, password):
        yield Env(module_db, dsn, password)


@pytest.fixture
async def pool(env: Env) -> AsyncIterator[Any]:
    """The gateway's pool as `serve` makes it (reader role, application_name mcp-gate)."""
    async with reader_pool(env.reader_dsn, env.password, POOL_SIZE) as gate_pool:
        yield gate_pool


@pytest.fixture
async def observer(env: Env) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection outside the pool, watching it."""
    async with connected(env.db.dsn) as conn:
        yield conn


async def vxid_of(observer: asyncpg.Connection, pid: int) -> str | None:
    """The virtual transaction id `pid` is in (None outside a transaction)."""
    return await observer.fetchval(
        "SELECT virtualtransaction FROM pg_locks WHERE pid = $1 AND locktype = 'virtualxid'", pid
    )


async def advisory_holders(observer: asyncpg.Connection) -> list[tuple[int, str, bool]]:
    """(pid, virtual transaction, granted) of every lock taken or wanted on LOCK_KEY."""
    rows = await observer.fetch(
        "SELECT pid, virtualtransaction, granted FROM pg_locks"
        " WHERE locktype = 'advisory' AND classid = 0 AND objid = $1 AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        LOCK_KEY,
    )
    return [(r["pid"], r["virtualtransaction"], r["granted"]) for r in rows]


# --------------------------------------------------------------------------- nothing runs


async def test_explain_executes_nothing_and_the_read_does(pool, observer) -> None:
    """Another session holds the advisory lock first. A statement that would wait for it is
    explained promptly (by `explain` alone and by `explained_read`), without queueing for the
    lock: EXPLAIN did not call the function. Running the read does call it: it waits, then
    fails on the transaction's lock_timeout, so the function really is a side effect."""
    sql = (
        f"SELECT pg_catalog.pg_advisory_xact_lock({LOCK_KEY}) AS locked, id FROM items WHERE id = 1"
    )
    holder = observer
    assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
    try:
        with anyio.fail_after(LIMITS["lock_timeout_ms"] / 1000 * 0.8):
            plan = await explain(pool, sql, **LIMITS)
        assert plan["estimated_rows"] == 1
        async with explained_read(pool, sql, None, **LIMITS) as read:
            assert read.error is None and read.plan is not None
            assert read.plan["estimated_rows"] == 1
            # Explained, not run: nobody queues for the lock, nobody waits on one.
            assert [h[0] for h in await advisory_holders(observer)] == [holder.get_server_pid()]
            assert all(b["wait_event_type"] != "Lock" for b in await pool_backends(observer))
            with pytest.raises(QueryError) as failed:
                await read.fetch(max_rows=10)
        assert failed.value.sqlstate == "55P03"  # lock_not_available: the read ran and waited
    finally:
        await holder.execute("SELECT pg_advisory_unlock_all()")
    assert await advisory_holders(observer) == []


async def test_the_read_runs_in_the_transaction_its_explain_ran_in(pool, observer) -> None:
    """Same transaction, shown from outside: while the block is open, exactly one pooled
    backend is in a transaction, having last run the EXPLAIN; its pid and virtual transaction
    id (backend id / local transaction counter, new for every transaction of a backend) are
    noted. The lock is free then (a second session takes and drops it), so EXPLAIN took
    nothing. The read then returns `pg_backend_pid()` = that pid, and the advisory lock it
    took is held under that same virtual transaction id, which the backend still has. After
    the block the transaction is rolled back: the lock is gone, the backend idle."""
    sql = (
        f"SELECT pg_catalog.pg_advisory_xact_lock({LOCK_KEY}) AS locked,"
        " pg_catalog.pg_backend_pid() AS pid, id FROM items WHERE id = 1"
    )
    async with explained_read(pool, sql, None, **LIMITS) as read:
        assert read.error is None and read.plan is not None
        busy = [b for b in await pool_backends(observer) if b["state"] != "idle"]
        assert len(busy) == 1, busy
        assert busy[0]["state"] == "idle in transaction"
        assert busy[0]["query"].startswith("EXPLAIN (FORMAT JSON)")
        pid = busy[0]["pid"]
        vxid = await vxid_of(observer, pid)
        assert vxid is not None
        assert await advisory_holders(observer) == []
        assert await observer.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
        assert await observer.fetchval("SELECT pg_advisory_unlock($1)", LOCK_KEY)

        result = await read.fetch(max_rows=10)

        assert [row[1:] for row in result.rows] == [(pid, 1)]
        assert await advisory_holders(observer) == [(pid, vxid, True)]
        assert await vxid_of(observer, pid) == vxid
        assert not await observer.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
    await pool.wait_released()  # the ROLLBACK runs in the background after the block
    assert await advisory_holders(observer) == []
    assert {b["state"] for b in await pool_backends(observer)} == {"idle"}


# --------------------------------------------------------------------------- failures


FAILURES = {
    "invalid input": ("SELECT id FROM items WHERE id = 'not a number'", "22P02", "invalid input"),
    "syntax": ("SELECT id FROM items WHERE", "42601", "syntax error"),
    "missing table": ("SELECT * FROM no_such_table", "42P01", "does not exist"),
    "timeout while planning": ("SELECT slow_to_plan(5) AS x", "57014", "statement timeout"),
    # Hostile: the database's message would quote the role's password back.
    "echoes the password": ('SELECT * FROM "{password}"', "42P01", "does not exist"),
}


@pytest.mark.parametrize("case", FAILURES)
async def test_a_failed_explain_frees_its_connection(env: Env, pool, observer, case: str) -> None:
    """The failed EXPLAIN's connection is back in the pool while the caller still holds the
    block (it decides on the unknown estimate meanwhile): no pooled backend is in a
    transaction, and POOL_SIZE reads at once each get one. Afterwards POOL_SIZE + 1 reads
    explain and run. The error is PostgreSQL's, with its SQLSTATE, and never the password."""
    template, sqlstate, wording = FAILURES[case]
    sql = template.format(password=env.password)
    limits = {**LIMITS, "statement_timeout_ms": 300}
    with anyio.fail_after(10):
        async with explained_read(pool, sql, None, **limits) as read:
            assert read.plan is None
            assert isinstance(read.error, QueryError), read.error
            assert read.error.sqlstate == sqlstate, read.error
            text = f"{read.error} {read.error!r} {read.error.detail} {read.error.hint}"
            assert wording in str(read.error)
            assert env.password not in text
            assert "Traceback" not in text and "asyncpg" not in text
            assert {b["state"] for b in await pool_backends(observer)} == {"idle"}
            reads = [
                run_read(pool, f"SELECT {i} AS n", None, max_rows=1, **LIMITS)
                for i in range(POOL_SIZE)
            ]
            results = await asyncio.gather(*reads)
            assert [r.rows for r in results] == [[(i,)] for i in range(POOL_SIZE)]
            # Fetching anyway runs the plain read recipe, which reports its own error.
            with pytest.raises(QueryError) as again:
                await read.fetch(max_rows=1)
            assert again.value.sqlstate == sqlstate
            assert env.password not in str(again.value)
        for i in range(POOL_SIZE + 1):
            async with explained_read(pool, f"SELECT {i} AS n", None, **LIMITS) as ok:
                assert ok.plan is not None, ok.error
                assert (await ok.fetch(max_rows=1)).rows == [(i,)]
    await pool.wait_released()  # the ROLLBACK runs in the background after the block
    backends = await pool_backends(observer)
    assert len(backends) == POOL_SIZE and {b["state"] for b in backends} == {"idle"}


# --------------------------------------------------------------------------- the estimate


ESTIMATED = [
    ("SELECT id, label FROM items WHERE grp = 3", []),
    ("SELECT id FROM items WHERE id < $1", [1234]),
    ("SELECT a.id FROM items a JOIN items b ON a.grp = b.grp WHERE a.id < 100", []),
    ("SELECT grp, count(*) FROM items GROUP BY grp", []),
]


def top(plan_json: Any) -> dict[str, Any]:
    plan = json.loads(plan_json) if isinstance(plan_json, str) else plan_json
    return plan[0]["Plan"]


@pytest.mark.parametrize(("sql", "params"), ESTIMATED)
async def test_the_estimate_is_the_planners(pool, observer, sql: str, params: list) -> None:
    """The rows and cost the gateway reports are those of the plan PostgreSQL gives for the
    same statement and parameters to an EXPLAIN run here, on every path that estimates."""
    own = top(await observer.fetchval("EXPLAIN (FORMAT JSON) " + sql, *params))
    async with explained_read(pool, sql, params or None, **LIMITS) as read:
        assert read.plan is not None, read.error
        assert read.plan["estimated_rows"] == own["Plan Rows"]
        assert read.plan["estimated_cost"] == own["Total Cost"]
        assert top(read.plan["plan"]) == own
    alone = await explain(pool, sql, params or None, **LIMITS)
    assert (alone["estimated_rows"], alone["estimated_cost"]) == (
        own["Plan Rows"],
        own["Total Cost"],
    )
    estimate = await estimate_rows(
        inspect_sql(sql),
        params or None,
        read_pool=pool,
        write_pool=None,
        connection="demo",
        statement_timeout_ms=LIMITS["statement_timeout_ms"],
        lock_timeout_ms=LIMITS["lock_timeout_ms"],
    )
    assert (estimate.rows, estimate.problem) == (own["Plan Rows"], None)


async def test_a_dml_estimate_counts_the_rows_it_would_touch(env: Env, observer) -> None:
    """For DML the estimate is the rows the planner feeds the ModifyTable node (explained on
    the write pool, here a superuser one), and explaining it deletes nothing."""
    sql = "DELETE FROM items WHERE grp = 4"
    plan = json.loads(await observer.fetchval("EXPLAIN (FORMAT JSON) " + sql))[0]["Plan"]
    assert plan["Node Type"] == "ModifyTable"
    (feeding,) = [p for p in plan["Plans"] if p["Parent Relationship"] == "Outer"]
    writer = await create_pool(env.db.dsn, password=None, min_size=1, max_size=1, name="w")
    try:
        estimate = await estimate_rows(
            inspect_sql(sql),
            None,
            read_pool=None,
            write_pool=writer,
            connection="demo",
            statement_timeout_ms=LIMITS["statement_timeout_ms"],
            lock_timeout_ms=LIMITS["lock_timeout_ms"],
        )
    finally:
        await writer.close()
    assert (estimate.rows, estimate.problem) == (feeding["Plan Rows"], None)
    assert 400 <= estimate.rows <= 600
    assert await observer.fetchval("SELECT count(*) FROM items") == ROWS


async def test_a_transaction_ended_while_deciding_still_gives_the_read(pool, observer) -> None:
    """The caller may take a while between EXPLAIN and fetch (its decision is committed in
    between). If the server ends the idle explained transaction meanwhile, the read, which
    has not run, still runs, and the pool stays whole."""
    limits = {**LIMITS, "idle_timeout_ms": 200}
    async with explained_read(pool, "SELECT id FROM items WHERE id = 2", None, **limits) as read:
        assert read.plan is not None
        await asyncio.sleep(0.6)  # past idle_in_transaction_session_timeout
        result = await read.fetch(max_rows=10)
        assert result.rows == [(2,)]
    for i in range(POOL_SIZE + 1):
        assert (await run_read(pool, f"SELECT {i} AS n", None, max_rows=1, **LIMITS)).rows == [(i,)]
