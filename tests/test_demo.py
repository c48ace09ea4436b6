"""`mcp-gate demo` as a new user runs it: start, connect with the printed token, list tables,
run a select, see a DELETE refused with its rule, Ctrl-C, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway_helpers import text_of
from mcp_gate.demo.embedded import free_port

pytestmark = pytest.mark.slow


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return
        if process.poll() is not None:
            raise RuntimeError(f"demo exited with {process.returncode}")
        time.sleep(0.2)
    raise TimeoutError("the demo did not become ready")


async def use_the_gateway(url: str, token: str, mode: str) -> list[str]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    seen = []
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as c:
        tables = await c.call_tool("sql_list_tables", {})
        seen.append(text_of(tables))
        rows = await c.call_tool(
            "sql_query", {"sql": "SELECT id, total FROM orders ORDER BY total DESC LIMIT 5"}
        )
        assert not rows.is_error and rows.structured_content["row_count"] == 5
        refused = await c.call_tool("sql_query", {"sql": "DELETE FROM orders"})
        assert refused.is_error
        seen.append(text_of(refused))
    return seen


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_end_to_end(tmp_path: Path, stop: signal.Signals) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_gate", "demo", "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tokens = tmp_path / ".mcp-gate-demo" / "tokens.json"
    try:
        wait_for(tokens, process)
        state = json.loads(tokens.read_text())
        assert state["url"] == f"http://127.0.0.1:{port}/mcp"
        for mode in ("legacy", "auto"):
            tables, refusal = anyio.run(use_the_gateway, state["url"], state["agent"], mode)
            assert "public.customers" in tables and "public.orders" in tables
            assert 'denied by policy rule "never unbounded"' in refusal
    finally:
        process.send_signal(stop)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    for expected in (
        f"http://127.0.0.1:{port}/mcp",
        "claude mcp add --transport http mcp-gate",
        '"mcpServers"',
        '"servers"',
        "demo stopped and cleaned up",
    ):
        assert expected in output
    assert state["agent"] in output  # printed whole, on one line, ready to paste
    assert not (tmp_path / ".mcp-gate-demo").exists()
    pg_dir = next(line for line in output.splitlines() if "PostgreSQL 127.0.0.1:" in line)
    assert "started" in pg_dir
    # The cluster's data directory is gone with it.
    leftovers = [p for p in Path("/tmp").glob("mcp-gate-pg-*") if (p / "owner.pid").exists()]
    assert all(int((p / "owner.pid").read_text()) != process.pid for p in leftovers)
