"""`mcp-gate approvals` with no subcommand: open the TUI for the resolved gateway and token."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from mcp_gate.approvals.commands import EXIT_OK, EXIT_USAGE, resolve


def run(*, gateway: str | None, token: str | None, config: Path, err: Console) -> int:
    """Open the approvals TUI; exit 2 when no gateway URL or no token can be found."""
    base, bearer = resolve(gateway, token, config)
    if base is None or bearer is None:
        missing = " and no ".join(
            what for what, value in (("gateway URL", base), ("approver token", bearer)) if not value
        )
        err.print(
            f"[red]mcp-gate approvals: found no {missing}.[/] Pass --gateway URL and "
            "--token JWT (or set MCP_GATE_TOKEN), or run it in the folder where "
            "`mcp-gate demo` runs."
        )
        return EXIT_USAGE
    from .app import ApprovalsApp  # Textual loads only for the interactive command

    ApprovalsApp(base, bearer).run()
    return EXIT_OK
