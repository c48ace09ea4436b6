"""Benchmark: approvals on a real gateway (issue "Approvals").

One embedded PostgreSQL with the demo's sample data, one `mcp-gate serve` process with the
repository's policies.toml (a developer's UPDATE is held for a `dba`), real SDK clients over
streamable HTTP, the admin API over HTTP. Figures, each a median over several runs:

  1. approve → result: from sending `POST /admin/v1/approvals/{id}/approve` to the held
     call's result arriving at the waiting client (both eras; clients without elicitation, so
     the call just waits). Target ≤ 100 ms.
  2. new request → SSE: from sending the tools/call to the `approval` event (`created`)
     arriving on a connected `GET /admin/v1/events` stream; also from the request's
     `created_at` (the gateway's clock, same machine). Target ≤ 250 ms.
  3. 100 waiting: latency of allowed reads (a point lookup) with 0 and with 100 held calls
     waiting at once (100 clients in another process, each blocked in its own tools/call),
     alternating 0/100 in each round. Target: ratio ≤ 1.10.

    python bench/approvals.py [--runs 15] [--rounds 3] [--calls 100] [--quick] [--write]
"""

from __future__ import annotations

import sys

# bench/inspect.py is named like the standard library's `inspect` and a script's folder comes
# first on sys.path: move bench/ behind the standard library before anything imports it.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))  # after the standard library, not before

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

from mcp_gate.demo.embedded import free_port, start_embedded_postgres
from mcp_gate.demo.sample import load_sample
from overhead import ERAS, client, process  # bench/overhead.py: gateway process and clients
from report import write_section  # bench/report.py (bench/ is on sys.path, last)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ALLOWED = "SELECT id, status, total FROM orders WHERE id = 42"
HOLDERS = 100


def held_sql(n: int) -> str:
    """A write the sample policy holds for a dba; `n` makes each call a new request."""
    return f"UPDATE orders SET status = status WHERE id = {n}"


def write_config(folder: Path, port: int, host: str, pg_port: int) -> Path:
    path = folder / "mcp-gate.toml"
    path.write_text(
        f"""[server]
listen = "127.0.0.1:{port}"
policies = "{(ROOT / "policies.toml").as_posix()}"
data_dir = "state"
[auth]
dev_issuer = true
[connections.demo]
dsn = "postgresql://gate_reader@{host}:{pg_port}/bench"
password_env = "BENCH_READER_PW"
write_dsn = "postgresql://gate_writer@{host}:{pg_port}/bench"
write_password_env = "BENCH_WRITER_PW"
max_rows = 1000
"""
    )
    return path


def token(config: Path, sub: str, groups: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mcp_gate", "token", "--config", str(config), "--sub", sub,
         "--groups", groups],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


class Admin:
    """The approver's side: the admin API and one SSE subscription."""

    def __init__(self, base: str, tok: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=base + "/admin/v1", headers={"Authorization": f"Bearer {tok}"}, timeout=60
        )

    async def pending(self) -> list[dict[str, Any]]:
        listed = await self.http.get("/approvals", params={"status": "pending", "limit": 1000})
        listed.raise_for_status()
        return listed.json()["approvals"]

    async def decide(self, approval_id: str, verb: str) -> None:
        done = await self.http.post(f"/approvals/{approval_id}/{verb}", json={"reason": "bench"})
        done.raise_for_status()

    async def events(self, send: anyio.abc.ObjectSendStream, ready: anyio.Event) -> None:
        """Forward every `approval` event (with its arrival time) until cancelled."""
        async with self.http.stream("GET", "/events", timeout=None) as stream:
            kind = None
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind == "ready":
                    ready.set()
                elif line.startswith("data: ") and kind == "approval":
                    event = json.loads(line.removeprefix("data: "))
                    await send.send((time.perf_counter(), time.time(), event))


