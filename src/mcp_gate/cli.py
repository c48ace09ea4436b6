"""The `mcp-gate` command line: argument parsing only; the work lives in the packages.

Each command imports its package when it runs, not at module import: the gateway's stack
(MCP SDK, SQL parsers) takes seconds to load, and `--help`, `token` or `audit verify` need
none of it.

Help texts are Markdown (typer's "markdown" markup mode): a docstring's lines are wrapped
to the terminal, where the "rich" mode would keep every line break of the source. Each
docstring's first paragraph is the one line `mcp-gate --help` lists; give each example a
paragraph of its own.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mcp_gate import DEFAULT_CONFIG, __version__

app = typer.Typer(
    name="mcp-gate",
    help="A security gateway between AI agents (MCP clients) and your databases: per-call "
    "policy, human approvals, column masking and audit.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
policy_app = typer.Typer(
    help="Check a policies.toml and try calls against it.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")
# Its help is the callback's docstring (`approvals_tui`).
approvals_app = typer.Typer(invoke_without_command=True)
app.add_typer(approvals_app, name="approvals")
sessions_app = typer.Typer(help="Recorded sessions (the audit store).", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
audit_app = typer.Typer(
    help="Check and export the tamper-evident audit chain.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")

_out = Console()
_err = Console(stderr=True)


class Verdict(StrEnum):
    allow = "allow"
    review = "review"
    deny = "deny"


def _version(value: bool) -> None:
    if value:
        print(f"mcp-gate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """mcp-gate: inspect, decide, approve, mask and record every MCP tool call."""


ConfigPath = Annotated[
    Path,
    typer.Option("--config", "-C", help="The gateway's config file (mcp-gate.toml)."),
]
# `None`: the command looks for the default config itself (`mcp_gate.config_locate`).
LocatedConfigPath = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-C",
        help="The gateway's config file (default: ./mcp-gate.toml, else the demo's "
        ".mcp-gate-demo/mcp-gate.toml).",
        show_default=False,
    ),
]


@app.command()
def serve(
    config: ConfigPath = Path(DEFAULT_CONFIG),
    stdio: Annotated[
        bool,
        typer.Option(
            "--stdio",
            help="Serve one client over stdin/stdout as the `[auth.local]` principal, "
            "instead of streamable HTTP.",
        ),
    ] = False,
) -> None:
    """Run the gateway: streamable HTTP at /mcp (both MCP protocol eras), or --stdio."""
    from mcp_gate.gateway import commands as gateway_commands

    raise typer.Exit(gateway_commands.serve(config, stdio=stdio, err=_err))


@app.command()
def demo(
    port: Annotated[
        int,
        typer.Option(
            "--port", help="Port for the gateway (0: any free one; if taken, a free one)."
        ),
    ] = 8765,
) -> None:
    """Start a complete local setup: sample database, policies and a gateway.

    Embedded PostgreSQL with sample data (customers with emails, SSNs and card numbers;
    orders; payments), the repository's policies.toml, and a gateway on 127.0.0.1 with a dev
    token issuer. Prints the MCP URL, tokens and ready-to-paste client configs, and how to
    approve, list sessions and replay them from the same folder. Ctrl-C stops everything and
    removes what it started but the recording (no token or key stays), which sessions list,
    replay and audit verify read from that folder until the next demo replaces it.
    """
    from mcp_gate.gateway import commands as gateway_commands

    raise typer.Exit(gateway_commands.demo(port=port, console=_out, err=_err))


@app.command()
def token(
    config: LocatedConfigPath = None,
    sub: Annotated[str, typer.Option("--sub", help="The subject (who the token is for).")] = (
        "local-user"
    ),
    groups: Annotated[
        str, typer.Option("--groups", help="Groups, comma-separated (e.g. dba,ops).")
    ] = "",
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime, e.g. 30m, 1h, 1d.")] = "1h",
) -> None:
    """Print a bearer token signed by the dev issuer, alone on stdout.

    Needs `[auth] dev_issuer = true`; works whether or not the gateway is running. Example:

        export TOKEN=$(mcp-gate token --sub alice --groups dba)
    """
    from mcp_gate.gateway import commands as gateway_commands

    raise typer.Exit(
        gateway_commands.token(
            config,
            subject=sub,
            groups=[g.strip() for g in groups.split(",")],
            ttl=ttl,
            out=_out,
            err=_err,
        )
    )


PolicyPath = Annotated[
    Path,
    typer.Argument(help="The policy file.", show_default=True),
]


@policy_app.command("check")
def policy_check(file: PolicyPath = Path("policies.toml")) -> None:
    """Validate a policy file. Exit 0 when valid; 2 with each problem's file, line and key."""
    from mcp_gate.policy import commands as policy_commands

    raise typer.Exit(policy_commands.check(file, _out, _err))


