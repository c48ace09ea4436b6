"""Benchmark: what the gateway costs on the data path (issue "Serve").

Three servers on one embedded PostgreSQL with the demo's sample data, each in its own process:
  - baseline: a plain MCP SDK server whose `sql_query` runs the SQL on an asyncpg pool
    (bench/baseline_server.py: no auth, no inspection, no policy, no read-only recipe);
  - mcp-gate: `mcp-gate serve` with the dev issuer, bearer auth, inspection, policy, the
    read-only transaction recipe and the verdict in `_meta`;
  - mcp-gate, no estimate rule: the same with the bulk-export rule removed, so that the cost
    of a rule on `estimated_rows` (an EXPLAIN, and a decision commit that nothing overlaps)
    shows by difference.
Same queries, same client code, both protocol eras, in one run.

Targets: median latency ≤ 1.3× the baseline; throughput with 16 concurrent clients ≥ 0.8×
the baseline; `max_rows=1000` over a 1M-row table grows the gateway's peak RSS ≤ 50 MB.

The gateway runs the repo's sample `policies.toml` with recording on (the default), except
that the "bulk export" threshold is raised far above the big table's size: the rule still
matches on `estimated_rows`, so every read without a constant LIMIT is still explained (the
ordered page's `LIMIT 20` decides the rule without EXPLAIN, as with the real threshold), but
`SELECT * FROM big` runs instead of being held for review.

    python bench/overhead.py [--calls 100] [--rounds 8] [--quick] [--write]
"""

from __future__ import annotations

import sys

# bench/inspect.py is named like the standard library's `inspect` and a script's folder comes
# first on sys.path: move bench/ behind the standard library before anything imports it.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))  # after the standard library, not before

import argparse
import contextlib
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_gate.demo.embedded import EmbeddedPostgres, free_port, start_embedded_postgres
from mcp_gate.demo.sample import load_sample
from report import write_section  # bench/report.py (bench/ is on sys.path, last)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
QUERIES = [
    "SELECT id, status, total FROM orders WHERE id = 42",
    "SELECT c.country, count(*) AS n, sum(o.total) AS revenue FROM orders o "
    "JOIN customers c ON c.id = o.customer_id GROUP BY c.country ORDER BY revenue DESC",
    "SELECT id, name, country FROM customers ORDER BY id LIMIT 20",
]
ERAS = {"legacy": "legacy", "modern": "2026-07-28"}
#: Far above the big table's 1,000,000 rows: the estimate is still needed, never exceeded.
BULK_EXPORT_ROWS = 1_000_000_000
#: The same gateway with no rule on `estimated_rows`: what the estimate costs, by difference.
NO_ESTIMATE = "mcp-gate, no estimate rule"


class Refused(RuntimeError):
    """The gateway refused or held a benchmark call: the figures would not be comparable."""


def check(result: object, sql: str) -> None:
    """Stop the benchmark with a clear message when a call did not run."""
    if getattr(result, "is_error", False) or getattr(result, "structured_content", None) is None:
        content = getattr(result, "content", None) or []
        text = " ".join(getattr(c, "text", "") for c in content) or repr(result)
        raise Refused(f"the call did not run: {sql!r}: {text}")


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


@contextlib.contextmanager
def process(args: list[str], port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env={**os.environ, **env}, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.asynccontextmanager
async def client(url: str, token: str | None, era: str):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=120)
    async with (
        http,
        Client(streamable_http_client(url, http_client=http), mode=era, cache=None) as c,
    ):
        yield c


async def latencies(url: str, token: str | None, era: str, calls: int) -> list[float]:
    """Sequential calls from one client: per-call milliseconds."""
    out = []
    async with client(url, token, era) as c:
        for i in range(calls):
            sql = QUERIES[i % len(QUERIES)]
            started = time.perf_counter()
            result = await c.call_tool("sql_query", {"sql": sql})
            out.append((time.perf_counter() - started) * 1000)
            check(result, sql)
    return out


async def throughput(url: str, token: str | None, era: str, clients: int, calls: int) -> float:
    """Calls per second with `clients` concurrent clients, `calls` each."""

    async def one(n: int) -> None:
        async with client(url, token, era) as c:
            for i in range(calls):
                sql = QUERIES[(i + n) % len(QUERIES)]
                check(await c.call_tool("sql_query", {"sql": sql}), sql)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(clients):
            tg.start_soon(one, n)
    return clients * calls / (time.perf_counter() - started)


