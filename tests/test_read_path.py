"""The read path's round trips (real PostgreSQL): the connection's rollback, reset and release
run in a task the pool tracks while the result goes back, and a repeated read text reuses the
connection's cached prepared statement, never across a search_path or schema change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import asyncpg
import pytest

from mcp_gate.sqltools import create_pool, run_read
from mcp_gate.sqltools.errors import FieldCountMismatch
from mcp_gate.sqltools.execute import explained_read
from pgserver import TestDatabase, admin_execute, connected, reader_database
from pool_helpers import pool_backends, reader_pool

pytestmark = pytest.mark.anyio

LIMITS = {"statement_timeout_ms": 5000, "lock_timeout_ms": 1000, "idle_timeout_ms": 10_000}
SCHEMAS = ("public", "sa", "sb")


@pytest.fixture(scope="module")
def reader(module_db: TestDatabase) -> Iterator[tuple[str, str]]:
    """A SELECT-only role on `public`, `sa` and `sb`, each with its own table `t`."""
    with reader_database(
        module_db,
        "CREATE SCHEMA sa",
        "CREATE SCHEMA sb",
        "CREATE TABLE public.items (id int PRIMARY KEY)",
        "INSERT INTO public.items SELECT generate_series(1, 10)",
        "CREATE TABLE sa.t (v int)",
        "INSERT INTO sa.t VALUES (1)",
        "CREATE TABLE sb.t (v int)",
        "INSERT INTO sb.t VALUES (2)",
        schemas=SCHEMAS,
    ) as credentials:
        yield credentials


@pytest.fixture
async def pool(reader: tuple[str, str]) -> AsyncIterator[Any]:
    """A pool of one connection: every read of a test meets the previous one's statements."""
    async with reader_pool(*reader) as gate_pool:
        yield gate_pool


@pytest.fixture
async def observer(module_db: TestDatabase) -> AsyncIterator[asyncpg.Connection]:
    async with connected(module_db.dsn) as conn:
        yield conn


async def read(pool: Any, sql: str, *, search_path: str = "public", **kw: Any) -> Any:
    return await run_read(pool, sql, kw.pop("params", None), max_rows=100, search_path=search_path,
                          **LIMITS, **kw)  # fmt: skip


async def ddl(pool: Any, module_db: TestDatabase, *statements: str) -> None:
    """Test-owned DDL once the previous read's background ROLLBACK released its locks (the
    admin call blocks the event loop, which would otherwise keep that ROLLBACK from running)."""
    await pool.wait_released()
    admin_execute(module_db.dsn, *statements)


# --------------------------------------------------------------------------- release


async def test_the_result_returns_before_the_rollback_which_the_pool_tracks(pool, observer) -> None:
    """Right after a read returns, its ROLLBACK and reset are still pending in the pool's
    task set (nothing of it has run: the read's transaction still holds its advisory lock);
    `wait_released` brings the connection back idle, reset, the lock gone."""
    sql = "SELECT pg_catalog.pg_advisory_xact_lock(7001) AS locked, pg_catalog.pg_backend_pid()"
    result = await read(pool, sql)
    pid = result.rows[0][1]
    assert len(pool._releasing) == 1  # not awaited by the read
    await pool.wait_released()
    assert not pool._releasing
    [seen] = await pool_backends(observer)
    assert (seen["pid"], seen["state"]) == (pid, "idle")
    assert seen["query"].startswith("ROLLBACK;\nRESET ROLE;")
    assert not await observer.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7001"
    )
    assert (await read(pool, "SELECT pg_catalog.pg_backend_pid()")).rows == [(pid,)]


