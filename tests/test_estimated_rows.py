"""Estimated rows from EXPLAIN: `estimated_rows` rules and the approver see the planner's
estimate; when the estimate cannot be had, a rule that needs it fails closed.

Engine semantics first (pure), then a real gateway on real PostgreSQL with a table of known
size, real SDK clients and real tokens.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import anyio
import pytest

from approval_helpers import admin, db_value, decide_when_pending, wait_pending
from gateway_helpers import MCP_GATE, Gateway, text_of
from mcp_gate.calls import Principal, ToolCall
from mcp_gate.inspect.model import Inspection
from mcp_gate.inspect.sql import inspect_sql
from mcp_gate.policy.loader import parse_policy
from pgserver import admin_execute
from shop_helpers import sample_shop, shop_gateway

BIG = 50_000  # rows in `events`
POLICY = """
version = 1
default = "deny"

[approval]
approvers = ["dba"]
wait = "20s"

[[rule]]
name = "reads"
match = { sql_kind = ["select"] }
decision = "allow"

[[rule]]
name = "bulk export"
match = { sql_kind = ["select"], estimated_rows = { gt = 10000 } }
decision = "review"

[[rule]]
name = "runaway"
match = { estimated_rows = { gt = 100000000 } }
decision = "deny"

[[rule]]
name = "writes need a DBA"
match = { sql_kind = ["insert", "update", "delete"] }
decision = "review"

[[rule]]
name = "never unbounded"
match = { sql_risk = ["no_where", "multi_statement"] }
decision = "deny"

[[mask]]
detect = ["email"]
strategy = "redact"

[[mask]]
columns = ["*.body"]
strategy = "redact"
"""

ALICE = Principal("alice", frozenset({"developers"}))


def engine(text: str):
    return parse_policy(text, "test.toml").engine


def select(sql: str = "SELECT id FROM events") -> tuple[ToolCall, Inspection]:
    return ToolCall("sql_query", {"sql": sql}, "builtin", "demo"), Inspection(sql=inspect_sql(sql))


# --------------------------------------------------------------------------- engine


def test_estimate_is_wanted_only_when_it_could_change_the_decision() -> None:
    e = engine(POLICY)
    call, inspection = select()
    d = e.decide(ALICE, call, inspection)
    # "bulk export" might hold the read: ask the planner.
    assert d.decision == "allow" and d.estimate_wanted
    assert d.blocked_by_estimate == ("bulk export", "runaway")
    # Calls without SQL have no rows: the rules cannot hold, nothing to estimate.
    tables = e.decide(ALICE, ToolCall("sql_list_tables", {}, "builtin", "demo"), Inspection())
    assert not tables.estimate_wanted and not tables.unknown
    # Already denied by a rule that needs no estimate: EXPLAIN would change nothing.
    call, inspection = select("DELETE FROM events")
    d = e.decide(ALICE, call, inspection)
    assert d.decision == "deny" and not d.estimate_wanted and d.blocked_by_estimate == ()
    # A policy without estimated_rows rules never asks.
    plain = engine('version = 1\n[[rule]]\nname = "r"\nmatch = { sql_kind = ["select"] }\n'
                   'decision = "allow"\n')  # fmt: skip
    assert not plain.needs_estimate
    assert not plain.decide(ALICE, *select()).estimate_wanted


def test_known_estimate_decides_and_clears_the_unknowns() -> None:
    e = engine(POLICY)
    call, inspection = select()
    small = e.decide(ALICE, call, Inspection(sql=inspection.sql, estimated_rows=3))
    assert small.decision == "allow" and not small.estimate_wanted and not small.unknown
    big = e.decide(ALICE, call, Inspection(sql=inspection.sql, estimated_rows=BIG))
    assert big.decision == "review" and big.deciding == ("bulk export",)
    assert "estimated_rows: 50000 is gt 10000" in big.matched[-1].why
    huge = e.decide(ALICE, call, Inspection(sql=inspection.sql, estimated_rows=10**9))
    assert huge.decision == "deny" and huge.deciding == ("runaway",)


def test_unless_on_the_estimate_is_the_strict_side_until_known() -> None:
    e = engine(
        """
