"""The command line starts fast: commands that do not run the gateway never load its stack
(the MCP SDK, SQL parsers), and `mcp-gate --help` lists each command on one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway_helpers import MCP_GATE, write_config

HEAVY = ("mcp", "sqlglot", "pglast", "textual", "starlette", "uvicorn")
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
    return write_config(folder, port=1, dsn="postgresql://reader@127.0.0.1:1/db", write_dsn=None)


def probe(*args: str, cwd: Path) -> tuple[int, list[str]]:
    env = {**os.environ, "COLUMNS": "100", "GATE_TEST_READER_PW": "x"}
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["loaded"]


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
    code, loaded = probe(*args, cwd=config.parent)
    assert code in (0, 1, 2, None)
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
