"""Benchmark: where recording's cost goes (issue "Audit", gateway side).

The bench/audit_recording.py workload (16 concurrent clients × 20 calls, both eras) through
`mcp-gate serve` gateways on one embedded PostgreSQL, all in one run, in alternating order:
recording off (the baseline), recording on, and the variants of bench/recording_variant.py,
each with one part of recording taken out (`null`: the store keeps nothing; `nowait`: calls
do not wait for their decision's commit; `nosync`: commits without fsync). Each round runs
every gateway next to a baseline run (ABBA order); each figure is the median over rounds of
its throughput divided by that baseline's.

    python bench/audit_breakdown.py [--rounds 10] [--write]
"""

from __future__ import annotations

import sys

# bench/inspect.py is named like the standard library's `inspect` and a script's folder comes
# first on sys.path: move bench/ behind the standard library before anything imports it.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))

import argparse
import contextlib
import shutil
import statistics
import tempfile
from pathlib import Path

import anyio

from audit_recording import _gateway
from mcp_gate.demo.embedded import start_embedded_postgres
from overhead import ERAS, bench_token, latencies, prepare_database, process, throughput
from report import write_section

RUNNER = Path(__file__).resolve().with_name("recording_variant.py")
#: (name, recording on, variant, what it shows)
GATEWAYS = [
    ("recording off", False, None, "the baseline"),
    ("recording on", True, None, "the gateway as it ships"),
    ("null store", True, "null", "the tap and the recorder, the store keeps nothing"),
    ("no wait", True, "nowait", "calls do not wait for their decision's commit"),
    ("no fsync", True, "nosync", "commits with synchronous=NORMAL"),
]


def breakdown(rounds: int, clients: int = 16, calls: int = 20) -> list[str]:
    """The markdown lines: each gateway's throughput ratio to the baseline, by era."""
    server = start_embedded_postgres()
    folder = Path(tempfile.mkdtemp(prefix="mcp-gate-bench-breakdown-"))
    ratios: dict[tuple[str, str], float] = {}
    try:
        reader_pw, _dsn, reader_dsn = prepare_database(server)
        with contextlib.ExitStack() as stack:
            targets: dict[str, tuple[str, str]] = {}
            for n, (name, record, variant, _) in enumerate(GATEWAYS):
                cmd, port, config = _gateway(folder / f"g{n}", reader_dsn, record=record)
                env = {"BENCH_READER_PW": reader_pw}
                if variant is not None:
                    cmd = [sys.executable, str(RUNNER), *cmd[3:]]  # after `-m mcp_gate`
                    env["MCP_GATE_BENCH_VARIANT"] = variant
                stack.enter_context(process(cmd, port, env))
                targets[name] = (f"http://127.0.0.1:{port}/mcp", bench_token(config))
            names = list(targets)
            for era_name, era in ERAS.items():
                for url, token in targets.values():
                    anyio.run(latencies, url, token, era, 10)  # warm up
                # Each variant against a baseline run right next to it (the machine drifts
                # more between far-apart runs than the variants differ), in ABBA order.
                pairs: dict[str, list[float]] = {n: [] for n in names[1:]}
                for round_no in range(rounds):
                    for name in names[1:]:
                        pair = [names[0], name] if round_no % 2 == 0 else [name, names[0]]
                        got = {
                            n: anyio.run(throughput, *targets[n], era, clients, calls) for n in pair
                        }
                        pairs[name].append(got[name] / got[names[0]])
                ratios[(era_name, names[0])] = 1.0
                for name in names[1:]:
                    ratios[(era_name, name)] = statistics.median(pairs[name])
                print(era_name, {n: round(ratios[(era_name, n)], 3) for n in names}, flush=True)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        f"{clients} concurrent clients × {calls} calls per run; in each of {rounds} rounds every "
        "gateway runs next to a baseline run (ABBA order), and each figure is the median over "
        "the rounds of its throughput ÷ that baseline's.",
        "",
        "| gateway | what it shows | " + " | ".join(ERAS) + " |",
        "|---|---|" + "---:|" * len(ERAS),
    ]
    for name, _, _, shows in GATEWAYS:
        cells = " | ".join(f"{ratios[(e, name)]:.2f}×" for e in ERAS)
        lines.append(f"| {name} | {shows} | {cells} |")
    for e in ERAS:
        on, null, nowait, nosync = (
            ratios[(e, n)] for n in ("recording on", "null store", "no wait", "no fsync")
        )
        lines += [
            "",
            f"{e}: recording costs {1 - on:.0%} of the throughput; the tap and the recorder "
            f"alone {1 - null:.0%}, waiting for the decision's commit {nowait - on:+.0%}, the "
            f"fsync {nosync - on:+.0%} (the rest is the store's writer at work).",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    lines = breakdown(args.rounds)
    print("\n".join(lines))
    if args.write:
        write_section(
            "audit-breakdown",
            "Audit: where recording's cost goes",
            "python bench/audit_breakdown.py --write",
            "\n".join(lines),
        )


if __name__ == "__main__":
    main()