async def held_rounds(url: str, agent: str, base: str, dba: str, era: str, runs: int):
    """Figures 1 and 2 for one era: per run, (approve → result ms, send → SSE ms,
    created_at → SSE ms)."""
    admin = Admin(base, dba)
    approve_ms: list[float] = []
    sse_ms: list[float] = []
    created_ms: list[float] = []
    send, receive = anyio.create_memory_object_stream(100)
    ready = anyio.Event()
    offset = 1000 if era == "legacy" else 2000
    async with admin.http, anyio.create_task_group() as tg:
        tg.start_soon(admin.events, send, ready)
        await ready.wait()
        async with client(url, agent, era) as c:
            for run in range(runs):
                arrived: dict[str, float] = {}

                async def call(n: int = offset + run, out: dict = arrived) -> None:
                    result = await c.call_tool("sql_query", {"sql": held_sql(n)})
                    out["at"] = time.perf_counter()
                    assert not result.is_error, result.content

                sent = time.perf_counter()
                async with anyio.create_task_group() as calls:
                    calls.start_soon(call)
                    while True:  # the `created` event of this call's request
                        at, wall, event = await receive.receive()
                        if event["event"] == "created":
                            break
                    approval = event["approval"]
                    created = datetime.fromisoformat(approval["created_at"]).timestamp()
                    sse_ms.append((at - sent) * 1000)
                    created_ms.append((wall - created) * 1000)
                    await anyio.sleep(0.05)  # the call is waiting by now
                    started = time.perf_counter()
                    await admin.decide(approval["id"], "approve")
                arrived_ms = (arrived["at"] - started) * 1000
                approve_ms.append(arrived_ms)
        tg.cancel_scope.cancel()
    return approve_ms, sse_ms, created_ms


async def allowed_latencies(url: str, agent: str, era: str, calls: int) -> list[float]:
    out = []
    async with client(url, agent, era) as c:
        for _ in range(calls):
            started = time.perf_counter()
            result = await c.call_tool("sql_query", {"sql": ALLOWED})
            out.append((time.perf_counter() - started) * 1000)
            assert not result.is_error, result.content
    return out


async def wait_for_pending(base: str, dba: str, count: int, timeout: float = 120) -> list[str]:
    admin = Admin(base, dba)
    async with admin.http:
        with anyio.fail_after(timeout):
            while True:
                pending = await admin.pending()
                if len(pending) >= count:
                    return [a["id"] for a in pending]
                await anyio.sleep(0.2)


async def deny_all(base: str, dba: str, ids: list[str]) -> None:
    admin = Admin(base, dba)
    async with admin.http, anyio.create_task_group() as tg:
        for approval_id in ids:
            tg.start_soon(admin.decide, approval_id, "deny")