async def big_query(url: str, token: str | None) -> None:
    async with client(url, token, "legacy") as c:
        sql = "SELECT * FROM big"
        result = await c.call_tool("sql_query", {"sql": sql, "max_rows": 1000})
        check(result, sql)
        if result.structured_content["row_count"] != 1000:
            raise Refused(f"{sql!r} returned {result.structured_content['row_count']} rows")


def prepare_database(server: EmbeddedPostgres) -> tuple[str, str, str]:
    reader_pw, writer_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    anyio.run(load_sample, server.dsn, "bench", reader_pw, writer_pw)
    superuser_db = server.dsn.rsplit("/", 1)[0] + "/bench"

    async def big() -> None:
        conn = await asyncpg.connect(superuser_db)
        try:
            await conn.execute(
                "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v "
                "FROM generate_series(1, 1000000) g; GRANT SELECT ON big TO gate_reader"
            )
        finally:
            await conn.close()

    anyio.run(big)
    reader_dsn = f"postgresql://gate_reader:{reader_pw}@{server.host}:{server.port}/bench"
    return reader_pw, reader_dsn, f"postgresql://gate_reader@{server.host}:{server.port}/bench"


def write_policy(folder: Path, estimate: bool = True) -> Path:
    """The sample policy with the "bulk export" threshold raised (see the docstring), or,
    with `estimate=False`, without that rule: no rule needs an estimate, nothing is explained."""
    text = (ROOT / "policies.toml").read_text()
    rule = re.compile(r'(name = "bulk export".*?estimated_rows = \{ gt = )\d+', re.DOTALL)
    text, found = rule.subn(rf"\g<1>{BULK_EXPORT_ROWS}", text, count=1)
    if not found:
        raise SystemExit('policies.toml has no "bulk export" rule with estimated_rows.gt')
    if not estimate:
        whole = re.compile(r'\[\[rule\]\]\nname = "bulk export".*?(?=\n\[\[)', re.DOTALL)
        text, found = whole.subn("", text, count=1)
        if not found or "estimated_rows" in text:
            raise SystemExit('cannot drop the "bulk export" rule from policies.toml')
    path = folder / ("policies.toml" if estimate else "policies-no-estimate.toml")
    path.write_text(text)
    return path


def write_gateway_config(folder: Path, port: int, dsn: str, estimate: bool = True) -> Path:
    name = "mcp-gate.toml" if estimate else "mcp-gate-no-estimate.toml"
    path = folder / name
    path.write_text(
        f"""[server]
listen = "127.0.0.1:{port}"
policies = "{write_policy(folder, estimate).as_posix()}"
data_dir = "{"state" if estimate else "state-no-estimate"}"
[auth]
dev_issuer = true
[connections.demo]
dsn = "{dsn}"
password_env = "BENCH_READER_PW"
max_rows = 1000
"""
    )
    return path


