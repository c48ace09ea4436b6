"""A read's static row bound (a top-level constant LIMIT) decides `estimated_rows gt N` rules
without EXPLAIN, exactly as the planner would: the bound is never below the planner's own
estimate (checked on a real PostgreSQL), and anything doubtful has no bound.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mcp_gate.calls import Principal, ToolCall
from mcp_gate.inspect.model import Inspection
from mcp_gate.inspect.sql import inspect_sql
from mcp_gate.policy.loader import parse_policy
from mcp_gate.sqltools import explain
from pgserver import TestDatabase, reader_database
from pool_helpers import reader_pool

BOUNDED = {
    "SELECT id FROM items ORDER BY id LIMIT 20": 20,
    "SELECT id FROM items FETCH FIRST 5 ROWS ONLY": 5,
    "SELECT id FROM items FETCH FIRST ROW ONLY": 1,
    "SELECT id FROM items LIMIT 5 OFFSET 100": 5,
    "SELECT id FROM items OFFSET 3 LIMIT 7": 7,
    # LIMIT 0 is estimated as one row by the planner: the bound follows it.
    "SELECT id FROM items LIMIT 0": 1,
    "SELECT id FROM items UNION SELECT grp FROM items LIMIT 3": 3,
    "(SELECT id FROM items) UNION ALL (SELECT id FROM items) LIMIT 4": 4,
    "VALUES (1), (2), (3) LIMIT 2": 2,
    "SELECT pg_catalog.generate_series(1, 100000000) AS g LIMIT 6": 6,
    "SELECT a.id FROM items a CROSS JOIN items b LIMIT 10": 10,
    "SELECT id FROM (SELECT id FROM items) s LIMIT 8": 8,
    "SELECT id FROM items WHERE false LIMIT 9": 9,
    "SELECT count(*) AS n FROM items LIMIT 1": 1,
    "SELECT id FROM items LIMIT 2147483647": 2147483647,
}

UNBOUNDED = [
    "SELECT id FROM items",
    "SELECT id FROM items LIMIT ALL",
    "SELECT id FROM items LIMIT NULL",
    "SELECT id FROM items LIMIT $1",
    "SELECT id FROM items LIMIT (SELECT 5)",
    "SELECT id FROM items LIMIT 2 + 3",
    "SELECT id FROM items LIMIT '7'",
    "SELECT id FROM items LIMIT 5::int",
    "SELECT id FROM items LIMIT 1e3",
    "SELECT id FROM items LIMIT 20.5",
    "SELECT id FROM items LIMIT 99999999999",
    "SELECT id FROM items LIMIT -1",
    "SELECT id FROM items OFFSET 5",
    "SELECT id FROM items ORDER BY grp FETCH FIRST 5 ROWS WITH TIES",
    # A LIMIT that bounds only a part of the result.
    "SELECT id FROM (SELECT id FROM items LIMIT 5) s CROSS JOIN items",
    "(SELECT id FROM items LIMIT 1) UNION ALL SELECT id FROM items",
    "SELECT id FROM items UNION ALL (SELECT id FROM items LIMIT 1)",
    "SELECT id FROM items WHERE id IN (SELECT id FROM items LIMIT 3)",
    "SELECT (SELECT id FROM items LIMIT 1) AS one, id FROM items",
    # WITH of any kind, data-modifying CTEs included, is not bounded.
    "WITH x AS (SELECT id FROM items) SELECT id FROM x LIMIT 3",
    "WITH d AS (DELETE FROM items RETURNING id) SELECT id FROM d LIMIT 1",
    "WITH u AS (UPDATE items SET grp = 1 RETURNING id) SELECT id FROM u LIMIT 1",
    # Not a single plain read.
    "SELECT id FROM items LIMIT 3; SELECT id FROM items",
    "SELECT id FROM items FOR UPDATE LIMIT 1",
    "SELECT id INTO copy FROM items LIMIT 1",
    "EXPLAIN SELECT id FROM items LIMIT 1",
    "DELETE FROM items WHERE id IN (SELECT id FROM items LIMIT 1)",
    "INSERT INTO items SELECT * FROM items LIMIT 1",
    "SELECT pg_catalog.pg_sleep(1) LIMIT 1",  # a dangerous function: kind other
    "not sql at all LIMIT 1",
    "",
]


@pytest.mark.parametrize("sql", list(BOUNDED))
def test_a_top_level_constant_limit_bounds_the_read(sql: str) -> None:
    inspection = inspect_sql(sql)
    assert inspection.kind == "select"
    assert inspection.row_bound == BOUNDED[sql]


@pytest.mark.parametrize("sql", UNBOUNDED)
def test_anything_else_has_no_bound(sql: str) -> None:
    assert inspect_sql(sql).row_bound is None


# --------------------------------------------------------------------------- planner


@pytest.fixture(scope="module")
def planner_db(module_db: TestDatabase) -> Iterator[tuple[str, str]]:
    """A table of 5000 rows, analysed, and a reader role that may read it."""
    with reader_database(
        module_db,
        "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL)",
        "INSERT INTO items SELECT g, g % 10 FROM generate_series(1, 5000) g",
        "ANALYZE items",
        prefix="bound_reader",
    ) as credentials:
        yield credentials


@pytest.mark.anyio
async def test_the_bound_is_never_below_the_planners_estimate(
    planner_db: tuple[str, str],
) -> None:
    """What makes skipping the EXPLAIN exact: for every bounded read, the planner's own
    estimate (what `estimated_rows` rules compare) is at most the bound."""
    async with reader_pool(*planner_db) as pool:
        for sql, bound in BOUNDED.items():
            plan = await explain(pool, sql)
            assert plan["estimated_rows"] <= bound, (sql, plan["estimated_rows"])
        # The unbounded shapes the planner really estimates above a small LIMIT's bound.
        for sql in ("SELECT id FROM items OFFSET 5", "SELECT id FROM items LIMIT 2 + 3000"):
            assert (await explain(pool, sql))["estimated_rows"] > 20


# --------------------------------------------------------------------------- engine

POLICY = """
version = 1
default = "deny"