@policy_app.command("test")
def policy_test(
    file: PolicyPath = Path("policies.toml"),
    sql: Annotated[
        str | None, typer.Option("--sql", help="SQL text, judged as a call of sql_query.")
    ] = None,
    tool: Annotated[
        str | None, typer.Option("--tool", help="A tool name, for calls that are not SQL.")
    ] = None,
    args: Annotated[
        str | None,
        typer.Option("--args", help="The tool's arguments as a JSON object.", metavar="JSON"),
    ] = None,
    connection: Annotated[
        str | None, typer.Option("--connection", "-c", help="The connection the call targets.")
    ] = None,
    upstream: Annotated[
        str, typer.Option("--upstream", help="The upstream serving --tool.")
    ] = "builtin",
    subject: Annotated[
        str, typer.Option("--as", help="The caller's subject (who is asking).")
    ] = "policy-test",
    groups: Annotated[
        str, typer.Option("--groups", help="The caller's groups, comma-separated.")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    expect: Annotated[
        Verdict | None,
        typer.Option("--expect", help="Exit 1 unless the decision is this (for CI checks)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-C",
            help="The gateway's mcp-gate.toml: trace output columns against its database "
            "and show which ones are masked, and why.",
        ),
    ] = None,
) -> None:
    """Show how the gateway would inspect and decide one call, and which rules decide it.

    Examples:

        mcp-gate policy test --sql "DELETE FROM orders"

        mcp-gate policy test --sql "UPDATE orders SET status='x' WHERE id=1" --as alice --groups dba

        mcp-gate policy test --tool read_file --upstream fs --args '{"path": "/etc/passwd"}'
    """
    from mcp_gate.policy import commands as policy_commands

    raise typer.Exit(
        policy_commands.test(
            file,
            sql=sql,
            tool=tool,
            arguments=args,
            connection=connection,
            upstream=upstream,
            subject=subject,
            groups=[g.strip() for g in groups.split(",")],
            as_json=as_json,
            expect=expect.value if expect else None,
            out=_out,
            err=_err,
            config=config,
        )
    )


GatewayOption = Annotated[
    str | None,
    typer.Option("--gateway", help="The gateway's URL (default: the demo's, or --config's)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", help="Approver bearer token (default: $MCP_GATE_TOKEN, or the demo's)."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _approvals(action: str, **kw: object) -> None:
    from mcp_gate.approvals import commands as approval_commands

    raise typer.Exit(approval_commands.run(action, out=_out, err=_err, **kw))  # type: ignore[arg-type]


@approvals_app.callback()
def approvals_tui(
    ctx: typer.Context,
    gateway: GatewayOption = None,
    token: TokenOption = None,
    config: ConfigPath = Path(DEFAULT_CONFIG),
) -> None:
    """Answer held calls as an approver: the live TUI, or the commands below for scripts.

    With no command it opens the TUI (arrows or j/k select, a approve, d deny with a reason,
    / filter, ? help, q quit), e.g. `mcp-gate approvals --gateway http://127.0.0.1:8765`.
    Next to a running `mcp-gate demo` it needs no options: it uses the demo's gateway and
    alice's (dba) approver token.
    """
    if ctx.invoked_subcommand is None:
        from mcp_gate.tui import commands as tui_commands

        raise typer.Exit(tui_commands.run(gateway=gateway, token=token, config=config, err=_err))
    # `mcp-gate approvals --token T list`: options given to the group are the command's defaults.
    given = {"gateway": gateway, "token": token}
    if config != Path(DEFAULT_CONFIG):
        given["config"] = str(config)
    given = {name: value for name, value in given.items() if value is not None}
    if given:
        ctx.default_map = {command: given for command in ("list", "approve", "deny")}


@approvals_app.command("list")
def approvals_list(
    status: Annotated[
        str, typer.Option("--status", help="pending, approved, denied, … (comma-separated).")
    ] = "pending",
    gateway: GatewayOption = None,
    token: TokenOption = None,
    config: ConfigPath = Path(DEFAULT_CONFIG),
    as_json: JsonOption = False,
) -> None:
    """List the approval requests you may see (those you could decide, and your own)."""
    _approvals(
        "list", approval_id=None, reason=None, status=status, as_json=as_json,
        gateway=gateway, token=token, config=config,
    )  # fmt: skip


@approvals_app.command("approve")
def approvals_approve(
    approval_id: Annotated[str, typer.Argument(help="The request's id (ap_…).")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded).")] = None,
    gateway: GatewayOption = None,
    token: TokenOption = None,
    config: ConfigPath = Path(DEFAULT_CONFIG),
    as_json: JsonOption = False,
) -> None:
    """Approve a held call; it runs once the quorum is reached."""
    _approvals(
        "approve", approval_id=approval_id, reason=reason, status="", as_json=as_json,
        gateway=gateway, token=token, config=config,
    )  # fmt: skip


@approvals_app.command("deny")
def approvals_deny(
    approval_id: Annotated[str, typer.Argument(help="The request's id (ap_…).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (required; the agent sees it).")],
    gateway: GatewayOption = None,
    token: TokenOption = None,
    config: ConfigPath = Path(DEFAULT_CONFIG),
    as_json: JsonOption = False,
) -> None:
    """Deny a held call; the agent gets your name and reason."""
    _approvals(
        "deny", approval_id=approval_id, reason=reason, status="", as_json=as_json,
        gateway=gateway, token=token, config=config,
    )  # fmt: skip


SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since", help="Only since then: a duration back (1h, 7d) or a date (2026-12-01)."
    ),
]


@sessions_app.command("list")
def sessions_list(
    config: LocatedConfigPath = None,
    principal: Annotated[
        str | None, typer.Option("--principal", help="Only this subject's sessions.")
    ] = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List recorded sessions, newest first: who, how, when, calls and denials.

    The table shows the start of each session id, which `mcp-gate replay` accepts; `--json`
    gives the full ids.
    """
    from mcp_gate.audit import commands as audit_commands

    raise typer.Exit(
        audit_commands.sessions_list(
            config,
            principal=principal,
            since=since,
            limit=limit,
            as_json=as_json,
            out=_out,
            err=_err,
        )
    )


@app.command()
def replay(
    session: Annotated[
        str, typer.Argument(help="The session id, or its start (8 characters or more).")
    ],
    config: LocatedConfigPath = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep showing a live session until it ends.")
    ] = False,
) -> None:
    """Show a recorded session as a timeline.

    Calls and their SQL, decisions, approvals, results (as the agent saw them) and timings.
    Session ids come from `mcp-gate sessions list`.
    """
    from mcp_gate.audit import commands as audit_commands

    raise typer.Exit(audit_commands.replay(config, session, follow=follow, out=_out, err=_err))


@audit_app.command("verify")
def audit_verify(config: LocatedConfigPath = None) -> None:
    """Check the whole chain and its signed checkpoints: exit 0 when intact, 1 if not.

    On a break it names the first broken link (an edited, deleted or reordered event, a
    forged checkpoint, a prune without its anchor).
    """
    from mcp_gate.audit import commands as audit_commands

    raise typer.Exit(audit_commands.audit_verify(config, out=_out, err=_err))


@audit_app.command("export")
def audit_export(
    fmt: Annotated[str, typer.Option("--format", help="Output format.")] = "jsonl",
    since: SinceOption = None,
    session: Annotated[str | None, typer.Option("--session", help="Only this session.")] = None,
    config: LocatedConfigPath = None,
) -> None:
    """Write events to stdout as JSON lines, for a SIEM.

    One JSON object per event, with seq, hash and prev_hash so the receiver can re-verify
    the chain.
    """
    from mcp_gate.audit import commands as audit_commands

    raise typer.Exit(
        audit_commands.audit_export(config, fmt=fmt, since=since, session_id=session, err=_err)
    )
