"""`mcp-gate demo`: one command from nothing to a gateway an MCP client can use.

Starts an embedded PostgreSQL, loads the sample database, writes a demo `mcp-gate.toml` (dev
issuer on, loopback only) beside the repository's `policies.toml`, serves the gateway, and
prints the URL, tokens and client configs. Ctrl-C stops everything and removes what it made,
except the recording: the audit store, the public key that verifies its checkpoints and the
config that finds them stay in `.mcp-gate-demo/`, so `sessions list`, `replay` and `audit
verify` still work there (the next demo replaces them). Tokens and keys never stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import anyio
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from mcp_gate import DEFAULT_CONFIG
from mcp_gate.auth.dev_issuer import dev_issuer_for
from mcp_gate.config import load_config
from mcp_gate.config_locate import DEMO_DIR
from mcp_gate.demo import sample
from mcp_gate.demo.embedded import free_port, start_embedded_postgres
from mcp_gate.gateway.serve import bind_socket, serve_http
from mcp_gate.store_target import StartupError

DATABASE = "demo"
READER_ENV = "MCP_GATE_DEMO_READER_PASSWORD"
WRITER_ENV = "MCP_GATE_DEMO_WRITER_PASSWORD"


def find_policies() -> Path:
    """The repository's policies.toml: in the working directory, else the copy shipped along."""
    here = Path.cwd() / "policies.toml"
    if here.is_file():
        return here
    shipped = resources.files("mcp_gate.demo").joinpath("policies.toml")
    if shipped.is_file():
        return Path(str(shipped))
    # An editable install: the package sits in src/ of the repository.
    repo = Path(__file__).resolve().parents[3] / "policies.toml"
    if repo.is_file():
        return repo
    raise FileNotFoundError("no policies.toml found (run from the repository, or pass --policies)")


def choose_port(wanted: int) -> int:
    """`wanted` when it is free, else (and for 0, "any port") a free loopback port: the
    config, URL and tokens name the port the gateway really listens on. A number that is no
    TCP port is a `ValueError`."""
    if not 0 <= wanted <= 65535:
        raise ValueError(f"--port {wanted}: give a TCP port (1-65535), or 0 for any free port")
    if wanted == 0:
        return free_port()
    try:
        bind_socket("127.0.0.1", wanted).close()
        return wanted
    except StartupError:  # taken, or not ours to bind: any free one rather than failing
        return free_port()


#: The demo's audit store, relative to its folder (its config names it).
STORE = Path(".mcp-gate") / "gate.db"
#: What stays of the demo's folder once it stops: the recording and what reads and verifies
#: it. An allowlist, so that a secret added later (tokens, signing, masking or state keys) goes.
KEPT = frozenset({DEFAULT_CONFIG, STORE.parts[0], "audit-signing.pub"})


def write_config(folder: Path, policies: Path, port: int, pg_host: str, pg_port: int) -> Path:
    """The demo's mcp-gate.toml. Passwords are referenced through the environment."""
    text = f"""# Written by `mcp-gate demo`; stays with its recording until the next demo.
[server]
listen = "127.0.0.1:{port}"
policies = "{policies.as_posix()}"
data_dir = "."
store = "sqlite:///{STORE.as_posix()}"

[auth]
dev_issuer = true          # this gateway signs its own tokens: `mcp-gate token`

[auth.local]
subject = "local-user"
groups = ["developers"]

[connections.demo]
dsn = "postgresql://{sample.READER_ROLE}@{pg_host}:{pg_port}/{DATABASE}"
password_env = "{READER_ENV}"
write_dsn = "postgresql://{sample.WRITER_ROLE}@{pg_host}:{pg_port}/{DATABASE}"
write_password_env = "{WRITER_ENV}"
max_rows = 1000
statement_timeout = "5s"
description = "the demo shop: customers, orders, payments"
"""
    path = folder / "mcp-gate.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def demo_folder(root: Path) -> Iterator[Path]:
    """`.mcp-gate-demo/`, created fresh (a previous demo's recording is replaced); afterwards
    `keep_recording` decides what stays."""
    folder = root / DEMO_DIR
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        keep_recording(folder)


def keep_recording(folder: Path) -> bool:
    """Remove all of `folder` but its recording (`KEPT`); all of it when nothing was
    recorded. True when the recording stays."""
    if not (folder / STORE).is_file():
        shutil.rmtree(folder, ignore_errors=True)
        return False
    for entry in folder.iterdir():
        if entry.name in KEPT:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return True


