"""The built-in SQL layer against a real PostgreSQL (tests/pgserver.py).

The hostile statements run on a *superuser* pool as well as on the SELECT-only reader: that
proves the execution recipe (READ ONLY, extended protocol, snapshot, ROLLBACK) stops writes by
itself, not only the reader's missing grants.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import ipaddress
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
import asyncpg
import psutil
import pytest

from mcp_gate.sqltools import (
    Column,
    DatabaseUnavailable,
    FieldCountMismatch,
    QueryError,
    QueryResult,
    TableNotFound,
    create_pool,
    describe_table,
    explain,
    list_tables,
    redact_dsn,
    run_read,
    run_write,
    structured,
    text_table,
)
from mcp_gate.sqltools.dsn import describe_target, parse_kv_dsn, to_asyncpg_dsn
from mcp_gate.sqltools.results import iso_duration, json_value
from pgserver import (
    TestDatabase,
    admin_execute,
    create_reader_role,
    drop_role,
    dsn_with,
    free_port,
    run_sync,
    unique_name,
)

BIG_ROWS = 1_000_000
LIMITS = {"statement_timeout_ms": 5000, "lock_timeout_ms": 1000, "idle_timeout_ms": 5000}


@dataclass
class Env:
    db: TestDatabase
    reader: str  # role name
    reader_password: str
    reader_dsn: str  # without password
    elevated: str  # a role the reader is a member of


SCHEMA = f"""
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');
CREATE TABLE w (id int PRIMARY KEY, v text);
CREATE TABLE orgs (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (
    id serial PRIMARY KEY,
    email text NOT NULL DEFAULT 'x@example.com',
    org_id int REFERENCES orgs (id),
    created timestamptz DEFAULT now()
);
COMMENT ON TABLE users IS 'people';
COMMENT ON COLUMN users.email IS 'contact address';
CREATE UNIQUE INDEX users_email_idx ON users (email);
CREATE VIEW v_users AS SELECT id, org_id FROM users;
CREATE MATERIALIZED VIEW mv_orgs AS SELECT id FROM orgs;
CREATE TABLE "Mixed Case" (x int);
CREATE TYPE pair AS (k text, n int);
CREATE UNLOGGED TABLE big AS
    SELECT g AS id, md5(g::text) AS h FROM generate_series(1, {BIG_ROWS}) g;
ANALYZE big;
ANALYZE t;
CREATE SCHEMA private;
CREATE TABLE private.secret_tbl (s text);
"""


@pytest.fixture(scope="module")
def env(module_db: TestDatabase) -> Iterator[Env]:
    started = time.monotonic()
    admin_execute(module_db.dsn, SCHEMA)
    reader, elevated = unique_name("reader"), unique_name("elevated")
    password = "Rd-" + secrets.token_urlsafe(12)
    admin_execute(module_db.admin_dsn, f'CREATE ROLE "{elevated}" NOLOGIN')
    dsn = create_reader_role(
        module_db.admin_dsn, module_db.name, reader, password, member_of=(elevated,)
    )
    admin_execute(module_db.dsn, f'GRANT USAGE ON SCHEMA private TO "{elevated}"')
    print(f"\nsqltools fixture DB ready in {time.monotonic() - started:.2f}s")
    try:
        yield Env(module_db, reader, password, dsn_with(dsn, password=""), elevated)
    finally:
        admin_execute(module_db.dsn, f'DROP OWNED BY "{reader}", "{elevated}"')
        drop_role(module_db.admin_dsn, reader)
        drop_role(module_db.admin_dsn, elevated)


@pytest.fixture
async def reader_pool(env: Env) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(env.reader_dsn, password=env.reader_password, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def admin_pool(env: Env) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(env.db.dsn, password=None, max_size=2, name="admin")
    try:
        yield pool
    finally:
        await pool.close()


async def read(pool: asyncpg.Pool, sql: str, params: list | None = None, **kw) -> QueryResult:
    opts = {"max_rows": 1000, **LIMITS, **kw}
    return await run_read(pool, sql, params, **opts)


def admin_value(env: Env, sql: str):
    async def go():
        conn = await asyncpg.connect(env.db.dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return run_sync(go)


# --------------------------------------------------------------------------- reads


@pytest.mark.anyio
async def test_select_returns_rows(reader_pool) -> None:
    result = await read(reader_pool, "SELECT id, v FROM t WHERE id >= $1 ORDER BY id", [2])
    assert result.columns == [Column("id", "int4"), Column("v", "text")]
    assert result.rows == [(2, "b"), (3, "c")]
    assert result.row_count == 2 and not result.truncated
    assert result.elapsed_ms > 0
    # search_path is fixed: pg_catalog first, then public.
    path = await read(reader_pool, "SELECT current_setting('search_path')")
    assert path.rows == [("pg_catalog, public, pg_temp",)]
    app = await read(reader_pool, "SELECT current_setting('application_name')")
    assert app.rows == [("mcp-gate",)]


HOSTILE = [
    # (statement, acceptable SQLSTATEs)
    ("SELECT 1; DELETE FROM t", {"42601"}),
    ("COMMIT; INSERT INTO t VALUES (100, 'x')", {"42601"}),
    ("SET TRANSACTION READ WRITE; INSERT INTO t VALUES (101, 'x')", {"42601"}),
    ("SET TRANSACTION READ WRITE", {"25001"}),
    ("SELECT set_config('transaction_read_only', 'off', true)", {"25001"}),
    ("SET transaction_read_only = off", {"25001"}),
    ("INSERT INTO t VALUES (102, 'x')", {"25006"}),
    ("UPDATE t SET v = 'z'", {"25006"}),
    ("DELETE FROM t", {"25006"}),
    ("CREATE TEMP TABLE tmp_x (a int)", {"25006"}),
    ("SELECT * FROM t FOR UPDATE", {"25006"}),
    ("EXPLAIN ANALYZE DELETE FROM t", {"25006"}),
    ("DO $$ BEGIN INSERT INTO t VALUES (103, 'x'); END $$", {"25006"}),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {"25006"}),
    ("TRUNCATE t", {"25006"}),
    ("DROP TABLE t", {"25006"}),
]


@pytest.mark.anyio
@pytest.mark.parametrize("who", ["admin", "reader"])
async def test_hostile_statements_change_nothing(env, admin_pool, reader_pool, who) -> None:
    pool = admin_pool if who == "admin" else reader_pool
    for sql, states in HOSTILE:
        with pytest.raises(QueryError) as info:
            await read(pool, sql)
        if who == "admin":  # the reader may be stopped earlier by a permission check
            assert info.value.sqlstate in states, (sql, info.value.sqlstate, str(info.value))
        else:
            assert info.value.sqlstate in states | {"42501"}, (sql, info.value.sqlstate)
    # The two-step variant: the escape attempt alone, then a write in the next call.
    with pytest.raises(QueryError):
        await read(pool, "SET TRANSACTION READ WRITE")
    with pytest.raises(QueryError):
        await read(pool, "INSERT INTO t VALUES (104, 'x')")
    with pytest.raises(QueryError):
        await read(pool, "SELECT set_config('transaction_read_only', 'off', true)")
    with pytest.raises(QueryError):
        await read(pool, "INSERT INTO t VALUES (105, 'x')")
    # A lone COMMIT ends the READ ONLY transaction early but has nothing to commit.
    with pytest.raises(QueryError):
        await read(pool, "COMMIT")
    after = await read(pool, "SELECT count(*), max(id), string_agg(v, '' ORDER BY id) FROM t")
    assert after.rows == [(3, 3, "abc")]
    assert admin_value(env, "SELECT to_regclass('t') IS NOT NULL")
    assert admin_value(env, "SELECT count(*) FROM pg_class WHERE relname = 'tmp_x'") == 0


@pytest.mark.anyio
async def test_statement_timeout_cancels_quickly(reader_pool) -> None:
    started = time.monotonic()
    with pytest.raises(QueryError) as info:
        await read(reader_pool, "SELECT pg_sleep(5)", statement_timeout_ms=200)
    assert time.monotonic() - started < 2
    assert info.value.sqlstate == "57014"
    assert "statement timeout" in str(info.value)
    # The pooled connection is healthy afterwards.
    assert (await read(reader_pool, "SELECT 1")).rows == [(1,)]


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["asyncio", "anyio"])
async def test_cancellation_rolls_back_and_keeps_pool_clean(env, how) -> None:
    pool = await create_pool(env.reader_dsn, password=env.reader_password, max_size=1)
    try:
        pid = (await read(pool, "SELECT pg_backend_pid()")).rows[0][0]
        started = time.monotonic()
        if how == "asyncio":
            task = asyncio.ensure_future(read(pool, "SELECT pg_sleep(5)"))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:  # anyio cancellation is level-triggered: cleanup must be shielded
            with anyio.move_on_after(0.3):
                await read(pool, "SELECT pg_sleep(5)")
        assert time.monotonic() - started < 2
        # Same single connection (or a fresh one): not in a transaction, nothing running.
        state = await read(
            pool, "SELECT pg_backend_pid(), now() = statement_timestamp(), current_user"
        )
        assert state.rows[0][2] == env.reader
        await pool.wait_released()  # the read's ROLLBACK runs after its result returned
        # The old backend is either reused (same pid) and idle, or gone: never left running
        # pg_sleep or idle in transaction.
        stuck = admin_value(
            env, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state <> 'idle'"
        )
        assert stuck == 0
        assert state.rows[0][0] == pid  # the ROLLBACK succeeded: the connection was kept
    finally:
        await pool.close()


@pytest.mark.anyio
async def test_dead_pooled_connection_is_replaced(env) -> None:
    pool = await create_pool(env.reader_dsn, password=env.reader_password, max_size=1)
    try:
        pid = (await read(pool, "SELECT pg_backend_pid()")).rows[0][0]
        assert admin_value(env, f"SELECT pg_terminate_backend({pid}, 5000)")
        # Found dead at BEGIN (before any agent text): dropped, retried on a new connection.
        again = await read(pool, "SELECT pg_backend_pid()")
        assert again.rows[0][0] != pid
        # Killed while running the agent's statement: reported, not retried; pool recovers.
        task = asyncio.ensure_future(read(pool, "SELECT pg_sleep(5)"))
        await asyncio.sleep(0.2)
        assert admin_value(env, f"SELECT pg_terminate_backend({again.rows[0][0]}, 5000)")
        with pytest.raises(DatabaseUnavailable) as info:
            await task
        assert "terminating connection" in str(info.value)
        assert (await read(pool, "SELECT 1")).rows == [(1,)]
    finally:
        await pool.close()


@pytest.mark.anyio
async def test_set_role_does_not_survive_into_next_use(env) -> None:
    pool = await create_pool(env.reader_dsn, password=env.reader_password, max_size=1)
    try:
        pid = (await read(pool, "SELECT pg_backend_pid()")).rows[0][0]
        inside = await read(pool, f"SELECT set_config('role', '{env.elevated}', false)")
        assert inside.rows == [(env.elevated,)]
        assert (await read(pool, "SELECT current_user")).rows == [(env.reader,)]
        # A prepared SET ROLE runs (no rows), and the ROLLBACK undoes it.
        assert (await read(pool, f'SET ROLE "{env.elevated}"')).rows == []
        assert (await read(pool, "SELECT current_user")).rows == [(env.reader,)]
        # A committed (approved write) session-level role change: only the pool reset helps.
        await run_write(
            pool,
            f"SELECT set_config('role', '{env.elevated}', false)",
            None,
            statement_timeout_ms=2000,
            lock_timeout_ms=1000,
        )
        again = await read(pool, "SELECT current_user, session_user, pg_backend_pid()")
        assert again.rows == [(env.reader, env.reader, pid)]  # same connection, role reset
    finally:
        await pool.close()


@pytest.mark.anyio
async def test_asyncpg_default_reset_keeps_set_role(env) -> None:
    """The measured fact behind our reset: asyncpg's own reset leaves SET ROLE in force."""
    pool = await asyncpg.create_pool(
        dsn_with(env.reader_dsn, password=env.reader_password), min_size=1, max_size=1
    )
    try:
        async with pool.acquire() as conn:
            await conn.execute(f'SET ROLE "{env.elevated}"')
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == env.elevated
    finally:
        await pool.close()


@pytest.mark.anyio
async def test_reset_clears_session_leftovers(admin_pool, env) -> None:
    pool = await create_pool(env.db.dsn, password=None, max_size=1)
    try:
        # PREPARE survives ROLLBACK; a committed temp table and setting survive the call.
        await read(pool, "PREPARE leftover AS SELECT 42")
        limits = {"statement_timeout_ms": 2000, "lock_timeout_ms": 1000}
        await run_write(pool, "CREATE TEMP TABLE leftover_tmp AS SELECT 1 AS a", None, **limits)
        await run_write(pool, "SELECT set_config('work_mem', '77MB', false)", None, **limits)
        check = await read(
            pool,
            "SELECT (SELECT count(*) FROM pg_prepared_statements WHERE from_sql),"
            " to_regclass('pg_temp.leftover_tmp') IS NULL, current_setting('work_mem')",
        )
        assert check.rows == [(0, True, "4MB")]
    finally:
        await pool.close()


@pytest.mark.anyio
async def test_max_rows_truncates_a_million_rows_quickly(reader_pool) -> None:
    rss_before = psutil.Process().memory_info().rss
    started = time.monotonic()
    result = await read(reader_pool, "SELECT * FROM big", max_rows=1000)
    elapsed = time.monotonic() - started
    rss_after = psutil.Process().memory_info().rss
    assert result.row_count == 1000 and len(result.rows) == 1000
    assert result.truncated
    assert elapsed < 1.0, elapsed
    assert rss_after - rss_before < 30 * 1024 * 1024
    exact = await read(reader_pool, "SELECT id FROM big ORDER BY id LIMIT 5", max_rows=5)
    assert exact.row_count == 5 and not exact.truncated
    zero = await read(reader_pool, "SELECT id FROM big", max_rows=0)
    assert zero.rows == [] and zero.truncated


@pytest.mark.anyio
async def test_field_count_mismatch_raises(reader_pool) -> None:
    with pytest.raises(FieldCountMismatch) as info:
        await read(reader_pool, "SELECT * FROM t", expected_columns=3)
    assert (info.value.expected, info.value.actual) == (3, 2)
    ok = await read(reader_pool, "SELECT * FROM t", expected_columns=2)
    assert ok.row_count == 3


@pytest.mark.anyio
async def test_query_errors_are_postgres_messages(reader_pool) -> None:
    with pytest.raises(QueryError) as info:
        await read(reader_pool, "SELECT nope FROM t")
    assert info.value.sqlstate == "42703"
    assert 'column "nope" does not exist' in str(info.value)
    assert info.value.position == 8
    with pytest.raises(QueryError) as info:
        await read(reader_pool, "SELECT * FROM private.secret_tbl")
    assert info.value.sqlstate == "42501"
    with pytest.raises(QueryError):  # wrong parameter count: a client-side error
        await read(reader_pool, "SELECT $1::int", [])
    with pytest.raises(ValueError):
        await read(reader_pool, "SELECT 1", statement_timeout_ms=-1)


# --------------------------------------------------------------------------- writes, explain


@pytest.mark.anyio
async def test_run_write_commits_and_reports(admin_pool, reader_pool) -> None:
    limits = {"statement_timeout_ms": 2000, "lock_timeout_ms": 1000}
    sql = "INSERT INTO w VALUES ($1, $2), ($3, $4) RETURNING id"
    inserted = await run_write(admin_pool, sql, [1, "x", 2, "y"], **limits)
    assert inserted.status == "INSERT 0 2" and inserted.affected_rows == 2
    assert inserted.rows == [(1,), (2,)] and inserted.columns == [Column("id", "int4")]
    updated = await run_write(admin_pool, "UPDATE w SET v = 'z'", None, **limits)
    assert updated.status == "UPDATE 2" and updated.affected_rows == 2 and updated.rows == []
    with pytest.raises(QueryError) as info:
        await run_write(admin_pool, "INSERT INTO w VALUES (1, 'dup')", None, **limits)
    assert info.value.sqlstate == "23505"
    with pytest.raises(QueryError):
        await run_write(admin_pool, "DELETE FROM w; DELETE FROM t", None, **limits)
    seen = await read(reader_pool, "SELECT id, v FROM w ORDER BY id")
    assert seen.rows == [(1, "z"), (2, "z")]
    assert (await read(reader_pool, "SELECT count(*) FROM t")).rows == [(3,)]
    payload = structured(updated)
    assert payload["status"] == "UPDATE 2" and payload["affected_rows"] == 2
    assert text_table(updated) == "UPDATE 2"


@pytest.mark.anyio
async def test_explain_estimates_rows(reader_pool) -> None:
    plan = await explain(reader_pool, "SELECT * FROM big WHERE id <= $1", [1000])
    assert 100 <= plan["estimated_rows"] <= 20_000
    assert '"Relation Name": "big"' in json.dumps(plan["plan"])  # (maybe under a Gather)
    full = await explain(reader_pool, "SELECT * FROM big")
    assert 900_000 <= full["estimated_rows"] <= 1_100_000
    with pytest.raises(QueryError):
        await explain(reader_pool, "SELECT 1; DELETE FROM t")
    with pytest.raises(QueryError):
        await explain(reader_pool, "ANALYZE DELETE FROM t")


@pytest.mark.anyio
async def test_explain_of_dml_counts_the_rows_it_would_touch_and_runs_nothing(
    admin_pool, reader_pool
) -> None:
    """DML is explained on a pool allowed to run it (EXPLAIN checks the privilege), in READ
    ONLY, never ANALYZE: the estimate is the rows fed to ModifyTable, and nothing changes."""
    before = await admin_pool.fetchval("SELECT count(*) FROM big WHERE id <= 500")
    for _ in range(2):  # the second time through asyncpg's statement cache
        plan = await explain(admin_pool, "DELETE FROM big WHERE id <= $1", [500])
        assert 100 <= plan["estimated_rows"] <= 2_500
        assert '"Node Type": "ModifyTable"' in json.dumps(plan["plan"])
    update = await explain(admin_pool, "UPDATE big SET h = 'x' WHERE id = 7 RETURNING id")
    assert update["estimated_rows"] == 1
    assert await admin_pool.fetchval("SELECT count(*) FROM big WHERE id <= 500") == before
    assert await admin_pool.fetchval("SELECT count(*) FROM big WHERE h = 'x'") == 0
    with pytest.raises(QueryError) as refused:  # the reader may not delete: no estimate
        await explain(reader_pool, "DELETE FROM big WHERE id <= 5")
    assert refused.value.sqlstate == "42501"


# --------------------------------------------------------------------------- catalog


@pytest.mark.anyio
async def test_list_tables(reader_pool) -> None:
    tables = {(t["schema"], t["name"]): t for t in await list_tables(reader_pool)}
    assert tables["public", "t"]["kind"] == "table"
    assert tables["public", "v_users"]["kind"] == "view"
    assert tables["public", "mv_orgs"]["kind"] == "matview"
    assert tables["public", "users"]["comment"] == "people"
    assert 900_000 <= tables["public", "big"]["estimated_rows"] <= 1_100_000
    assert tables["public", "v_users"]["estimated_rows"] is None
    assert ("private", "secret_tbl") not in tables  # no SELECT grant: not listed
    assert not any(schema == "pg_catalog" for schema, _ in tables)
    only = await list_tables(reader_pool, ["private"])
    assert only == []


@pytest.mark.anyio
async def test_describe_table(reader_pool, env) -> None:
    users = await describe_table(reader_pool, "users")
    assert (users["schema"], users["name"], users["kind"]) == ("public", "users", "table")
    assert users["comment"] == "people"
    cols = {c["name"]: c for c in users["columns"]}
    assert list(cols) == ["id", "email", "org_id", "created"]
    assert cols["id"]["type"] == "integer" and not cols["id"]["nullable"]
    assert cols["id"]["default"].startswith("nextval(")
    assert cols["email"]["comment"] == "contact address"
    assert cols["created"]["type"] == "timestamp with time zone" and cols["created"]["nullable"]
    assert users["primary_key"] == {"name": "users_pkey", "columns": ["id"]}
    (fk,) = users["foreign_keys"]
    assert fk["columns"] == ["org_id"]
    assert fk["references"] == {"table": "orgs", "columns": ["id"]}
    indexes = {i["name"]: i for i in users["indexes"]}
    assert indexes["users_email_idx"]["unique"] and indexes["users_pkey"]["primary"]
    assert (await describe_table(reader_pool, 'public."Mixed Case"'))["name"] == "Mixed Case"
    assert (await describe_table(reader_pool, "v_users"))["kind"] == "view"
    for bad in ["nope", "users; DROP TABLE t", "private.secret_tbl", "a.b.c.d", "", '"']:
        with pytest.raises(TableNotFound):
            await describe_table(reader_pool, bad)
    assert admin_value(env, "SELECT count(*) FROM t") == 3


# --------------------------------------------------------------------------- results


@pytest.mark.anyio
async def test_json_conversion_of_every_type(reader_pool) -> None:
    sql = """SELECT
        1::int2 AS i2, 9007199254740993::int8 AS i8, 1.5::float8 AS f, 'NaN'::float8 AS fnan,
        12345678901234567890.12345::numeric AS num, 0.0000001::numeric AS tiny,
        'NaN'::numeric AS nnan, true AS b, 'txt' AS s, NULL::text AS n,
        '2024-05-01 12:30:00+00'::timestamptz AS tstz, '2024-05-01 12:30:00'::timestamp AS ts,
        '2024-05-01'::date AS d, 'infinity'::date AS dinf, '-infinity'::timestamptz AS tsninf,
        '12:30:01.5'::time AS tm, '12:30:00+02'::timetz AS tmtz,
        '1 mon 2 days 03:04:05.5'::interval AS iv, '-1 hours'::interval AS ivneg,
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, '\\xdeadbeef'::bytea AS by,
        ROW('k', 2)::pair AS comp, ROW(1, 'x') AS anon, ARRAY[[1, 2], [3, 4]] AS arr,
        ARRAY['a', NULL] AS tarr, int4range(1, 5) AS r, 'empty'::int4range AS rempty,
        tstzrange('2024-01-01', NULL) AS tsr, int4multirange(int4range(1, 3)) AS mr,
        '10.0.0.1/24'::inet AS ip, '10.0.0.0/8'::cidr AS net, '::1'::inet AS ip6,
        '{"a": [1, 2.5, null], "b": {"c": "d"}}'::jsonb AS jb, '[1,2]'::json AS js,
        ARRAY['{"x": 1}'::jsonb] AS jarr, B'1011' AS bits, point(1, 2) AS pt,
        '$1.50'::money AS money, 'a b'::tsvector AS tsv"""
    result = await read(reader_pool, sql)
    payload = structured(result)
    json.dumps(payload)  # everything is plain JSON
    row = dict(zip([c["name"] for c in payload["columns"]], payload["rows"][0], strict=True))
    assert row["i2"] == 1 and row["i8"] == 9007199254740993
    assert row["f"] == 1.5 and row["fnan"] == "NaN"
    assert row["num"] == "12345678901234567890.12345" and row["tiny"] == "0.0000001"
    assert row["nnan"] == "NaN"
    assert row["b"] is True and row["s"] == "txt" and row["n"] is None
    assert row["tstz"] == "2024-05-01T12:30:00+00:00"
    assert row["ts"] == "2024-05-01T12:30:00"
    assert row["d"] == "2024-05-01" and row["dinf"] == "infinity"
    assert row["tsninf"] == "-infinity"
    assert row["tm"] == "12:30:01.500000" and row["tmtz"] == "12:30:00+02:00"
    assert row["iv"] == "1 mon 2 days 03:04:05.5" and row["ivneg"] == "-01:00:00"
    assert row["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert row["by"] == "\\xdeadbeef"
    assert row["comp"] == {"k": "k", "n": 2}
    assert row["anon"] == [1, "x"]
    assert row["arr"] == [[1, 2], [3, 4]] and row["tarr"] == ["a", None]
    assert row["r"] == "[1,5)" and row["rempty"] == "empty"
    assert row["tsr"] == "[2024-01-01T00:00:00+00:00,)"
    assert row["mr"] == ["[1,3)"]
    assert row["ip"] == "10.0.0.1/24" and row["net"] == "10.0.0.0/8" and row["ip6"] == "::1"
    assert row["jb"] == {"a": [1, 2.5, None], "b": {"c": "d"}} and row["js"] == [1, 2]
    assert row["jarr"] == [{"x": 1}]
    assert row["bits"] == "1011" and row["pt"] == [1.0, 2.0]
    assert row["money"] == "$1.50" and row["tsv"] == "'a' 'b'"
    types = {c["name"]: c["type"] for c in payload["columns"]}
    assert types["arr"] == "int4[]" and types["jb"] == "jsonb" and types["comp"] == "pair"
    # A masked json column keeps its placeholder string.
    masked = [c.name == "jb" for c in result.columns]
    placeholder_row = tuple(
        "[MASKED]" if m else v for v, m in zip(result.rows[0], masked, strict=True)
    )
    masked_row = structured(QueryResult(result.columns, [placeholder_row], 1, False, 0.0), masked)
    assert masked_row["rows"][0][[c.name for c in result.columns].index("jb")] == "[MASKED]"
    assert masked_row["columns"][[c.name for c in result.columns].index("jb")]["masked"]
    table = text_table(result)
    assert table.splitlines()[-1] == "1 row"


def test_json_value_plain_python() -> None:
    assert json_value(dt.timedelta(days=1, hours=2, seconds=4, microseconds=500000)) == (
        "P1DT2H4.5S"
    )
    assert iso_duration(dt.timedelta(hours=-1)) == "-PT1H"
    assert iso_duration(dt.timedelta(0)) == "PT0S"
    assert json_value(decimal.Decimal("1E+3")) == "1000"
    assert json_value(float("-inf")) == "-Infinity"
    assert json_value(bytearray(b"\x00\xff")) == "\\x00ff"
    assert json_value(ipaddress.ip_network("::/0")) == "::/0"
    assert json_value(uuid.UUID(int=0)) == "00000000-0000-0000-0000-000000000000"
    assert json_value(asyncpg.Range(None, 10, upper_inc=True)) == "(,10]"
    assert json_value({"a": (1, dt.date(2024, 1, 2))}) == {"a": [1, "2024-01-02"]}


def test_text_table_layout() -> None:
    cols = [Column("id", "int4"), Column("name", "text"), Column("email", "text")]
    rows = [(1, "Alice", "[MASKED]"), (22, "x" * 100, None), (3, "multi\nline", "b")]
    table = text_table(QueryResult(cols, rows, 3, False, 1.0), [False, False, True])
    lines = table.splitlines()
    assert lines[0].split("|")[0].strip() == "id"
    assert set(lines[1]) <= {"-", "+"}
    assert lines[2].startswith("  1 | Alice")
    assert "x" * 59 + "…" in lines[3] and "x" * 60 not in lines[3]
    assert "NULL" in lines[3] and "multi\\nline" in lines[4]
    assert lines[-2:] == ["3 rows", "masked: email"]
    many = QueryResult([Column("n", "int4")], [(i,) for i in range(1000)], 1000, True, 1.0)
    assert text_table(many).splitlines()[-1] == "1000 rows (truncated at max_rows=1000)"
    capped = text_table(many, max_chars=500)
    assert len(capped) <= 500
    assert "more rows not shown" in capped
    assert text_table(QueryResult([Column("a", "int4")], [], 0, False, 0.0)).endswith("0 rows")
    with pytest.raises(ValueError):
        structured(QueryResult(cols, rows, 3, False, 1.0), [True])


# --------------------------------------------------------------------------- secrets


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://bob:s3cr%40t@db:5432/app?sslmode=require") == (
        "postgresql://bob:***@db:5432/app?sslmode=require"
    )
    assert redact_dsn("postgres://bob@db/app") == "postgres://bob@db/app"
    assert redact_dsn("postgresql://db/app?user=bob&password=hunter2") == (
        "postgresql://db/app?user=bob&password=***"
    )
    assert redact_dsn("postgresql://bob:pa/ss#w@db/app") == "postgresql://bob:***@db/app"
    assert redact_dsn("host=db dbname=app user=bob password='sec ret\\'x' sslmode=require") == (
        "host=db dbname=app user=bob password=*** sslmode=require"
    )
    assert "hunter2" not in redact_dsn("host=db password=hunter2 dbname='unterminated")
    assert parse_kv_dsn("a=1  b = 'x y' c=\\ z") == {"a": "1", "b": "x y", "c": " z"}
    assert str(describe_target("postgresql://bob:pw@db:6543/app")) == "bob@db:6543/app"
    assert str(describe_target("host=h1,h2 port=1,2 user=u")) == "u@h1:1,h2:2/u"
    url = to_asyncpg_dsn("host=db port=6543 dbname=app user=bob password='a b' connect_timeout=3")
    assert url == "postgresql:///app?host=db&port=6543&user=bob&password=a%20b"


def _assert_clean(exc: BaseException, caplog, *secrets_: str) -> None:
    texts = [str(exc), repr(exc), caplog.text]
    texts += [r.getMessage() for r in caplog.records]
    for secret in secrets_:
        for text in texts:
            assert secret not in text


@pytest.mark.anyio
async def test_wrong_password_never_leaks(env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + secrets.token_hex(8)
    for dsn, password in [
        (env.reader_dsn, wrong),  # given separately
        (dsn_with(env.reader_dsn, password=wrong), None),  # inside the URL
    ]:
        with pytest.raises(DatabaseUnavailable) as info:
            await create_pool(dsn, password=password, retries=3, backoff=0.01)
        assert not info.value.retriable
        assert "password authentication failed" in str(info.value)
        assert env.db.name in str(info.value) and "127.0.0.1:" in str(info.value)
        assert info.value.__cause__ is None
        _assert_clean(info.value, caplog, wrong, env.reader_password)


@pytest.mark.anyio
async def test_unreachable_database_retries_then_fails_cleanly(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    password = "Unr3ach-" + secrets.token_hex(8)
    port = free_port()
    started = time.monotonic()
    for dsn, given in [
        (f"postgresql://bob:{password}@127.0.0.1:{port}/appdb", None),
        (f"host=127.0.0.1 port={port} dbname=appdb user=bob password='{password}'", None),
        (f"postgresql://bob@127.0.0.1:{port}/appdb", password),
    ]:
        with pytest.raises(DatabaseUnavailable) as info:
            await create_pool(dsn, password=given, retries=2, backoff=0.01, name="warehouse")
        message = str(info.value)
        assert f"127.0.0.1:{port}/appdb" in message and "'warehouse'" in message
        assert "after 3 attempt(s)" in message and info.value.retriable
        _assert_clean(info.value, caplog, password)
    assert time.monotonic() - started < 5
    assert "retrying" in caplog.text


@pytest.mark.anyio
async def test_pool_repr_and_query_errors_hide_the_password(env, reader_pool) -> None:
    assert env.reader_password not in repr(reader_pool)
    assert env.db.name in repr(reader_pool)
    # Even an agent statement that echoes the password back is scrubbed in error text.
    with pytest.raises(QueryError) as info:
        await read(reader_pool, f"SELECT '{env.reader_password}'::int")
    assert env.reader_password not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.anyio
async def test_key_value_dsn_connects(env) -> None:
    target = describe_target(env.reader_dsn)
    host, _, port = target.hosts.partition(":")
    dsn = f"host={host} port={port} dbname={env.db.name} user={env.reader}"
    pool = await create_pool(dsn, password=env.reader_password, min_size=0)
    try:
        assert (await read(pool, "SELECT current_user")).rows == [(env.reader,)]
    finally:
        await pool.close()