[approval]
approvers = ["dba"]

[[rule]]
name = "reads"
match = { sql_kind = ["select"] }
decision = "allow"

[[rule]]
name = "bulk export"
match = { tool = ["sql_query"], sql_kind = ["select"], estimated_rows = { gt = 100 } }
decision = "review"
"""

ALICE = Principal("alice", frozenset({"developers"}))


def decide(policy: str, sql: str, estimate: int | None = None):
    engine = parse_policy(policy, "test.toml").engine
    call = ToolCall("sql_query", {"sql": sql}, "builtin", "demo")
    return engine.decide(ALICE, call, Inspection(sql=inspect_sql(sql), estimated_rows=estimate))


def test_a_bound_at_or_below_the_threshold_decides_without_an_estimate() -> None:
    for sql in ("SELECT id FROM t LIMIT 20", "SELECT id FROM t LIMIT 100", "SELECT 1 LIMIT 0"):
        d = decide(POLICY, sql)
        assert (d.decision, d.estimate_wanted, d.unknown, d.blocked_by_estimate) == (
            "allow", False, (), ()
        ), sql  # fmt: skip
    # One row above the threshold, or no bound: the planner is asked, as before.
    for sql in ("SELECT id FROM t LIMIT 101", "SELECT id FROM t", "SELECT id FROM t LIMIT $1"):
        d = decide(POLICY, sql)
        assert d.decision == "allow" and d.estimate_wanted, sql
        assert d.blocked_by_estimate == ("bulk export",)
    # A known estimate still decides on its own.
    assert decide(POLICY, "SELECT id FROM t LIMIT 20", estimate=5000).decision == "review"


def test_only_conditions_no_count_up_to_the_bound_can_meet_are_decided() -> None:
    gte = POLICY.replace("gt = 100", "gte = 20")
    assert not decide(gte, "SELECT id FROM t LIMIT 19").estimate_wanted
    assert decide(gte, "SELECT id FROM t LIMIT 20").estimate_wanted  # 20 >= 20 may hold
    # `gt = 0` holds for the planner's one row under LIMIT 0: not decided by the bound.
    assert decide(POLICY.replace("gt = 100", "gt = 0"), "SELECT 1 LIMIT 0").estimate_wanted
    # Upper limits could hold for a small read: a bound cannot decide them either way.
    lt = POLICY.replace("gt = 100", "lt = 1000000")
    assert decide(lt, "SELECT id FROM t LIMIT 5").estimate_wanted
    both = POLICY.replace("gt = 100", "gt = 10, lt = 1000000")
    assert not decide(both, "SELECT id FROM t LIMIT 10").estimate_wanted
    assert decide(both, "SELECT id FROM t LIMIT 11").estimate_wanted


def test_an_unless_the_bound_refutes_is_decided_strictly() -> None:
    """`unless estimated_rows gt 50` cannot exempt a read of at most 20 rows: the deny
    applies without asking the planner; at most 60 rows it might, so the planner is asked."""
    policy = """
version = 1
default = "allow"

[[rule]]
name = "only big reads"
match = { sql_kind = ["select"] }
unless = { estimated_rows = { gt = 50 } }
decision = "deny"
"""
    d = decide(policy, "SELECT id FROM t LIMIT 20")
    assert d.decision == "deny" and not d.estimate_wanted
    d = decide(policy, "SELECT id FROM t LIMIT 60")
    assert d.decision == "deny" and d.estimate_wanted
