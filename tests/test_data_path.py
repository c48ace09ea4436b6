"""The data path's ordering guarantee, end to end: a call's decision is durable in the audit
store before any of its SQL runs, on both paths of an allowed read (explained first, or not
explained because its LIMIT bounds it, its transaction opened while the decision commits),
and a decision that cannot be committed runs nothing and leaves no transaction open.

Made observable by putting the gateway's PostgreSQL audit store in the very database it
serves: the agent's query counts its own decision in `audit_events`, so it returns 1 only if
that decision was committed before the query's snapshot was taken.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from gateway_helpers import Gateway, text_of
from mcp_gate.sqltools import execute, run_read
from mcp_gate.sqltools.execute import explained_read
from mcp_gate.sqltools.pool import APPLICATION_NAME
from pgserver import (
    TestDatabase,
    admin_execute,
    connected,
    dsn_with,
    quote_ident,
    reader_database,
    run_sync,
    unique_name,
)
from pool_helpers import reader_pool
from shop_helpers import Shop, sample_shop, shop_gateway

pytestmark = pytest.mark.anyio

DECISION_KEY = "io.mcp-gate/decision"


@pytest.fixture(scope="module")
def shop(pg_dsn: str) -> Iterator[Shop]:
    with sample_shop(pg_dsn, "datapath") as s:
        yield s


@pytest.fixture(scope="module")
def store_role(shop: Shop) -> Iterator[tuple[str, str]]:
    """A role that owns the audit store's tables in the shop database's `public` schema."""
    role, password = unique_name("store"), "St-" + secrets.token_urlsafe(12)
    database = shop.dsn.rsplit("/", 1)[1]
    admin_execute(
        shop.dsn,
        f"CREATE ROLE {quote_ident(role)} LOGIN PASSWORD '{password}'",
        f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {quote_ident(role)}",
        f"GRANT CREATE, USAGE ON SCHEMA public TO {quote_ident(role)}",
    )
    try:
        yield role, password
    finally:
        admin_execute(shop.dsn, f"DROP OWNED BY {quote_ident(role)}")
        admin_execute(shop.dsn, f"DROP ROLE IF EXISTS {quote_ident(role)}")


@pytest.fixture(scope="module")
def gateway(
    shop: Shop, store_role: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The repository's policy ("bulk export" holds reads estimated above 10,000 rows, so an
    unbounded read is explained first), its audit store in the shop database, readable by
    the gateway's reader role."""
    role, password = store_role
    store = dsn_with(shop.dsn, user=role, password="")
    folder: Path = tmp_path_factory.mktemp("data-path")
    with shop_gateway(
        shop,
        folder,
        write_dsn=None,
        server_extra=f'store = "{store}"\nstore_password_env = "GATE_TEST_STORE_PW"',
        env={"GATE_TEST_STORE_PW": password},
    ) as gw:
        # The store's tables exist once the gateway has opened it.
        deadline = time.monotonic() + 30
        while not run_sync(lambda: table_exists(shop.dsn, "public.audit_events")):
            assert time.monotonic() < deadline, gw.stderr()
            time.sleep(0.1)
        admin_execute(shop.dsn, f"GRANT SELECT ON public.audit_events TO {shop.reader_role}")
        yield gw


async def table_exists(dsn: str, name: str) -> bool:
    async with connected(dsn) as conn:
        return await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)


def own_decision_query(bounded: bool) -> tuple[str, str]:
    """A read that counts the committed decision records carrying its own marker (its own
    decision, whose arguments hold this very text); (sql, marker)."""
    marker = f"m{uuid.uuid4().hex}"
    sql = (
        "SELECT count(*) AS n FROM public.audit_events "
        f"WHERE kind = 'decision' AND data LIKE '%{marker}%'"
    )
    return (sql + " LIMIT 1" if bounded else sql), marker


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
@pytest.mark.parametrize("bounded", [False, True], ids=["explained", "bounded"])
async def test_a_read_sees_its_own_decision_committed(
    gateway: Gateway, mode: str, bounded: bool
) -> None:
    sql, _ = own_decision_query(bounded)
    async with gateway.client(gateway.token(), mode=mode) as client:
        result = await client.call_tool("sql_query", {"sql": sql})
    assert not result.is_error, text_of(result)
    assert result.meta[DECISION_KEY]["decision"] == "allow"
    assert result.structured_content["rows"] == [[1]]


async def pool_states(shop: Shop) -> list[str]:
    async with connected(shop.dsn) as conn:
        rows = await conn.fetch(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
            " AND usename = $1 AND application_name = $2",
            shop.reader_role,
            APPLICATION_NAME,
        )
    return [r["state"] for r in rows]


