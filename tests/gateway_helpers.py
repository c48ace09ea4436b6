"""A real gateway for end-to-end tests: `mcp-gate serve` in a subprocess over real HTTP."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_gate.demo.embedded import free_port

MCP_GATE = [sys.executable, "-m", "mcp_gate"]


@dataclass
class Gateway:
    """A running `mcp-gate serve` process and what a client needs to reach it."""

    folder: Path
    config: Path
    url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)
    db: str = ""  # superuser DSN of the database it serves, when a test made one

    def token(self, sub: str = "agent", groups: str = "developers", ttl: str = "1h") -> str:
        """A token from the gateway's dev issuer, through the real `mcp-gate token`."""
        out = subprocess.run(
            [*MCP_GATE, "token", "--config", str(self.config), "--sub", sub, "--groups", groups,
             "--ttl", ttl],
            env=self.env, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return out.stdout.strip()

    @contextlib.asynccontextmanager
    async def client(self, token: str, mode: str = "auto", **options: Any) -> AsyncIterator[Client]:
        """An SDK client over streamable HTTP with `token` as its bearer (`options` go to
        `Client`, e.g. `elicitation_callback`)."""
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        transport = streamable_http_client(self.url, http_client=http)
        async with http, Client(transport, mode=mode, cache=None, **options) as c:
            yield c

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def write_config(
    folder: Path,
    *,
    port: int,
    dsn: str,
    write_dsn: str | None,
    extra: str = "",
    policies: Path | None = None,
    server_extra: str = "",
    data_dir: str = "state",
) -> Path:
    """An mcp-gate.toml with the dev issuer and one connection named `demo`; `server_extra`
    goes into `[server]` (e.g. `store = …`), `extra` at the end."""
    policies = policies or Path(__file__).resolve().parents[1] / "policies.toml"
    text = f"""[server]
listen = "127.0.0.1:{port}"
policies = "{policies.as_posix()}"
data_dir = "{data_dir}"
{server_extra}

[auth]
dev_issuer = true

[auth.local]
subject = "stdio-user"
groups = ["developers"]

[connections.demo]
dsn = "{dsn}"
password_env = "GATE_TEST_READER_PW"
{f'write_dsn = "{write_dsn}"' if write_dsn else ""}
{'write_password_env = "GATE_TEST_WRITER_PW"' if write_dsn else ""}
max_rows = 100
statement_timeout = "1s"
{extra}
"""
    path = folder / "mcp-gate.toml"
    path.write_text(text)
    return path


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise TimeoutError(f"gateway did not listen on {port} within {timeout}s")


@contextlib.contextmanager
def running_gateway(
    folder: Path,
    *,
    dsn: str,
    write_dsn: str | None,
    env: dict[str, str],
    extra: str = "",
    policies: Path | None = None,
    server_extra: str = "",
    data_dir: str = "state",
    port: int | None = None,
) -> Iterator[Gateway]:
    """Start `mcp-gate serve` on `port` (default: a free one); stop it (SIGTERM, then SIGKILL)
    afterwards. Several replicas of one gateway: the same `server_extra` store and
    `public_url`, and one absolute `data_dir` (the dev issuer's and the state keys)."""
    port = port or free_port()
    config = write_config(
        folder,
        port=port,
        dsn=dsn,
        write_dsn=write_dsn,
        extra=extra,
        policies=policies,
        server_extra=server_extra,
        data_dir=data_dir,
    )
    full_env = {**os.environ, **env}
    gateway = Gateway(folder, config, f"http://127.0.0.1:{port}/mcp", full_env)
    gateway.log = folder / "gateway.log"
    with gateway.log.open("wb") as log:
        process = subprocess.Popen(
            [*MCP_GATE, "serve", "--config", str(config)],
            env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    gateway.process = process
    try:
        wait_for_port(port, process)
        yield gateway
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(folder / "state", ignore_errors=True)


def text_of(result: Any) -> str:
    """All text content of a tool result."""
    return "\n".join(getattr(c, "text", "") for c in result.content)
