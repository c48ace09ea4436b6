"""Benchmark: the analysis before each read (issue "Masking"): classification (pglast) plus
per-position lineage (sqlglot), uncached and from the cache.

Targets: median ≤ 2 ms, p99 ≤ 10 ms on a realistic query mix; a repeated query (same text,
same catalog version) ≤ 20 µs from the cache. Baseline in the same run: sqlglot's own
`qualify` of the same text with the same schema (what any sqlglot-based analysis pays before
it resolves a single column), to show what the fail-closed resolver adds.

    python bench/analysis.py [--rounds 40] [--write]
"""

from __future__ import annotations

import sys

# bench/inspect.py is named like the standard library's `inspect` and a script's folder comes
# first on sys.path: move bench/ behind the standard library before anything imports it.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))  # after the standard library, not before

import argparse
import contextlib
import statistics
import time

import sqlglot
from sqlglot.optimizer.qualify import qualify
from sqlglot.schema import MappingSchema

from mcp_gate.inspect.catalog import Catalog, Relation
from mcp_gate.inspect.lineage import LineageCache, LineageUnresolved, trace
from mcp_gate.inspect.sql import inspect_sql
from report import write_section  # bench/report.py (bench/ is on sys.path, last)

USERS = ("id", "name", "email", "ssn", "Email", "card_number", "created_at")
CATALOG = Catalog.from_relations(
    [
        Relation("public", "users", "table", USERS),
        Relation("public", "orders", "table", ("id", "user_id", "total", "note")),
        Relation("hr", "payroll", "table", ("id", "user_id", "iban", "salary")),
        Relation(
            "public", "user_emails", "view", ("id", "contact"),
            " SELECT id,\n    email AS contact\n   FROM public.users;",
        ),
        Relation(
            "public", "v2", "view", ("contact", "id"),
            " SELECT contact,\n    id\n   FROM public.user_emails\n  WHERE (id > 0);",
        ),
    ]
)  # fmt: skip

MIX = [
    "SELECT id, email FROM users WHERE id = 42",
    "SELECT * FROM users",
    "SELECT id, name FROM users ORDER BY created_at DESC LIMIT 20",
    "SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > 10 ORDER BY o.total DESC LIMIT 10",
    "SELECT lower(u.email), count(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id GROUP BY 1 ORDER BY 2 DESC",
    "SELECT count(*) FROM orders",
    "SELECT user_id, sum(total) AS spent FROM orders GROUP BY user_id HAVING sum(total) > 100",
    "WITH big AS (SELECT user_id, sum(total) AS s FROM orders GROUP BY user_id) SELECT u.name, b.s FROM big b JOIN users u ON u.id = b.user_id",
    "SELECT id, name, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) AS n FROM users u",
    "SELECT date_trunc('day', created_at) AS d, count(*) FROM users GROUP BY 1 ORDER BY 1",
    "SELECT * FROM orders WHERE note ILIKE '%gift%' ORDER BY id LIMIT 50",
    "SELECT contact FROM user_emails WHERE id = 3",
    "SELECT p.salary, u.name FROM hr.payroll p JOIN users u ON u.id = p.user_id WHERE p.salary > 1000",
    "SELECT name, row_number() OVER (PARTITION BY name ORDER BY created_at) FROM users",
    "SELECT id FROM users WHERE id IN (SELECT user_id FROM orders WHERE total > 100)",
    "SELECT u.id, u.name, o.id, o.total, o.note FROM users u JOIN orders o ON o.user_id = u.id WHERE u.created_at > now() - interval '7 days'",
    "WITH a AS (SELECT user_id, count(*) c FROM orders GROUP BY user_id), b AS (SELECT user_id, max(total) m FROM orders GROUP BY user_id) SELECT u.name, a.c, b.m, CASE WHEN b.m > 100 THEN 'big' ELSE 'small' END FROM users u JOIN a ON a.user_id = u.id JOIN b ON b.user_id = u.id ORDER BY a.c DESC",
    "SELECT name FROM users UNION SELECT note FROM orders",
    "SELECT id, coalesce(note, '') FROM orders WHERE user_id = 1",
    "SELECT json_agg(o) FROM orders o WHERE o.user_id = 2",
    "SELECT max(total), min(total), avg(total) FROM orders",
    "SELECT DISTINCT user_id FROM orders",
    "SELECT u.name, (SELECT string_agg(note, ', ') FROM orders WHERE user_id = u.id) FROM users u WHERE u.id < 100",
    "SELECT * FROM v2 ORDER BY id",
    "SELECT o.* FROM orders o WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = o.user_id AND u.name LIKE 'a%')",
]


def analyze(sql: str) -> None:
    inspection = inspect_sql(sql)
    with contextlib.suppress(LineageUnresolved):
        trace(sql, CATALOG, inspection=inspection)


SCHEMA = MappingSchema(
    {
        "public": {r.name: {c: "text" for c in r.columns} for r in CATALOG.relations.values()
                   if r.schema == "public" and r.kind == "table"},
        "hr": {"payroll": {c: "text" for c in ("id", "user_id", "iban", "salary")}},
    },
    dialect="postgres",
    normalize=False,
)  # fmt: skip


def baseline(sql: str) -> None:
    with contextlib.suppress(Exception):
        qualify(sqlglot.parse_one(sql, read="postgres"), schema=SCHEMA, dialect="postgres")


def timings(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        for sql in MIX:
            started = time.perf_counter()
            fn(sql)
            out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def p99(values: list[float]) -> float:
    return values[int(len(values) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    timings(analyze, 2)  # warm up
    ours = timings(analyze, args.rounds)
    base = timings(baseline, args.rounds)
    cache = LineageCache()
    for sql in MIX:
        with contextlib.suppress(LineageUnresolved):
            cache.trace(sql, CATALOG)

    def cached(sql: str) -> None:
        with contextlib.suppress(LineageUnresolved):
            cache.trace(sql, CATALOG)

    hits = [t * 1000 for t in timings(cached, args.rounds * 10)]
    lines = [
        f"{len(MIX)} typical application queries × {args.rounds} rounds, on a catalog of "
        "5 relations (2 views); sqlglot with sqlglotc.",
        "",
        "| analysis | median | p99 | ratio (median) |",
        "|---|---:|---:|---:|",
        f"| classification + lineage (`inspect_sql` + `trace`) | {statistics.median(ours):.2f} ms "
        f"| {p99(ours):.2f} ms | {statistics.median(ours) / statistics.median(base):.2f}× |",
        f"| baseline: sqlglot parse + qualify only | {statistics.median(base):.2f} ms "
        f"| {p99(base):.2f} ms | 1.00× |",
        f"| repeated query from `LineageCache` | {statistics.median(hits):.2f} µs "
        f"| {p99(hits):.2f} µs | |",
        "",
        "Targets: median ≤ 2 ms, p99 ≤ 10 ms; cached ≤ 20 µs.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(
            "analysis", "Analysis before a read (classification + lineage)",
            "python bench/analysis.py --write", text,
        )  # fmt: skip


if __name__ == "__main__":
    main()
