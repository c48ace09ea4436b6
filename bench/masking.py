"""Benchmark: column masking and value detectors (issue "Masking").

Targets: column masking ≥ 1,000,000 masked cells/s; detectors over result text ≥ 20 MB/s.
Each figure is compared in the same run with a baseline:
  - column masking: 200,000 rows × 5 columns, 3 of them masked (email, SSN, card; all values
    distinct), with each strategy and with a mix; baseline: rebuilding the rows as new tuples
    with nothing masked, the floor any masking that returns new rows pays;
  - detectors: all seven over a realistic text table (ids, names, emails, dates, amounts,
    statuses, notes with some cards, SSNs, phone numbers, order numbers), as the gateway
    renders it; baselines: one `str.find` pass and one `re.search` of a trivial pattern over
    the same text. Also the detectors over the same result's cells (`mask_result`).

    python bench/masking.py              # print the figures
    python bench/masking.py --write      # also update docs/benchmarks.md
"""

from __future__ import annotations

import sys

# bench/inspect.py is named like the standard library's `inspect` and a script's folder comes
# first on sys.path: move bench/ behind the standard library before anything imports it.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))  # after the standard library, not before

import argparse
import datetime as dt
import decimal
import platform
import random
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from mcp_gate.mask import DETECTORS, mask_result, mask_rows, scanner
from mcp_gate.sqltools.model import Column, QueryResult
from mcp_gate.sqltools.results import text_table
from report import write_section  # bench/report.py (bench/ is on sys.path, last)

BENCH = Path(__file__).resolve().parent
KEY = b"bench-masking-key-0123456789abcdef"
FIRST = ["Alice", "Bob", "Carol", "Dave", "Eve", "José", "Zoë", "Wei", "Priya", "Łukasz"]
LAST = ["Smith", "Jones", "García", "Müller", "Nguyen", "Okafor", "Kowalski", "O'Brien"]
CARDS = ["4242 4242 4242 4242", "5555555555554444", "3782-822463-10005", "6011111111111117"]


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def masking_rows(n: int, rng: random.Random) -> list[tuple[object, ...]]:
    rows = []
    for i in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first.lower()}.{last.lower()}{i}@example.com"
        ssn = f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
        body = "4" + "".join(str(rng.randint(0, 9)) for _ in range(14))
        rows.append((i, f"{first} {last}", email, ssn, body + luhn_digit(body)))
    return rows


def result_table(n: int, rng: random.Random) -> QueryResult:
    columns = [
        Column("id", "int4"),
        Column("name", "text"),
        Column("email", "text"),
        Column("created_at", "timestamptz"),
        Column("total", "numeric"),
        Column("status", "text"),
        Column("note", "text"),
    ]
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        r = rng.random()
        if r < 0.02:
            note = f"paid with {rng.choice(CARDS)}"
        elif r < 0.04:
            note = f"ssn {rng.randint(1, 665):03d}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
        elif r < 0.10:
            note = (
                f"call {rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
            )
        elif r < 0.30:
            note = f"order ORD-{rng.randint(10**9, 10**12)} shipped"
        elif r < 0.40:
            note = f"ref {rng.randint(10**12, 10**16)}"
        else:
            note = ""
        rows.append(
            (
                i,
                f"{first} {last}",
                f"{first.lower()}.{last.lower()}{i}@example.com",
                start + dt.timedelta(minutes=rng.randint(0, 500_000)),
                decimal.Decimal(rng.randint(100, 9_999_999)) / 100,
                rng.choice(["paid", "open", "refunded", "shipped"]),
                note,
            )
        )
    return QueryResult(columns, rows, len(rows), False, 0.0)


