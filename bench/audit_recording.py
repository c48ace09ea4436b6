"""Benchmark: what recording every session costs the gateway (issue "Audit", gateway side).

Two `mcp-gate serve` processes on one embedded PostgreSQL with the demo's sample data, same
config except `[audit] enabled`: one records every message, decision and session into its
SQLite store (WAL, synchronous=FULL; each tools/call waits for its decision's group commit),
the other records nothing (the baseline, same run). The bench/overhead.py workload (its
queries and client code, imported): `clients` concurrent clients × `calls` calls, both
protocol eras, rounds in ABBA order; the figure is the median of the rounds.

Target: recording on is at most 10% slower (throughput ratio ≥ 0.90) at 16 concurrent
clients.

    python bench/audit_recording.py [--rounds 6] [--quick]

`recording_overhead(rounds, clients, calls)` is the measurement bench/audit.py reports.
"""

from __future__ import annotations

import sys

# bench/inspect.py is named like the standard library's `inspect` and a script's folder comes
# first on sys.path: move bench/ behind the standard library before anything imports it.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import anyio

from mcp_gate.demo.embedded import free_port, start_embedded_postgres
from overhead import (
    ERAS,
    bench_token,
    latencies,
    prepare_database,
    process,
    throughput,
    write_gateway_config,
)

TARGET = 0.90  # throughput with recording ≥ 90% of the same gateway without


def _gateway(folder: Path, dsn: str, *, record: bool) -> tuple[list[str], int, Path]:
    folder.mkdir(parents=True)
    port = free_port()
    config = write_gateway_config(folder, port, dsn)
    if not record:
        with config.open("a") as f:
            f.write("[audit]\nenabled = false\n")
    return [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config)], port, config


def recording_overhead(
    rounds: int = 6, clients: int = 16, calls: int = 20
) -> tuple[list[str], str, float]:
    """(markdown lines, summary, worst throughput ratio) for recording on vs off."""
    server = start_embedded_postgres()
    folder = Path(tempfile.mkdtemp(prefix="mcp-gate-bench-recording-"))
    try:
        reader_pw, _dsn_with_pw, reader_dsn = prepare_database(server)
        env = {"BENCH_READER_PW": reader_pw}
        on_cmd, on_port, on_config = _gateway(folder / "on", reader_dsn, record=True)
        off_cmd, off_port, off_config = _gateway(folder / "off", reader_dsn, record=False)
        figures: dict[tuple[str, str], float] = {}
        p50: dict[tuple[str, str], float] = {}
        with process(on_cmd, on_port, env), process(off_cmd, off_port, env):
            # Each gateway is its own dev issuer (the issuer is its URL): a token for each.
            targets = {
                "recording off": (f"http://127.0.0.1:{off_port}/mcp", bench_token(off_config)),
                "recording on": (f"http://127.0.0.1:{on_port}/mcp", bench_token(on_config)),
            }
            names = list(targets)
            for era_name, era in ERAS.items():
                for url, token in targets.values():
                    anyio.run(latencies, url, token, era, 10)  # warm up
                tput: dict[str, list[float]] = {n: [] for n in names}
                lat: dict[str, list[float]] = {n: [] for n in names}
                for round_no in range(rounds):
                    for name in names if round_no % 2 == 0 else names[::-1]:
                        url, token = targets[name]
                        tput[name].append(anyio.run(throughput, url, token, era, clients, calls))
                        lat[name] += anyio.run(latencies, url, token, era, calls)
                for name in names:
                    figures[(era_name, name)] = statistics.median(tput[name])
                    p50[(era_name, name)] = statistics.median(lat[name])
                print(era_name, {n: round(figures[(era_name, n)]) for n in names}, flush=True)
        events = _count_events(folder / "on" / ".mcp-gate" / "gate.db")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        f"The bench/overhead.py workload through two `mcp-gate serve` processes, one with "
        f"`[audit] enabled = false`: {clients} concurrent clients × {calls} calls (median of "
        f"{rounds} rounds, ABBA order) and {calls} sequential calls per round for p50; "
        f"{events:,} events recorded in all.",
        "",
        "| era | gateway | calls/s (16 clients) | ratio | p50 ms |",
        "|---|---|---:|---:|---:|",
    ]
    worst = 1.0
    for era_name in ERAS:
        base = figures[(era_name, "recording off")]
        for name in ("recording off", "recording on"):
            ratio = figures[(era_name, name)] / base
            worst = min(worst, ratio)
            lines.append(
                f"| {era_name} | {name} | {figures[(era_name, name)]:.0f} | {ratio:.2f}× | "
                f"{p50[(era_name, name)]:.2f} |"
            )
    verdict = "meets" if worst >= TARGET else "MISSES"
    summary = (
        f"recording on vs off: worst throughput ratio {worst:.3f}× "
        f"({verdict} ≥ {TARGET:.2f}×, i.e. at most 10% slower)"
    )
    return lines, summary, worst


def _count_events(path: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])
    except sqlite3.Error:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a short check run")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    lines, summary, _ = recording_overhead(rounds, args.clients, args.calls)
    print("\n".join(lines))
    print(f"-> {summary}")


if __name__ == "__main__":
    main()