async def test_a_failed_cleanup_terminates_the_connection(pool, observer, module_db, caplog):
    """The backend is killed after the rows came back and before the background ROLLBACK
    ran (the blocking admin call keeps the event loop from starting it): the cleanup fails,
    the connection is terminated instead of pooled, that is logged, and the next read gets a
    fresh backend."""
    pid = (await read(pool, "SELECT pg_catalog.pg_backend_pid()")).rows[0][0]
    admin_execute(module_db.dsn, f"SELECT pg_terminate_backend({int(pid)}, 5000)")
    with caplog.at_level(logging.WARNING, logger="mcp_gate.sqltools.execute"):
        await pool.wait_released()
    assert "cleanup failed, terminating the connection" in caplog.text
    fresh = (await read(pool, "SELECT pg_catalog.pg_backend_pid()")).rows[0][0]
    assert fresh != pid
    await pool.wait_released()
    assert [(b["pid"], b["state"]) for b in await pool_backends(observer)] == [(fresh, "idle")]


async def test_close_waits_for_pending_releases(reader, observer) -> None:
    """Closing the pool right after a read returns: the pending release runs first (no task
    left, none cancelled, no error logged), then the connection is closed."""
    dsn, password = reader
    gate_pool = await create_pool(dsn, password=password, min_size=1, max_size=1)
    tasks = []
    try:
        await read(gate_pool, "SELECT 1")
        tasks = list(gate_pool._releasing)
        assert len(tasks) == 1 and not tasks[0].done()
    finally:
        await gate_pool.close()
    assert tasks[0].done() and not tasks[0].cancelled() and tasks[0].exception() is None
    assert not gate_pool._releasing
    for _ in range(50):  # the backend exits just after the client closed its socket
        if not await pool_backends(observer):
            break
        await asyncio.sleep(0.05)
    assert await pool_backends(observer) == []


async def test_terminate_cancels_pending_releases(reader) -> None:
    dsn, password = reader
    gate_pool = await create_pool(dsn, password=password, min_size=1, max_size=1)
    await read(gate_pool, "SELECT 1")
    [task] = gate_pool._releasing
    gate_pool.terminate()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not gate_pool._releasing


async def test_more_reads_than_connections(pool) -> None:
    """N + 1 concurrent reads on a pool of N (= 1), and sequential ones: each waits for the
    previous read's background release, none times out."""
    with anyio.fail_after(10):
        results = await asyncio.gather(*(read(pool, f"SELECT {i} AS n") for i in range(2)))
        assert [r.rows for r in results] == [[(0,)], [(1,)]]
        for i in range(5):
            assert (await read(pool, "SELECT $1::int AS n", params=[i])).rows == [(i,)]


async def test_a_cancelled_read_is_rolled_back(pool, observer) -> None:
    with anyio.move_on_after(0.3):
        await read(pool, "SELECT pg_catalog.pg_sleep(5)")
    await pool.wait_released()
    assert {b["state"] for b in await pool_backends(observer)} == {"idle"}
    assert (await read(pool, "SELECT 1 AS n")).rows == [(1,)]


# --------------------------------------------------------------------------- statement cache


async def test_a_repeated_text_reuses_its_prepared_statement(pool) -> None:
    """The connection's server-side prepared statement for the text ran three times and was
    parsed once: the repeats sent only Bind/Execute."""
    sql = "SELECT id FROM items WHERE id = $1"
    for i in (1, 2, 3):
        assert (await read(pool, sql, params=[i])).rows == [(i,)]
    found = await read(
        pool,
        "SELECT generic_plans + custom_plans FROM pg_catalog.pg_prepared_statements"
        " WHERE statement = $1",
        params=[sql],
    )
    assert found.rows == [(3,)]


async def test_a_cached_text_reads_the_tables_of_its_own_search_path(pool) -> None:
    """Same text, same connection, other search_path: each call reads its own schema's `t`
    (PostgreSQL re-analyses the cached statement under the new path)."""
    sql = "SELECT v FROM t"
    for _ in range(2):
        assert (await read(pool, sql, search_path="sa, pg_catalog")).rows == [(1,)]
        assert (await read(pool, sql, search_path="sb, pg_catalog")).rows == [(2,)]