def bench_token(config: Path) -> str:
    """A developer's token from the dev issuer of the gateway of `config`."""
    return subprocess.run(
        [sys.executable, "-m", "mcp_gate", "token", "--config", str(config), "--sub", "bench",
         "--groups", "developers"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="sequential calls per round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds (medians are over all)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="a short check run (2×30 calls)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds = 30, 2

    print("starting PostgreSQL and loading the sample data…", flush=True)
    server = start_embedded_postgres()
    folder = Path(tempfile.mkdtemp(prefix="mcp-gate-bench-"))
    try:
        reader_pw, reader_dsn_pw, reader_dsn = prepare_database(server)
        gate_port, plain_port, base_port = free_port(), free_port(), free_port()
        config = write_gateway_config(folder, gate_port, reader_dsn)
        plain = write_gateway_config(folder, plain_port, reader_dsn, estimate=False)
        env = {"BENCH_READER_PW": reader_pw}
        gate_cmd = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config)]
        plain_cmd = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(plain)]
        base_cmd = [
            sys.executable,
            str(BENCH / "baseline_server.py"),
            str(base_port),
            reader_dsn_pw,
        ]
        with (
            process(gate_cmd, gate_port, env) as gate,
            process(plain_cmd, plain_port, env) as plain_gate,
            process(base_cmd, base_port, env) as base,
        ):
            targets = {
                "baseline": (f"http://127.0.0.1:{base_port}/mcp", None, base),
                "mcp-gate": (f"http://127.0.0.1:{gate_port}/mcp", bench_token(config), gate),
                NO_ESTIMATE: (
                    f"http://127.0.0.1:{plain_port}/mcp",
                    bench_token(plain),
                    plain_gate,
                ),
            }
            figures: dict[tuple[str, str], dict[str, float]] = {}
            for era_name, era in ERAS.items():
                for url, tok, _proc in targets.values():
                    anyio.run(latencies, url, tok, era, 20)  # warm up
                lat: dict[str, list[float]] = {n: [] for n in targets}
                tput: dict[str, list[float]] = {n: [] for n in targets}
                names = list(targets)
                for round_no in range(args.rounds):
                    # ABBA order: neither server always runs first, after the other's load.
                    for name in names if round_no % 2 == 0 else names[::-1]:
                        url, tok, _proc = targets[name]
                        lat[name] += anyio.run(latencies, url, tok, era, args.calls)
                        tput[name].append(anyio.run(throughput, url, tok, era, args.clients, 20))
                for name in targets:
                    figures[(era_name, name)] = {
                        "p50": statistics.median(lat[name]),
                        "p95": statistics.quantiles(lat[name], n=20)[18],
                        "tput": statistics.median(tput[name]),
                    }
                print(era_name, {n: figures[(era_name, n)] for n in targets}, flush=True)
            rss = {}
            for name, (url, tok, proc) in targets.items():
                before = peak_rss_mb(proc.pid)
                anyio.run(big_query, url, tok)
                rss[name] = (before, peak_rss_mb(proc.pid))
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; client, both servers and PostgreSQL share the machine. "
        f"{args.rounds} rounds of {args.calls} sequential calls (medians over all calls) and "
        f"{args.clients} concurrent clients × 20 calls (median of the rounds), rotating over "
        f"{len(QUERIES)} queries (point lookup, join with aggregate, ordered page). "
        f"`{NO_ESTIMATE}`: the same policy without its bulk-export rule, so no read is "
        "explained (the other two queries need the EXPLAIN; the LIMIT page does not).",
        "",
        "| era | server | p50 ms | p95 ms | ratio p50 | calls/s (16 clients) | ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for era_name in ERAS:
        base = figures[(era_name, "baseline")]
        for name in targets:
            f = figures[(era_name, name)]
            lat_ratio, tput_ratio = f["p50"] / base["p50"], f["tput"] / base["tput"]
            lines.append(
                f"| {era_name} | {name} | {f['p50']:.2f} | {f['p95']:.2f} | {lat_ratio:.2f}× | "
                f"{f['tput']:.0f} | {tput_ratio:.2f}× |"
            )
    for name in targets:
        if name == "baseline":
            continue
        worst_p50 = max(figures[(e, name)]["p50"] / figures[(e, "baseline")]["p50"] for e in ERAS)
        worst_tput = min(
            figures[(e, name)]["tput"] / figures[(e, "baseline")]["tput"] for e in ERAS
        )
        lines += [
            "",
            f"**{name}: p50 at most {worst_p50:.2f}× the baseline** "
            f"({'meets' if worst_p50 <= 1.3 else 'MISSES'} ≤ 1.3×), "
            f"**throughput at least {worst_tput:.2f}×** "
            f"({'meets' if worst_tput >= 0.8 else 'MISSES'} ≥ 0.8×).",
        ]
    lines += [
        "",
        "`SELECT * FROM big` (1,000,000 rows) with `max_rows=1000`: peak RSS of the server",
        "",
        "| server | peak RSS before MB | after MB | growth MB |",
        "|---|---:|---:|---:|",
    ]
    for name, (before, after) in rss.items():
        lines.append(f"| {name} | {before:.0f} | {after:.0f} | {after - before:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(
            "overhead",
            "Gateway overhead on the data path",
            "python bench/overhead.py --write",
            text,
        )


if __name__ == "__main__":
    try:
        main()
    except* Refused as group:  # also from inside the concurrent clients' task group
        raise SystemExit(f"benchmark stopped: {group.exceptions[0]}") from None
