"""Benchmark: a decision crossing replicas (PostgreSQL store, LISTEN/NOTIFY).

Two `mcp-gate serve` processes (A and B) on one embedded PostgreSQL: the sample data, and the
approval store in its own database; the same public URL, dev-issuer key and store, as two
replicas behind a load balancer. An SDK client on A sends a held write (a DELETE that
matches no row: "writes need a DBA"); an approver approves it through an admin API; the
figure is the time from sending the approve request to the result arriving at the client.

  - baseline, same run: approved through A's own admin API (the in-process notifier);
  - cross-replica: approved through B's admin API (NOTIFY → A's LISTEN → A's waiter).

Target: cross-replica median ≤ 100 ms (the approvals target), and never seconds.

    python bench/replicas.py [--rounds 20] [--quick] [--write]
"""

from __future__ import annotations

import sys

# bench/inspect.py shadows the standard library's `inspect` (see bench/overhead.py).
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))

import argparse
import contextlib
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx

from mcp_gate.demo.embedded import EmbeddedPostgres, free_port, start_embedded_postgres
from mcp_gate.demo.sample import load_sample
from overhead import client, process  # bench/overhead.py (bench/ is on sys.path, last)
from report import write_section

ROOT = Path(__file__).resolve().parents[1]
STORE_ROLE, STORE_DB = "gate_store", "gate_store"


def write_config(folder: Path, port: int, public_port: int, server: EmbeddedPostgres) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    policies = folder / "policies.toml"
    policies.write_text((ROOT / "policies.toml").read_text().replace('wait = "2m"', 'wait = "30s"'))
    path = folder / "mcp-gate.toml"
    path.write_text(
        f"""[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{public_port}/mcp"
policies = "{policies.as_posix()}"
data_dir = "{(folder.parent / "state").as_posix()}"
store = "postgresql://{STORE_ROLE}@{server.host}:{server.port}/{STORE_DB}"
store_password_env = "BENCH_STORE_PW"
[auth]
dev_issuer = true
[connections.demo]
dsn = "postgresql://gate_reader@{server.host}:{server.port}/bench"
password_env = "BENCH_READER_PW"
write_dsn = "postgresql://gate_writer@{server.host}:{server.port}/bench"
write_password_env = "BENCH_WRITER_PW"
"""
    )
    return path


def prepare(server: EmbeddedPostgres) -> dict[str, str]:
    reader_pw, writer_pw, store_pw = (secrets.token_urlsafe(12) for _ in range(3))
    anyio.run(load_sample, server.dsn, "bench", reader_pw, writer_pw)

    async def store() -> None:
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute(f"CREATE ROLE {STORE_ROLE} LOGIN PASSWORD '{store_pw}'")
            await conn.execute(f"CREATE DATABASE {STORE_DB} OWNER {STORE_ROLE}")
        finally:
            await conn.close()

    anyio.run(store)
    return {"BENCH_READER_PW": reader_pw, "BENCH_WRITER_PW": writer_pw, "BENCH_STORE_PW": store_pw}


def token(config: Path, sub: str, groups: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "mcp_gate", "token", "--config", str(config), "--sub", sub,
         "--groups", groups],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


async def one_round(
    agent: Any, approver_api: str, approver: str, http: httpx.AsyncClient, n: int
) -> float:
    """Hold a write on A, approve it through `approver_api`: seconds from the approve request
    being sent to the result at the client."""
    sql = f"DELETE FROM orders WHERE id = {-1 - n}"  # held for review, matches no row
    done: dict[str, float] = {}

    async def call() -> None:
        result = await agent.call_tool("sql_query", {"sql": sql})
        done["at"] = time.perf_counter()
        assert not result.is_error, result.content

    headers = {"Authorization": f"Bearer {approver}"}
    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        with anyio.fail_after(30):
            while True:
                listed = await http.get(f"{approver_api}/approvals?status=pending", headers=headers)
                found = [a for a in listed.json()["approvals"] if a["sql"] == sql]
                if found:
                    break
                await anyio.sleep(0.02)
        await anyio.sleep(0.05)  # the call is now blocked in its wait, not still arriving
        sent = time.perf_counter()
        response = await http.post(
            f"{approver_api}/approvals/{found[0]['id']}/approve",
            headers=headers,
            json={"reason": "bench"},
        )
        assert response.status_code == 200, response.text
    return done["at"] - sent


async def measure(
    url_a: str, api: dict[str, str], agent_token: str, approver: str, rounds: int
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in api}
    async with client(url_a, agent_token, "legacy") as agent, httpx.AsyncClient() as http:
        n = 0
        for _ in range(rounds):
            for name, base in api.items():  # interleaved: both see the same noise
                results[name].append(await one_round(agent, base, approver, http, n))
                n += 1
    return results


@contextlib.contextmanager
def replicas(
    folder: Path, server: EmbeddedPostgres, env: dict[str, str]
) -> Iterator[tuple[Path, int, int]]:
    """A and B running; yields A's config and both ports."""
    port_a, port_b = free_port(), free_port()
    config_a = write_config(folder / "a", port_a, port_a, server)
    config_b = write_config(folder / "b", port_b, port_a, server)
    serve = [sys.executable, "-m", "mcp_gate", "serve", "--config"]
    with (
        process([*serve, str(config_a)], port_a, env),
        process([*serve, str(config_b)], port_b, env),
    ):
        yield config_a, port_a, port_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="approvals per path")
    parser.add_argument("--quick", action="store_true", help="5 rounds, for a check run")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds

    print("starting PostgreSQL and two gateway replicas…", flush=True)
    server = start_embedded_postgres()
    folder = Path(tempfile.mkdtemp(prefix="mcp-gate-bench-replicas-"))
    try:
        env = prepare(server)
        with replicas(folder, server, env) as (config_a, port_a, port_b):
            full_env = {**os.environ, **env}
            agent = token(config_a, "agent", "developers", full_env)
            approver = token(config_a, "alice", "dba", full_env)
            api = {
                "same replica (approve on A)": f"http://127.0.0.1:{port_a}/admin/v1",
                "cross-replica (approve on B)": f"http://127.0.0.1:{port_b}/admin/v1",
            }
            url_a = f"http://127.0.0.1:{port_a}/mcp"
            anyio.run(measure, url_a, api, agent, approver, 2)  # warm-up
            results = anyio.run(measure, url_a, api, agent, approver, rounds)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    lines = [
        f"Machine: {platform.machine()}, Python {platform.python_version()}; {rounds} "
        "approvals per path, interleaved, after 2 warm-up rounds; time from sending "
        "`POST /admin/v1/approvals/{id}/approve` to the result at the client held on A.",
        "",
        "| approved through | median ms | p90 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for name, values in results.items():
        ms = sorted(v * 1000 for v in values)
        p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
        lines.append(f"| {name} | {statistics.median(ms):.1f} | {p90:.1f} | {ms[-1]:.1f} |")
    cross = statistics.median(results["cross-replica (approve on B)"]) * 1000
    same = statistics.median(results["same replica (approve on A)"]) * 1000
    lines += [
        "",
        f"**Cross-replica approve → result: median {cross:.1f} ms** (target ≤ 100 ms; "
        f"{cross - same:+.1f} ms against the same-replica baseline).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(
            "replicas", "Approvals across replicas", "python bench/replicas.py --write", text
        )


if __name__ == "__main__":
    main()