def bench_columns(repeat: int) -> tuple[list[str], float]:
    rows = masking_rows(200_000, random.Random(1))
    # the floor: every row rebuilt as a new tuple, nothing masked
    base = median_seconds(lambda: [(a, b, c, d, e) for a, b, c, d, e in rows], repeat)
    lines = [
        "Column masking: 200,000 rows × 5 columns, 3 masked (email, SSN, card; every value "
        "distinct): 600,000 masked cells per run.",
        "",
        "| strategies (email, SSN, card) | ms | masked cells/s | vs the baseline |",
        "|---|---:|---:|---:|",
        f"| baseline: rebuild the rows, nothing masked | {base * 1000:.1f} | – | 1.00× |",
    ]
    cells = len(rows) * 3
    worst = float("inf")
    cases: list[tuple[str, list[str | None]]] = [
        (name, [None, None, name, name, name]) for name in ("redact", "null", "partial", "hash")
    ]
    cases.append(("mix: partial, redact, hash", [None, None, "partial", "redact", "hash"]))
    for label, strategies in cases:
        seconds = median_seconds(lambda s=strategies: mask_rows(rows, s, hash_key=KEY), repeat)
        rate = cells / seconds
        worst = min(worst, rate)
        lines.append(f"| {label} | {seconds * 1000:.1f} | {rate:,.0f} | {seconds / base:.2f}× |")
    # columns with repeated values (a status, a country): each distinct string is hashed once
    repeated = [(*row[:2], *rows[i % 1000][2:]) for i, row in enumerate(rows)]
    strategies = [None, None, "hash", "hash", "hash"]
    seconds = median_seconds(lambda: mask_rows(repeated, strategies, hash_key=KEY), repeat)
    lines.append(
        f"| hash, 1,000 distinct values per column (not the target case) | {seconds * 1000:.1f} "
        f"| {cells / seconds:,.0f} | {seconds / base:.2f}× |"
    )
    return lines, worst


def bench_detectors(repeat: int) -> tuple[list[str], float]:
    result = result_table(20_000, random.Random(2))
    text = text_table(result, max_cell=200, max_chars=10**9)
    size_mb = len(text.encode()) / 1e6
    dets = [(name, "redact") for name in DETECTORS]
    sc = scanner(dets, KEY)
    found = len(sc.find(text))
    trivial = re.compile("zqxj")
    scan = median_seconds(lambda: sc.redact_text(text), repeat)
    find = median_seconds(lambda: text.find("\x00"), repeat)
    search = median_seconds(lambda: trivial.search(text), repeat)
    cells_text = sum(len(str(v).encode()) for row in result.rows for v in row if v is not None)
    cells = median_seconds(lambda: mask_result(result, [None] * 7, sc, hash_key=KEY), repeat)
    mbps = size_mb / scan
    lines = [
        f"Detectors (all seven, redact): a {len(result.rows):,}-row text table of "
        f"{size_mb:.1f} MB ({found:,} values found: one email per row, some cards and SSNs).",
        "",
        "| pass | ms | MB/s |",
        "|---|---:|---:|",
        f"| `redact_text` over the table text | {scan * 1000:.1f} | {mbps:.1f} |",
        f"| `mask_result`, detectors over the same cells ({cells_text / 1e6:.1f} MB) "
        f"| {cells * 1000:.1f} | {cells_text / 1e6 / cells:.1f} |",
        f"| baseline: one `str.find` pass | {find * 1000:.2f} | {size_mb / find:,.0f} |",
        f"| baseline: `re.search` of a trivial pattern | {search * 1000:.2f} "
        f"| {size_mb / search:,.0f} |",
    ]
    return lines, mbps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (median)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    column_lines, worst_cells = bench_columns(args.repeat)
    detector_lines, mbps = bench_detectors(args.repeat)
    lines = [
        f"Machine: {platform.machine()}, Python {platform.python_version()}; "
        f"median of {args.repeat} runs per figure.",
        "",
        *column_lines,
        "",
        f"**Column masking: slowest strategy {worst_cells:,.0f} masked cells/s** "
        "(target ≥ 1,000,000).",
        "",
        *detector_lines,
        "",
        f"**Detectors: {mbps:.1f} MB/s over result text** (target ≥ 20 MB/s).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("masking", "Masking and detectors", "python bench/masking.py --write", text)


if __name__ == "__main__":
    main()