version = 1
default = "allow"
[[rule]]
name = "big writes"
match = { sql_kind = ["delete"] }
unless = { estimated_rows = { lte = 10 } }
decision = "deny"
"""
    )
    call, inspection = select("DELETE FROM events WHERE id < 5")
    d = e.decide(ALICE, call, inspection)
    assert d.decision == "deny" and d.estimate_wanted  # an estimate might exempt it
    assert d.blocked_by_estimate == ()  # without one it stays denied: nothing to block
    few = e.decide(ALICE, call, Inspection(sql=inspection.sql, estimated_rows=4))
    assert few.decision == "allow" and few.exempted[0].rule == "big writes"
    # gt = 0 is a real bound, described as such.
    zero = engine(
        'version = 1\n[[rule]]\nname = "z"\nmatch = { estimated_rows = { gt = 0 } }\n'
        'decision = "deny"\n'
    ).decide(ALICE, call, Inspection(sql=inspection.sql, estimated_rows=1))
    assert zero.matched[0].why == ("estimated_rows: 1 is gt 0",)


# --------------------------------------------------------------------------- gateway


@pytest.fixture(scope="module")
def gateway(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with sample_shop(pg_dsn, "test_estimates") as shop:
        admin_execute(
            shop.dsn,
            f"CREATE TABLE events AS SELECT g AS id, md5(g::text) AS body "
            f"FROM generate_series(1, {BIG}) g",
            "ALTER TABLE events ADD PRIMARY KEY (id)",
            "ANALYZE events",
            f'GRANT SELECT ON events TO "{shop.reader_role}"',
            f'GRANT SELECT, DELETE ON events TO "{shop.writer_role}"',
        )
        with shop_gateway(shop, tmp_path_factory.mktemp("estimates"), POLICY) as gw:
            yield gw


def verdict(result) -> dict:
    return result.meta["io.mcp-gate/decision"]


@pytest.mark.anyio
async def test_point_lookup_runs_and_a_big_scan_is_held_with_its_estimate(
    gateway: Gateway,
) -> None:
    agent, dba = gateway.token("agent", "developers"), gateway.token("dana", "dba")
    async with gateway.client(agent, "legacy") as client:
        point = await client.call_tool("sql_query", {"sql": "SELECT id FROM events WHERE id = 7"})
        assert not point.is_error, text_of(point)
        assert verdict(point)["decision"] == "allow" and point.structured_content["rows"] == [[7]]
        # With a parameter, the planner sees the bound value (a custom plan).
        param = await client.call_tool(
            "sql_query", {"sql": "SELECT id FROM events WHERE id > $1", "params": [49_990]}
        )
        assert not param.is_error and verdict(param)["decision"] == "allow", text_of(param)

        async with anyio.create_task_group() as tg:
            seen: dict = {}

            async def approver() -> None:
                seen.update(await wait_pending(gateway, dba))
                ap = await anyio.to_thread.run_sync(
                    lambda: admin(gateway, dba, "GET", f"/approvals/{seen['id']}")
                )
                seen["detail"] = ap.json()
                await anyio.to_thread.run_sync(
                    lambda: admin(gateway, dba, "POST", f"/approvals/{seen['id']}/deny",
                                  json={"reason": "too much"})
                )  # fmt: skip

            tg.start_soon(approver)
            scan = await client.call_tool("sql_query", {"sql": "SELECT id, body FROM events"})
    assert scan.is_error and "denied by dana: too much" in text_of(scan)
    assert verdict(scan)["reasons"][0] == "bulk export"
    # The approver saw the planner's estimate (ANALYZEd: close to the real size).
    assert 0.8 * BIG <= seen["estimated_rows"] <= 1.2 * BIG
    assert seen["detail"]["estimated_rows"] == seen["estimated_rows"]


@pytest.mark.anyio
async def test_a_deny_rule_on_the_estimate_refuses_a_cross_join(gateway: Gateway) -> None:
    async with gateway.client(gateway.token("agent", "developers"), "2026-07-28") as client:
        result = await client.call_tool(
            "sql_query", {"sql": "SELECT a.id FROM events a CROSS JOIN events b"}
        )
    assert result.is_error and verdict(result)["decision"] == "deny"
    assert verdict(result)["reasons"][0] == "runaway", text_of(result)


@pytest.mark.anyio
async def test_explain_failure_fails_closed(gateway: Gateway) -> None:
    """A read whose EXPLAIN fails cannot be judged by "bulk export": it is denied, with why,
    even though "reads" alone would allow it."""
    async with gateway.client(gateway.token("agent", "developers"), "legacy") as client:
        bad = await client.call_tool(
            "sql_query", {"sql": "SELECT id FROM events WHERE id = 'ann@example.com'"}
        )
        # Too many parameters for the statement: EXPLAIN refuses the bind.
        extra = await client.call_tool(
            "sql_query", {"sql": "SELECT id FROM events WHERE id = 1", "params": [1, 2]}
        )
    for result in (bad, extra):
        text = text_of(result)
        assert result.is_error and verdict(result)["decision"] == "deny", text
        assert verdict(result)["reasons"][0] == "estimated_rows_unknown"
        assert 'rule "bulk export"' in text and "EXPLAIN failed" in text
    # PostgreSQL quotes the bad value; the detectors still run over the reason.
    assert "ann@example.com" not in text_of(bad) and "invalid input syntax" in text_of(bad)


@pytest.mark.anyio
async def test_explain_failure_on_masked_columns_withholds_values(gateway: Gateway) -> None:
    """Nine bare digits are no detector's shape: for a statement reading a masked column, the
    reason keeps only the database message's wording, as a failed query's would."""
    async with gateway.client(gateway.token("agent", "developers"), "legacy") as client:
        result = await client.call_tool(
            "sql_query", {"sql": "SELECT body FROM events WHERE id = '123456789x'"}
        )
    text = text_of(result)
    assert result.is_error and verdict(result)["reasons"][0] == "estimated_rows_unknown", text
    assert "123456789" not in text and "withheld" in text


@pytest.mark.anyio
async def test_held_delete_carries_its_estimate_and_explain_writes_nothing(
    gateway: Gateway,
) -> None:
    db = gateway.db
    agent, dba = gateway.token("agent", "developers"), gateway.token("dana", "dba")
    async with gateway.client(agent, "legacy") as client, anyio.create_task_group() as tg:
        seen: dict = {}

        async def approver() -> None:
            seen.update(await wait_pending(gateway, dba))
            # Explained, and pending: nothing deleted yet.
            seen["count"] = await anyio.to_thread.run_sync(
                lambda: db_value(db, "SELECT count(*) FROM events")
            )
            seen.update(await decide_when_pending(gateway, dba, "deny", "not these"))

        tg.start_soon(approver)
        result = await client.call_tool("sql_query", {"sql": "DELETE FROM events WHERE id <= 300"})
    assert result.is_error and "denied by dana" in text_of(result)
    assert 200 <= seen["estimated_rows"] <= 450  # rows the DELETE would touch, not 0
    assert seen["count"] == BIG
    assert db_value(db, "SELECT count(*) FROM events") == BIG


def test_policy_test_shows_the_estimate(gateway: Gateway) -> None:
    def policy_test(sql: str) -> dict:
        out = subprocess.run(
            [*MCP_GATE, "policy", "test", str(gateway.folder / "policies.toml"),
             "--config", str(gateway.config), "--sql", sql, "--json"],
            env=gateway.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    big = policy_test("SELECT id FROM events")
    assert 0.8 * BIG <= big["inspection"]["estimated_rows"] <= 1.2 * BIG
    assert big["decision"]["decision"] == "review"
    point = policy_test("SELECT id FROM events WHERE id = 3")
    assert point["inspection"]["estimated_rows"] == 1
    assert point["decision"]["decision"] == "allow"
    bad = policy_test("SELECT id FROM events WHERE id = 'x'")
    assert bad["inspection"]["estimated_rows"] is None
    assert bad["decision"]["decision"] == "deny"
    assert "EXPLAIN failed" in bad["columns"]["estimate_problem"]
    human = subprocess.run(
        [*MCP_GATE, "policy", "test", str(gateway.folder / "policies.toml"),
         "--config", str(gateway.config), "--sql", "SELECT id FROM events"],
        env=gateway.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "estimated rows: " in human.stdout, human.stdout