async def test_other_columns_under_another_search_path(pool, module_db) -> None:
    """The other schema's table has other columns: the server refuses the cached statement,
    the read runs again prepared afresh, and the column check sees the new columns."""
    await ddl(
        pool,
        module_db,
        "CREATE TABLE sa.u (v int)",
        "INSERT INTO sa.u VALUES (1)",
        "CREATE TABLE sb.u (v text, w text)",
        "INSERT INTO sb.u VALUES ('two', 'x')",
    )
    sql = "SELECT * FROM u"
    first = await read(pool, sql, search_path="sa", expected_columns=1)
    assert ([c.name for c in first.columns], first.rows) == (["v"], [(1,)])
    second = await read(pool, sql, search_path="sb", expected_columns=2)
    assert ([c.name for c in second.columns], second.rows) == (["v", "w"], [("two", "x")])
    with pytest.raises(FieldCountMismatch):
        await read(pool, sql, search_path="sa", expected_columns=2)
    assert (await read(pool, sql, search_path="sa", expected_columns=1)).rows == [(1,)]


async def test_a_schema_change_between_calls(pool, module_db) -> None:
    """ADD COLUMN under a cached `SELECT *`: the next read returns the new column, and a
    caller still expecting the old count gets FieldCountMismatch before any row; DROP +
    CREATE of the same name: the new table's rows."""
    await ddl(pool, module_db, "CREATE TABLE public.s (a int)", "INSERT INTO s VALUES (1)")
    sql = "SELECT * FROM s"
    assert (await read(pool, sql, expected_columns=1)).rows == [(1,)]
    await ddl(pool, module_db, "ALTER TABLE s ADD COLUMN b text DEFAULT 'b'")
    with pytest.raises(FieldCountMismatch):
        await read(pool, sql, expected_columns=1)
    assert (await read(pool, sql, expected_columns=2)).rows == [(1, "b")]
    await ddl(
        pool,
        module_db,
        "DROP TABLE s",
        "CREATE TABLE public.s (a int, b text)",
        "INSERT INTO s VALUES (5, 'new')",
    )
    assert (await read(pool, sql, expected_columns=2)).rows == [(5, "new")]
    # Same columns, other types: refused as cached, read again.
    await ddl(
        pool,
        module_db,
        "DROP TABLE s",
        "CREATE TABLE public.s (a text, b int)",
        "INSERT INTO s VALUES ('x', 9)",
    )
    assert (await read(pool, sql, expected_columns=2)).rows == [("x", 9)]


async def test_an_explained_read_after_a_schema_change(pool, module_db) -> None:
    """The explained transaction's cached statement is outdated: the read gives that
    connection back and runs afresh (on the pool's only connection: no wait for a second)."""
    await ddl(pool, module_db, "CREATE TABLE public.e (a int)", "INSERT INTO e VALUES (1)")
    sql = "SELECT * FROM e"
    assert (await read(pool, sql)).rows == [(1,)]
    await ddl(pool, module_db, "ALTER TABLE e ALTER COLUMN a TYPE text")
    with anyio.fail_after(5):
        async with explained_read(pool, sql, None, search_path="public", **LIMITS) as ex:
            assert ex.plan is not None, ex.error
            result = await ex.fetch(max_rows=10, expected_columns=1)
    assert result.rows == [("1",)]


async def test_a_renamed_column_under_a_cached_statement(pool, module_db) -> None:
    """RENAME COLUMN keeps the count and types: the columns reported are the new names."""
    await ddl(pool, module_db, "CREATE TABLE public.r (a int)", "INSERT INTO r VALUES (1)")
    sql = "SELECT * FROM r"
    assert [c.name for c in (await read(pool, sql)).columns] == ["a"]
    await ddl(pool, module_db, "ALTER TABLE r RENAME COLUMN a TO z")
    result = await read(pool, sql, expected_columns=1)
    assert ([c.name for c in result.columns], result.rows) == (["z"], [(1,)])