async def test_a_decision_that_cannot_be_committed_runs_nothing(
    gateway: Gateway, shop: Shop, store_role: tuple[str, str]
) -> None:
    """The store refuses inserts: both kinds of read are refused with the store's reason, no
    reader backend is left inside a transaction, and once the store records again the same
    reads run, each seeing its own decision and none of the refused ones."""
    role = quote_ident(store_role[0])
    refused = [own_decision_query(bounded) for bounded in (False, True)]
    token = gateway.token()
    admin_execute(shop.dsn, f"REVOKE INSERT ON public.audit_events FROM {role}")
    try:
        async with gateway.client(token) as client:
            for sql, _ in refused:
                result = await client.call_tool("sql_query", {"sql": sql})
                assert result.is_error
                assert "audit store is unavailable, so nothing was run" in text_of(result)
                assert "idle in transaction" not in await pool_states(shop)
    finally:
        admin_execute(shop.dsn, f"GRANT INSERT ON public.audit_events TO {role}")
    async with gateway.client(token) as client:
        for bounded in (False, True):
            sql, _ = own_decision_query(bounded)
            result = await client.call_tool("sql_query", {"sql": sql})
            assert not result.is_error, text_of(result)
            assert result.structured_content["rows"] == [[1]]
    async with connected(shop.dsn) as conn:
        for _, marker in refused:
            count = await conn.fetchval(
                "SELECT count(*) FROM public.audit_events WHERE kind = 'decision'"
                " AND data LIKE '%' || $1 || '%'",
                marker,
            )
            assert count == 0  # the refused decisions were never committed
    assert "idle in transaction" not in await pool_states(shop)


# --------------------------------------------------------------------------- in process

LOCK_KEY = 7_310_002
LIMITS = {"statement_timeout_ms": 5000, "lock_timeout_ms": 1000, "idle_timeout_ms": 10_000}
LOCKING_READ = (
    f"SELECT pg_catalog.pg_advisory_xact_lock({LOCK_KEY}) AS locked,"
    " pg_catalog.pg_backend_pid() AS pid FROM items WHERE id = 1"
)


@pytest.fixture(scope="module")
def items_db(module_db: TestDatabase) -> Iterator[tuple[str, str]]:
    with reader_database(
        module_db,
        "CREATE TABLE items (id int PRIMARY KEY)",
        "INSERT INTO items SELECT generate_series(1, 10)",
    ) as credentials:
        yield credentials


@pytest.fixture
async def pool_and_observer(
    items_db: tuple[str, str], module_db: TestDatabase
) -> AsyncIterator[tuple[Any, asyncpg.Connection]]:
    async with reader_pool(*items_db) as pool, connected(module_db.dsn) as observer:
        yield pool, observer


async def backend(observer: asyncpg.Connection) -> asyncpg.Record:
    """The pool's one backend: pid, state, last statement, and whether it holds the lock."""
    return await observer.fetchrow(
        "SELECT a.pid, a.state, a.query, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid"
        " AND l.locktype = 'advisory' AND l.objid = $1) AS locked FROM pg_stat_activity a"
        " WHERE a.datname = current_database() AND a.application_name = $2",
        LOCK_KEY,
        APPLICATION_NAME,
    )


async def test_opening_without_explain_sends_nothing_of_the_read(pool_and_observer) -> None:
    """`explain=False` (the transaction a bounded read opens while its decision commits):
    BEGIN and the limits only; the agent text reaches the server at `fetch`, in that same
    transaction, and the block rolls it back."""
    pool, observer = pool_and_observer
    async with explained_read(pool, LOCKING_READ, None, explain=False, **LIMITS) as read:
        assert read.plan is None and read.error is None
        seen = await backend(observer)
        assert seen["state"] == "idle in transaction" and not seen["locked"]
        assert "items" not in seen["query"] and "set_config" in seen["query"]
        result = await read.fetch(max_rows=5)
        assert [row[1] for row in result.rows] == [seen["pid"]]
        assert (await backend(observer))["locked"]
    await pool.wait_released()  # the ROLLBACK runs in the background after the block
    after = await backend(observer)
    assert after["state"] == "idle" and not after["locked"]


async def test_a_read_opened_before_its_commit_survives_the_server_ending_it(
    pool_and_observer,
) -> None:
    """The transaction opened while the decision commits may be ended by the server if the
    commit is slow (idle_in_transaction_session_timeout): nothing of the read ran there, so
    `fetch` runs it on a fresh connection, and the pool stays whole."""
    pool, _ = pool_and_observer
    limits = {**LIMITS, "idle_timeout_ms": 200}
    sql = "SELECT id FROM items WHERE id = 3"
    async with explained_read(pool, sql, None, explain=False, **limits) as read:
        await asyncio.sleep(0.6)  # past idle_in_transaction_session_timeout
        assert (await read.fetch(max_rows=5)).rows == [(3,)]
    for i in range(2):
        result = await run_read(pool, f"SELECT {i} AS n", None, max_rows=1, **LIMITS)
        assert result.rows == [(i,)]


async def test_a_read_is_fetched_in_one_round_trip_and_bounded(pool_and_observer) -> None:
    """The asyncpg call that binds and executes the unnamed portal with a row limit in one
    round trip exists in the installed asyncpg (else reads fall back to the cursor, one round
    trip slower), and the server stops at max_rows + 1 rows of an endless-looking result."""
    pool, _ = pool_and_observer
    assert execute._BIND_EXECUTE is not None
    # In the target list the function returns its rows one by one (in FROM it would first
    # materialise all of them).
    huge = "SELECT pg_catalog.generate_series(1, 100000000) AS g"
    with anyio.fail_after(5):
        result = await run_read(pool, huge, None, max_rows=3, **LIMITS)
    assert (result.rows, result.truncated) == ([(1,), (2,), (3,)], True)
    zero = await run_read(pool, huge, None, max_rows=0, **LIMITS)
    assert (zero.rows, zero.truncated) == ([], True)
    exact = await run_read(pool, "SELECT id FROM items WHERE id <= $1", [2], max_rows=2, **LIMITS)
    assert (exact.rows, exact.truncated) == ([(1,), (2,)], False)
