"""The command line starts fast: commands that do not run the gateway never load its stack
(the MCP SDK, SQL parsers, the PostgreSQL driver), and `mcp-gate --help` lists each command on
one line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway_helpers import MCP_GATE, write_config
from mcp_gate.audit import AuditEvent, EventKind, SqliteAuditStore

HEAVY = ("mcp", "sqlglot", "pglast", "textual", "starlette", "uvicorn", "asyncpg")
# Runs one command in this interpreter, then reports which heavy modules it had loaded.
PROBE = """
import json, sys
from mcp_gate.cli import app
try:
    app(sys.argv[1:], prog_name="mcp-gate")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}),
      file=sys.stderr)
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    path = write_config(folder, port=1, dsn="postgresql://reader@127.0.0.1:1/db", write_dsn=None)
    asyncio.run(record_one_session(folder / ".mcp-gate" / "gate.db"))  # the default store
    return path


async def record_one_session(path: Path) -> None:
    """A store with one session in it, so the offline commands read real rows."""
    store = SqliteAuditStore(path)
    await store.open()
    try:
        start = {"principal": {"subject": "alice", "groups": ["dba"]}, "transport": "http"}
        await store.append(
            [
                AuditEvent("s-1", EventKind.SESSION_START, 1.0, data=start),
                AuditEvent("s-1", EventKind.SESSION_END, 2.0, data={}),
            ]
        )
    finally:
        await store.close()


def probe(*args: str, cwd: Path) -> tuple[int, list[str], str]:
    env = {**os.environ, "COLUMNS": "100", "GATE_TEST_READER_PW": "x"}
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    *output, last = done.stderr.strip().splitlines()
    report = json.loads(last)
    return report["code"], report["loaded"], done.stdout + "\n".join(output)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["demo", "--help"],
        ["token", "--sub", "alice", "--groups", "dba"],
        ["policy", "check", "policies.toml"],
        ["approvals", "list", "--help"],
        ["sessions", "list", "--help"],
        ["replay", "--help"],
        ["audit", "verify", "--help"],
        ["audit", "export", "--help"],
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_commands_that_do_not_serve_do_not_load_the_gateway(args: list[str], config: Path):
    if args[:2] == ["policy", "check"]:
        args = ["policy", "check", str(Path(__file__).resolve().parents[1] / "policies.toml")]
    code, loaded, _ = probe(*args, cwd=config.parent)
    assert code in (0, 1, 2, None)
    assert loaded == [], f"mcp-gate {' '.join(args)} loaded {loaded}"


@pytest.mark.parametrize(
    ("args", "want_code", "want_out"),
    [
        (["sessions", "list"], 0, "alice"),
        (["sessions", "list", "--json"], 0, '"s-1"'),
        (["replay", "s-1"], 0, "alice"),
        (["audit", "verify"], 0, ""),
        (["audit", "export"], 0, '"s-1"'),
        # Nothing listens on the config's port: the command fails after building its request.
        (["approvals", "list", "--token", "not-a-jwt"], 1, "cannot reach"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "",
)
def test_offline_commands_run_without_the_gateway_stack(
    args: list[str], want_code: int, want_out: str, config: Path
) -> None:
    # The commands run to the end against the config's store (not just `--help`): finding
    # the store (`store_target`) and reading it must not pull in the serving stack.
    code, loaded, output = probe(*args, "--config", str(config), cwd=config.parent)
    assert code in (want_code, None if want_code == 0 else want_code), output
    assert want_out in output
    assert loaded == [], f"mcp-gate {' '.join(args)} loaded {loaded}"


def test_serve_still_imports_what_it_needs(config: Path) -> None:
    # The lazy imports must not break the commands that do need the stack.
    done = subprocess.run(
        [*MCP_GATE, "serve", "--config", str(config.parent / "missing.toml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "missing.toml" in done.stderr + done.stdout


def test_every_command_is_one_line_in_the_help() -> None:
    env = {**os.environ, "COLUMNS": "100"}
    for args in ([], ["policy"], ["approvals"], ["sessions"], ["audit"]):
        done = subprocess.run(
            [*MCP_GATE, *args, "--help"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        panel = done.stdout.split("─ Commands ", 1)[1].split("╰", 1)[0]
        rows = [line.strip("│ ").rstrip() for line in panel.splitlines()[1:]]
        # A continuation row starts with spaces (no command name): a wrapped description.
        wrapped = [r for r in panel.splitlines()[1:] if r.startswith("│" + " " * 4)]
        assert rows and not wrapped, (args, done.stdout)
