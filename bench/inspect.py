"""Benchmark: SQL classification and policy decisions (issue "Foundation").

Targets: classification of a typical query set, median ≤ 60 µs per statement; a policy
decision over 100 rules, median ≤ 30 µs. Each figure is compared in the same run with a
baseline: for classification, the parser alone (pglast's JSON + decoding, the floor any
classifier on it pays) and sqlglot's parse (the other parser a gateway might use); for
decisions, the same 100 rules evaluated naively with `fnmatch` per call, no compilation.

    python bench/inspect.py              # print the figures
    python bench/inspect.py --write      # also update docs/benchmarks.md
"""

from __future__ import annotations

import sys

# This file is named like the standard library's `inspect`, and `python bench/inspect.py` puts
# bench/ first on sys.path: move it behind the standard library before anything imports it.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))  # after the standard library, not before

import argparse
import fnmatch
import json
import platform
import statistics
import timeit
import tomllib

import sqlglot
from pglast.parser import parse_sql_json

from mcp_gate.calls import Principal, ToolCall
from mcp_gate.inspect.model import Inspection
from mcp_gate.inspect.sql import inspect_sql
from mcp_gate.policy import parse_policy
from report import write_section  # bench/report.py (bench/ is on sys.path, last)

QUERIES = {
    "point lookup": "SELECT id, email FROM users WHERE id = 42",
    "join with aggregates": (
        "SELECT u.id, u.name, count(o.id) AS n, sum(o.total) FROM users u "
        "JOIN orders o ON o.user_id = u.id WHERE o.created_at > now() - interval '30 days' "
        "GROUP BY u.id, u.name HAVING count(o.id) > 5 ORDER BY n DESC LIMIT 20"
    ),
    "CTE": (
        "WITH recent AS (SELECT user_id, max(created_at) AS last FROM orders GROUP BY user_id) "
        "SELECT u.email, r.last FROM users u JOIN recent r ON r.user_id = u.id "
        "WHERE r.last > '2024-01-01'"
    ),
    "UPDATE with WHERE": (
        "UPDATE accounts SET balance = balance - 100, updated_at = now() "
        "WHERE id = 7 AND balance >= 100"
    ),
    "DELETE": "DELETE FROM sessions WHERE expires_at < now() - interval '1 day'",
}


def per_call_us(fn, number: int, repeat: int) -> float:
    """Median over `repeat` runs of the mean µs per call in a run of `number` calls."""
    fn()
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def hundred_rules() -> str:
    """A policy of 100 varied rules; none matches the benchmark call except the last few."""
    kinds = ["select", "insert", "update", "delete", "merge", "ddl"]
    rules = []
    for i in range(100):
        shape = i % 5
        if shape == 0:
            match = f'{{ tables = ["app{i}.t*", "s{i}.*"] }}'
        elif shape == 1:
            match = f'{{ sql_kind = ["{kinds[i % 6]}"], principal = "svc-{i}-*" }}'
        elif shape == 2:
            match = f'{{ tool = "tool_{i}_*", arguments = {{ path = "/x/{i}/*" }} }}'
        elif shape == 3:
            match = f'{{ groups = ["team-{i}"], sql_risk = ["no_where"] }}'
        else:
            match = f'{{ connection = "conn{i}*", tables = ["*.c{i}"] }}'
        decision = ["allow", "deny", "review"][i % 3]
        rules.append(f'[[rule]]\nname = "r{i}"\nmatch = {match}\ndecision = "{decision}"\n')
    rules.append('[[rule]]\nname = "reads"\nmatch = { sql_kind = "select" }\ndecision = "allow"\n')
    return 'version = 1\n[approval]\napprovers = ["dba"]\n' + "\n".join(rules)


def naive_decide(rules: list[dict], principal: Principal, call: ToolCall, facts: dict) -> str:
    """The same rules, evaluated the obvious way: fnmatch on every pattern, every call."""
    rank = {"allow": 0, "review": 1, "deny": 2}
    best = None
    for rule in rules:
        ok = True
        for key, wanted in rule.get("match", {}).items():
            wanted = [wanted] if isinstance(wanted, str) else wanted
            if key in ("tables", "groups", "sql_risk", "sql_kind"):
                have = facts[key]
                ok = any(fnmatch.fnmatch(h.lower(), w.lower()) for h in have for w in wanted)
            elif key == "arguments":
                ok = all(
                    fnmatch.fnmatch(str(call.arguments.get(k, "")), v) for k, v in wanted.items()
                )
            else:
                value = {"tool": call.tool, "principal": principal.subject}.get(
                    key, call.connection or ""
                )
                ok = any(fnmatch.fnmatch(value.lower(), w.lower()) for w in wanted)
            if not ok:
                break
        if ok and (best is None or rank[rule["decision"]] > rank[best]):
            best = rule["decision"]
    return best or "deny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--repeat", type=int, default=25, help="runs per figure (median)")
    args = parser.parse_args()

    rows = []
    classify = []
    for name, sql in QUERIES.items():
        ours = per_call_us(lambda sql=sql: inspect_sql(sql), 200, args.repeat)
        floor = per_call_us(lambda sql=sql: json.loads(parse_sql_json(sql)), 200, args.repeat)
        glot = per_call_us(lambda sql=sql: sqlglot.parse(sql, read="postgres"), 50, args.repeat)
        classify.append(ours)
        rows.append((name, ours, floor, glot))
    median = statistics.median(classify)

    policy = parse_policy(hundred_rules())
    raw_rules = tomllib.loads(hundred_rules())["rule"]
    principal = Principal("alice", frozenset({"developers", "analysts"}))
    call = ToolCall("sql_query", {"sql": QUERIES["join with aggregates"]}, "builtin", "demo")
    inspection = Inspection(sql=inspect_sql(QUERIES["join with aggregates"]))
    facts = {
        "tables": inspection.sql.relations,
        "groups": principal.groups,
        "sql_risk": inspection.risks,
        "sql_kind": {inspection.sql.kind},
    }
    assert policy.engine.decide(principal, call, inspection).decision == "allow"
    assert naive_decide(raw_rules, principal, call, facts) == "allow"
    decide = per_call_us(
        lambda: policy.engine.decide(principal, call, inspection), 2000, args.repeat
    )
    naive = per_call_us(lambda: naive_decide(raw_rules, principal, call, facts), 200, args.repeat)

    lines = [
        f"Machine: {platform.machine()}, Python {platform.python_version()}; "
        f"median of {args.repeat} runs per figure.",
        "",
        "| query | inspect_sql µs | parser alone µs | ratio | sqlglot parse µs | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ours, floor, glot in rows:
        lines.append(
            f"| {name} | {ours:.1f} | {floor:.1f} | {ours / floor:.2f}× | {glot:.1f} | "
            f"{ours / glot:.2f}× |"
        )
    lines += [
        "",
        f"**Classification: median {median:.1f} µs per statement** (target ≤ 60 µs).",
        "",
        "| policy decision, 100 rules | µs | ratio |",
        "|---|---:|---:|",
        f"| compiled engine (`Engine.decide`) | {decide:.1f} | 1.00× |",
        f"| baseline: same rules, fnmatch per call | {naive:.1f} | {naive / decide:.2f}× |",
        "",
        f"**Decision: median {decide:.1f} µs** (target ≤ 30 µs).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(
            "inspect",
            "SQL classification and policy decisions",
            "python bench/inspect.py --write",
            text,
        )


if __name__ == "__main__":
    main()
