"""Benchmark: the audit store (issue "Audit").

Target: the SQLite store sustains ≥ 5,000 events/s with group commit on this 2-core machine.

The script is a list of measurements (`MEASUREMENTS`); each returns the rows of one table
and a line for the summary, and `--write` puts them all into the `audit` section of
docs/benchmarks.md.

  - group commit: `producers` concurrent producers (16 by default), each appending single
    events and awaiting each commit (as the gateway's decisions do), into a fresh
    `SqliteAuditStore` (WAL, synchronous=FULL); events are realistic tools/call messages
    (~600 bytes of JSON). Baseline, same run, same store code and file settings: one commit
    per event (`max_batch=1`: the writer commits each event on its own).
  - recording on vs off: the bench/overhead.py workload through two gateways, one with
    `[audit] enabled = false` (bench/audit_recording.py).

    python bench/audit.py               # print the figures
    python bench/audit.py --quick       # a short check run
    python bench/audit.py --write       # also update docs/benchmarks.md
"""

from __future__ import annotations

import sys

# bench/inspect.py is named like the standard library's `inspect` and a script's folder comes
# first on sys.path: move bench/ behind the standard library before anything imports it.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mcp_gate.audit import AuditEvent, Direction, EventKind, SqliteAuditStore
from report import write_section  # bench/report.py (bench/ is on sys.path, last)

TARGET = 5000.0


@dataclass
class Options:
    repeat: int
    events: int
    producers: int


@dataclass
class Result:
    """One measurement's table (markdown lines) and its one-line summary."""

    lines: list[str]
    summary: str


def _event(i: int, j: int) -> AuditEvent:
    sql = f"SELECT id, email, created_at FROM customers WHERE region = 'eu-{i}' AND id > {j}"
    return AuditEvent(
        f"ses_bench_{i}",
        EventKind.MESSAGE,
        time.time(),
        direction=Direction.IN,
        method="tools/call",
        request_id=str(j),
        tool="sql_query",
        data={
            "message": {
                "jsonrpc": "2.0",
                "id": j,
                "method": "tools/call",
                "params": {
                    "name": "sql_query",
                    "arguments": {"sql": sql, "max_rows": 100},
                    "_meta": {"progressToken": f"p-{i}-{j}"},
                },
            },
            "principal": {"subject": f"agent-{i}", "groups": ["developers"]},
        },
    )


async def _sustained(path: Path, producers: int, events: int, max_batch: int) -> float:
    """events/s: `producers` concurrent producers appending single events, awaiting each."""
    store = SqliteAuditStore(path, max_batch=max_batch)
    await store.open()
    each = max(1, events // producers)
    try:

        async def produce(i: int) -> None:
            for j in range(each):
                await store.append([_event(i, j)])

        started = time.perf_counter()
        await asyncio.gather(*(produce(i) for i in range(producers)))
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    return each * producers / elapsed


def _median_rate(opts: Options, max_batch: int, events: int, producers: int) -> float:
    rates = []
    for run in range(opts.repeat):
        with tempfile.TemporaryDirectory(prefix="mcp-gate-bench-audit-") as folder:
            path = Path(folder) / f"gate-{run}.db"
            rates.append(asyncio.run(_sustained(path, producers, events, max_batch)))
    return statistics.median(rates)


def group_commit(opts: Options) -> Result:
    """SQLite store throughput with group commit vs one commit per event."""
    n = opts.producers
    # The baseline is far slower: fewer events keep its runs short (it is a rate).
    base = _median_rate(opts, 1, max(n, opts.events // 20), n)
    grouped = _median_rate(opts, 2000, opts.events, n)
    wider = _median_rate(opts, 2000, opts.events, 4 * n)
    verdict = "meets" if grouped >= TARGET else "MISSES"
    lines = [
        f"SQLite store (WAL, synchronous=FULL), concurrent producers each appending single "
        "~600-byte events and awaiting each commit (a commit holds what every waiting "
        f"producer queued, so the rate is producers ÷ commit latency); median of {opts.repeat} "
        f"runs, {opts.events:,} events per group-commit run.",
        "",
        "| store | producers | events/s | vs the baseline |",
        "|---|---:|---:|---:|",
        f"| baseline: one commit per event (`max_batch=1`) | {n} | {base:,.0f} | 1.00× |",
        f"| group commit (the store as the gateway uses it) | {n} | {grouped:,.0f} | "
        f"{grouped / base:.2f}× |",
        f"| group commit | {4 * n} | {wider:,.0f} | {wider / base:.2f}× |",
    ]
    summary = f"group commit, {n} producers: {grouped:,.0f} events/s ({verdict} ≥ {TARGET:,.0f})"
    return Result(lines, summary)


def recording_overhead(opts: Options) -> Result | None:
    """Recording on vs off on the bench/overhead.py workload at 16 concurrent clients
    (target ≤ 10% slower): two gateways in one run, see bench/audit_recording.py."""
    from audit_recording import recording_overhead as measure  # bench/, on sys.path

    lines, summary, _worst = measure(rounds=max(2, opts.repeat), clients=16, calls=20)
    return Result(lines, summary)


MEASUREMENTS: list[tuple[str, Callable[[Options], Result | None]]] = [
    ("Group commit", group_commit),
    ("Recording on vs off", recording_overhead),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--events", type=int, default=40_000, help="events per run")
    parser.add_argument("--producers", type=int, default=16, help="concurrent producers")
    parser.add_argument("--quick", action="store_true", help="a short check run")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    opts = Options(args.repeat, args.events, args.producers)
    if args.quick:
        opts = Options(1, 8_000, args.producers)
    sections = [
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"SQLite {__import__('sqlite3').sqlite_version}.",
        "",
    ]
    for title, measure in MEASUREMENTS:
        result = measure(opts)
        print(f"== {title}")
        if result is None:
            print("   not measured yet")
            sections += [f"### {title}", "", "Not measured yet.", ""]
            continue
        print("\n".join(result.lines))
        print(f"-> {result.summary}\n")
        sections += [f"### {title}", "", *result.lines, "", result.summary, ""]
    if args.write:
        write_section("audit", "Audit store", "python bench/audit.py --write", "\n".join(sections))


if __name__ == "__main__":
    main()
