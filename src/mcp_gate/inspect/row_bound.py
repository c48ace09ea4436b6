"""A static upper bound on the rows a plain read returns, read off its parse tree.

Used to decide `estimated_rows` rules without asking the planner: a rule `estimated_rows
gt N` cannot hold for a read that is bounded by at most N rows, so the EXPLAIN it would
need is skipped. The bound must agree with the planner, not only with the executor: the
gateway otherwise compares the planner's `Plan Rows`, and a bound that could fall below it
would let through a call the planner-based rule holds.

Only one shape is bounded, and anything else is "no bound" (EXPLAIN as before):

- the statement's top-level `SelectStmt` (a set operation included: its LIMIT applies to
  the whole result) has `LIMIT k` or `FETCH FIRST k ROWS ONLY`, where k is an integer
  literal ≥ 0. The planner puts its Limit node on top and clamps its estimate to
  `min(input rows, k)`, and to at least one row (`LIMIT 0` is estimated as 1 row), so the
  bound is `max(k, 1)`; OFFSET only lowers it.

Not bounded: `LIMIT ALL` / `LIMIT NULL` (no limit), `LIMIT $1` and any expression or cast
(`LIMIT 2+3`, `LIMIT (SELECT …)`, `LIMIT '7'`, `LIMIT 5::int`: the planner guesses 10% of the
input for a non-constant count), numeric literals (`LIMIT 1e3`, beyond int32), negative
counts, `FETCH FIRST k ROWS WITH TIES` (returns more than k rows on ties), a LIMIT inside a
subquery or on one branch of a set operation only, any `WITH` clause, `INTO` and locking
clauses. The caller applies it to single-statement `select`s only.
"""

from __future__ import annotations

from typing import Any


def limit_bound(stmt: Any) -> int | None:
    """The most rows the planner can estimate for the statement node `stmt`
    (`{"SelectStmt": {...}}` of pglast's JSON tree), or None when it is not bounded."""
    if type(stmt) is not dict or len(stmt) != 1:
        return None
    body = stmt.get("SelectStmt")
    if type(body) is not dict:
        return None
    if body.get("withClause") or body.get("intoClause") or body.get("lockingClause"):
        return None
    # LIMIT_OPTION_DEFAULT: no LIMIT at all; LIMIT_OPTION_WITH_TIES: more rows than k.
    if body.get("limitOption") != "LIMIT_OPTION_COUNT":
        return None
    count = body.get("limitCount")
    if type(count) is not dict or len(count) != 1:
        return None
    const = count.get("A_Const")
    if type(const) is not dict or const.get("isnull"):
        return None  # LIMIT ALL, LIMIT NULL
    ival = const.get("ival")
    if type(ival) is not dict:
        return None  # a float, string or bit-string literal, not an integer one
    # pglast's JSON leaves out zero values: `LIMIT 0` is `{"ival": {}}`.
    k = ival.get("ival", 0)
    if type(k) is not int or k < 0:
        return None
    return max(k, 1)
