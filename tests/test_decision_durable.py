"""A call's decision is durable in the audit store before its answer reaches the client, and
before its SQL runs; without a store that can commit, nothing runs.

A real `mcp-gate serve` over the sample shop and real SDK clients. The store is read through
its own API from the test process (another connection to the file). Ordering is shown, not
sampled: the test write-locks the SQLite file (`BEGIN IMMEDIATE` from another connection), so
no decision can be committed until the test releases it at a known instant. The call was
decided long before that instant (the decision event's timestamp is taken when it is made),
yet its answer arrives, and its SQL's `clock_timestamp()` reads, only after it. PostgreSQL
and the gateway share this machine's clock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from approval_helpers import db_value
from gateway_helpers import Gateway, text_of
from mcp_gate.audit import EventKind, SqliteAuditStore
from mcp_gate.audit.model import AuditEvent
from pgserver import admin_execute, quote_ident, quote_literal
from shop_helpers import Shop, pg_store, sample_policy, sample_shop, shop_gateway

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

HOLD = 1.5  # seconds the store stays write-locked while a call waits on it
UNAVAILABLE = "the audit store is unavailable, so nothing was run"


@pytest.fixture(scope="module")
def shop(pg_dsn: str) -> Iterator[Shop]:
    with sample_shop(pg_dsn, "test_decision_durable") as made:
        yield made


@pytest.fixture(scope="module")
def gateway(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder: Path = tmp_path_factory.mktemp("decision-durable")
    with shop_gateway(shop, folder, sample_policy(wait='"1s"')) as gw:
        yield gw


def store_file(gateway: Gateway) -> Path:
    """The default `[server] store`, relative to the config's folder."""
    return gateway.config.parent / ".mcp-gate" / "gate.db"


async def decisions_for(path: Path, marker: str) -> list[AuditEvent]:
    """Every committed decision event of a call whose SQL contains `marker`."""
    store = SqliteAuditStore(path)
    await store.open()
    try:
        events = await store.events()
    finally:
        await store.close()
    return [
        e.event
        for e in events
        if e.event.kind == EventKind.DECISION and marker in str(e.event.data["arguments"])
    ]


def call_for(verdict: str, marker: str) -> str:
    """A `sql_query` statement the repository's policy gives `verdict` (for a developer)."""
    if verdict == "allow":
        return f"SELECT clock_timestamp() AS ran_at, '{marker}' AS marker"
    return f"DELETE FROM orders /* {marker} */"  # "never unbounded": no WHERE


def verdict_of(result: Any) -> str:
    return result.meta["io.mcp-gate/decision"]["decision"]


@pytest.mark.parametrize("verdict", ["allow", "deny"])
async def test_the_decision_is_on_record_when_the_answer_arrives(
    gateway: Gateway, verdict: str
) -> None:
    marker = f"durable-{secrets.token_hex(6)}"
    async with gateway.client(gateway.token("agent", "developers"), "legacy") as client:
        result = await client.call_tool("sql_query", {"sql": call_for(verdict, marker)})
        # First thing after the answer, with the client still connected.
        recorded = await decisions_for(store_file(gateway), marker)
    assert verdict_of(result) == verdict and result.is_error == (verdict == "deny")
    assert [e.decision for e in recorded] == [verdict]
    assert recorded[0].data["principal"]["subject"] == "agent"


@pytest.mark.parametrize("verdict", ["allow", "deny"])
async def test_nothing_answers_or_runs_before_the_decision_commits(
    gateway: Gateway, shop: Shop, verdict: str
) -> None:
    marker = f"ordered-{secrets.token_hex(6)}"
    orders = db_value(shop.dsn, "SELECT count(*) FROM orders")
    answered: dict[str, Any] = {}
    async with gateway.client(gateway.token("agent", "developers"), "legacy") as client:

        async def call() -> None:
            answered["result"] = await client.call_tool(
                "sql_query", {"sql": call_for(verdict, marker)}
            )
            answered["at"] = time.time()

        blocker = sqlite3.connect(store_file(gateway), isolation_level=None, timeout=5)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # every writer of the file waits for us
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await anyio.sleep(HOLD)
                assert "at" not in answered, "answered while its decision could not commit"
                released = time.time()
                blocker.execute("ROLLBACK")
        finally:
            if blocker.in_transaction:
                blocker.execute("ROLLBACK")
            blocker.close()
    (event,) = await decisions_for(store_file(gateway), marker)
    result = answered["result"]
    assert event.decision == verdict_of(result) == verdict
    # Decided well before the store could take it (so the call really waited on the
    # commit, not on anything slower), answered only after.
    assert released - event.at >= HOLD / 2, (released, event.at)
    assert answered["at"] > released
    if verdict == "allow":
        assert not result.is_error, text_of(result)
        ran_at, seen_marker = result.structured_content["rows"][0]
        assert seen_marker == marker
        assert dt.datetime.fromisoformat(ran_at).timestamp() > released
    else:
        assert result.is_error and "never unbounded" in text_of(result)
    assert db_value(shop.dsn, "SELECT count(*) FROM orders") == orders


# --------------------------------------------------------------------------- no store


@contextlib.contextmanager
def gateway_on_store(
    shop: Shop, pg_dsn: str, folder: Path, kind: str
) -> Iterator[tuple[Gateway, Any, tuple[str, ...]]]:
    """A gateway of its own, a function that takes its audit store away, and the secrets
    nothing may show. `kind`: the SQLite file's folder is deleted, or the PostgreSQL store's
    role is locked out and its sessions killed (as if that server had stopped)."""
    if kind == "sqlite":
        with shop_gateway(shop, folder, sample_policy()) as gw:
            yield gw, lambda: shutil.rmtree(store_file(gw).parent), shop.secrets
        return
    with pg_store(pg_dsn) as store:

        def stop() -> None:
            admin_execute(
                pg_dsn,
                f"ALTER ROLE {quote_ident(store.owner)} NOLOGIN",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE usename = {quote_literal(store.owner)} AND pid <> pg_backend_pid()",
            )

        with shop_gateway(
            shop, folder, sample_policy(), server_extra=store.server, env=store.env
        ) as gw:
            yield gw, stop, (*shop.secrets, store.password)


@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        "postgresql",
    ],
)
async def test_without_a_store_the_call_is_refused_and_nothing_runs(
    shop: Shop, pg_dsn: str, tmp_path: Path, kind: str
) -> None:
    """A dba's UPDATE the policy allows outright: once the store is gone it is refused with
    the recorder's reason, the row keeps its value, and no secret is in the answer."""
    sql = f"UPDATE customers SET name = 'ran without a record ({kind})' WHERE id = 4"
    name_before = db_value(shop.dsn, "SELECT name FROM customers WHERE id = 4")
    with gateway_on_store(shop, pg_dsn, tmp_path, kind) as (gw, take_store_away, hidden):
        async with gw.client(gw.token("dana", "dba"), "legacy") as client:
            ok = await client.call_tool("sql_query", {"sql": "SELECT 1 AS up"})
            assert not ok.is_error, text_of(ok)  # the store works until it is taken away
            take_store_away()
            refused = await client.call_tool("sql_query", {"sql": sql})
        text = text_of(refused)
        assert refused.is_error and UNAVAILABLE in text, text
        assert verdict_of(refused) == "allow"  # the policy allowed it; the recorder refused
        for secret in hidden:
            assert secret not in text
            assert secret not in gw.stderr()
    assert db_value(shop.dsn, "SELECT name FROM customers WHERE id = 4") == name_before