def _print_ready(
    console: Console, url: str, config: Path, agent: str, approver: str, state: Path
) -> None:
    header = Text.assemble(
        ("mcp-gate demo is ready\n\n", "bold green"),
        ("MCP URL      ", "bold"),
        (url + "\n"),
        ("config       ", "bold"),
        (f"{config}\n"),
        ("tokens       ", "bold"),
        (f"{state} (agent = developers, approver alice = dba)"),
    )
    console.print(Panel(header, expand=False))
    console.print(Text("Agent token (sub=agent, groups=developers):", style="bold"))
    console.print(agent, soft_wrap=True, highlight=False)
    console.print(Text("Approver token (sub=alice, groups=dba):", style="bold"))
    console.print(approver, soft_wrap=True, highlight=False)
    auth = f"Bearer {agent}"
    claude = f'claude mcp add --transport http mcp-gate {url} --header "Authorization: {auth}"'
    cursor = {"mcpServers": {"mcp-gate": {"url": url, "headers": {"Authorization": auth}}}}
    vscode = {
        "servers": {"mcp-gate": {"type": "http", "url": url, "headers": {"Authorization": auth}}}
    }
    console.print(Text("\nClaude Code:", style="bold"))
    console.print(claude, soft_wrap=True, highlight=False)
    # Plain, unwrapped text: a wrapped token would not survive copy and paste.
    console.print(Text("\nCursor (~/.cursor/mcp.json):", style="bold"))
    console.print(json.dumps(cursor, indent=2), soft_wrap=True, highlight=False, markup=False)
    console.print(Text("VS Code (.vscode/mcp.json):", style="bold"))
    console.print(json.dumps(vscode, indent=2), soft_wrap=True, highlight=False, markup=False)
    console.print(
        Text.assemble(
            ("\nThen ask your agent to: ", "bold"),
            "list the tables; show the 5 biggest orders (emails and card numbers come back "
            "masked); delete all orders (refused, naming the rule); delete the cancelled "
            "orders (held until a dba approves).\n",
            ("\nApprove or deny held calls as alice (dba), from this folder:\n", "bold"),
            "  mcp-gate approvals                 (live queue: a approve, d deny, ? help)\n",
            "  mcp-gate approvals list\n",
            "  mcp-gate approvals approve <id>    (or: deny <id> --reason '…')\n",
            ("\nSee what was recorded, from this folder (after the demo stops, too):\n", "bold"),
            "  mcp-gate sessions list             (sessions, newest first)\n",
            "  mcp-gate replay <session id>       (calls, SQL, decisions, approvals, results)\n",
            "  mcp-gate audit verify              (exit 0 when no recorded row was altered)\n",
            ("\nTry from another terminal:\n", "bold"),
            '  mcp-gate policy test --sql "DELETE FROM orders"\n',
            "  mcp-gate token --sub bob --groups dba    (from this folder)\n",
            ("\nCtrl-C stops the gateway and PostgreSQL and removes ", "dim"),
            (f"{config.parent}", "dim"),
            (" but its recording", "dim"),
        )
    )


async def _serve(config_path: Path, console: Console, port: int) -> None:
    config = load_config(config_path)
    issuer = dev_issuer_for(config)
    assert issuer is not None
    agent = issuer.mint("agent", ["developers"], ttl_seconds=8 * 3600)
    approver = issuer.mint("alice", ["dba"], ttl_seconds=8 * 3600)
    state = config_path.parent / "tokens.json"
    state.write_text(json.dumps({"url": config.public_url, "agent": agent, "approver": approver}))
    state.chmod(0o600)

    def ready() -> None:
        _print_ready(console, config.public_url, config_path, agent, approver, state)

    await serve_http(config, on_ready=ready, log_level="warning")


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(console: Console, *, port: int, root: Path) -> int:
    """Run the demo until Ctrl-C (or SIGTERM); returns an exit code."""
    # While PostgreSQL starts and loads, SIGTERM ends in the cleanup below (as Ctrl-C does)
    # instead of killing the process with PostgreSQL left running; the gateway itself stops
    # gracefully on both signals.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        policies = find_policies()
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    try:
        chosen = choose_port(port)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    if port and chosen != port:
        console.print(f"[yellow]127.0.0.1:{port} is in use:[/] the gateway listens on {chosen}")
    port = chosen
    if (root / DEMO_DIR / STORE).is_file():
        console.print(f"[yellow]Replacing the previous demo's recording[/] in {root / DEMO_DIR}")
    with demo_folder(root) as folder:
        with console.status("Starting an embedded PostgreSQL…"):
            server = start_embedded_postgres()
        try:
            console.print(f"[green]✓[/] PostgreSQL {server.host}:{server.port} started")
            reader_pw, writer_pw = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
            with console.status("Loading the sample database (customers, orders, payments)…"):
                anyio.run(sample.load_sample, server.dsn, DATABASE, reader_pw, writer_pw)
            console.print("[green]✓[/] sample data loaded: 2,000 customers, 5,000 orders")
            os.environ[READER_ENV] = reader_pw
            os.environ[WRITER_ENV] = writer_pw
            config_path = write_config(folder, policies, port, server.host, server.port)
            console.print(f"[green]✓[/] policies from {policies}")
            with contextlib.suppress(KeyboardInterrupt):
                anyio.run(_serve, config_path, console, port)
        finally:
            with console.status("Stopping PostgreSQL and removing the demo files…"):
                server.stop()
    console.print("[green]✓[/] demo stopped and cleaned up (PostgreSQL, tokens and keys removed)")
    if (folder / STORE).is_file():
        console.print(
            f"  The recording stays in {folder}: mcp-gate sessions list, replay and audit "
            "verify still work from this folder (the next demo replaces it).",
            highlight=False,
        )
    return 0