async def hold_many(url: str, agent: str, count: int, first: int) -> None:
    """The holders' process: `count` clients, each blocked in one held call until decided."""

    async def one(n: int) -> None:
        async with client(url, agent, "legacy") as c:
            await c.call_tool("sql_query", {"sql": held_sql(n)})

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, first + i)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="held calls per era (1, 2)")
    parser.add_argument("--rounds", type=int, default=3, help="0/100-waiting rounds (3)")
    parser.add_argument("--calls", type=int, default=100, help="allowed calls per phase (3)")
    parser.add_argument("--quick", action="store_true", help="a short check run")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--hold", nargs=4, metavar=("URL", "TOKEN", "COUNT", "FIRST"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.hold:
        url, tok, count, first = args.hold
        anyio.run(hold_many, url, tok, int(count), int(first))
        return
    if args.quick:
        args.runs, args.rounds, args.calls = 5, 1, 40

    print("starting PostgreSQL and loading the sample data…", flush=True)
    server = start_embedded_postgres()
    folder = Path(tempfile.mkdtemp(prefix="mcp-gate-bench-approvals-"))
    try:
        reader_pw, writer_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        anyio.run(load_sample, server.dsn, "bench", reader_pw, writer_pw)
        port = free_port()
        config = write_config(folder, port, server.host, server.port)
        env = {"BENCH_READER_PW": reader_pw, "BENCH_WRITER_PW": writer_pw}
        cmd = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config)]
        with process(cmd, port, env):
            url, base = f"http://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{port}"
            agent, dba = token(config, "bench-agent", "developers"), token(config, "dana", "dba")
            held: dict[str, tuple[list[float], list[float], list[float]]] = {}
            for era_name, era in ERAS.items():
                anyio.run(allowed_latencies, url, agent, era, 10)  # warm up
                held[era_name] = anyio.run(held_rounds, url, agent, base, dba, era, args.runs)
                print(era_name, {k: statistics.median(v) for k, v in
                                 zip(("approve", "sse", "created"), held[era_name], strict=True)},
                      flush=True)  # fmt: skip

            idle: dict[str, list[float]] = {n: [] for n in ERAS}
            busy: dict[str, list[float]] = {n: [] for n in ERAS}
            for round_no in range(args.rounds):
                for era_name, era in ERAS.items():
                    idle[era_name] += anyio.run(allowed_latencies, url, agent, era, args.calls)
                holders = subprocess.Popen(
                    [sys.executable, __file__, "--hold", url, agent, str(HOLDERS),
                     str(10_000 + round_no * HOLDERS)],
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    ids = anyio.run(wait_for_pending, base, dba, HOLDERS)
                    for era_name, era in ERAS.items():
                        busy[era_name] += anyio.run(allowed_latencies, url, agent, era, args.calls)
                    anyio.run(deny_all, base, dba, ids)
                    holders.wait(60)
                finally:
                    if holders.poll() is None:
                        holders.kill()
                print(f"round {round_no + 1}/{args.rounds} done", flush=True)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; the clients, the gateway and PostgreSQL share the "
        f"machine. The repository's policies.toml: a developer's UPDATE is held for a dba. "
        f"{args.runs} held calls per era; clients declare no elicitation, so a held call "
        "just waits.",
        "",
        "| era | approve → result at the client, median ms | p90 ms | tools/call sent → SSE "
        "`created`, median ms | `created_at` → SSE, median ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for era_name, (approve_ms, sse_ms, created_ms) in held.items():
        p90 = statistics.quantiles(approve_ms, n=10)[8] if len(approve_ms) > 1 else approve_ms[0]
        lines.append(
            f"| {era_name} | {statistics.median(approve_ms):.1f} | {p90:.1f} | "
            f"{statistics.median(sse_ms):.1f} | {statistics.median(created_ms):.1f} |"
        )
    lines += [
        "",
        f"Allowed reads (`{ALLOWED}`, sequential) with 0 and with {HOLDERS} held calls "
        f"waiting ({HOLDERS} clients in another process); {args.rounds} rounds of "
        f"{args.calls} calls per era and phase, alternating; medians over all calls.",
        "",
        f"| era | 0 waiting p50 ms | {HOLDERS} waiting p50 ms | ratio |",
        "|---|---:|---:|---:|",
    ]
    for era_name in ERAS:
        a, b = statistics.median(idle[era_name]), statistics.median(busy[era_name])
        lines.append(f"| {era_name} | {a:.2f} | {b:.2f} | {b / a:.2f}× |")
    worst_approve = max(statistics.median(v[0]) for v in held.values())
    worst_sse = max(statistics.median(v[1]) for v in held.values())
    worst_ratio = max(statistics.median(busy[n]) / statistics.median(idle[n]) for n in ERAS)
    lines += [
        "",
        f"**Approve → result: median {worst_approve:.1f} ms** (slower era; target ≤ 100 ms). "
        f"**New request → SSE: median {worst_sse:.1f} ms** from the tools/call being sent "
        f"(target ≤ 250 ms). **{HOLDERS} waiting: allowed calls {worst_ratio:.2f}×** "
        "(target ≤ 1.10×).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("approvals", "Approvals", "python bench/approvals.py --write", text)


if __name__ == "__main__":
    main()
