"""`mcp-gate approvals list|approve|deny`: the approver's side for scripts, over the admin API.

The token comes from `--token`, else `MCP_GATE_TOKEN`, else (in the demo) the approver token
the demo wrote; the gateway from `--gateway`, else the demo's URL, else `--config`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mcp_gate.config import ConfigFileError, load_config
from mcp_gate.config_locate import DEMO_DIR

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEMO_TOKENS = Path(DEMO_DIR) / "tokens.json"


def _demo() -> dict[str, Any]:
    try:
        return json.loads(DEMO_TOKENS.read_text())
    except (OSError, ValueError):
        return {}


def resolve(gateway: str | None, token: str | None, config: Path) -> tuple[str | None, str | None]:
    """(admin base URL, bearer token) from the options, the environment, the demo, the config."""
    demo = _demo()
    token = token or os.environ.get("MCP_GATE_TOKEN") or demo.get("approver")
    url = gateway or demo.get("url")
    if url is None and config.exists():
        try:
            url = load_config(config).public_url
        except ConfigFileError:
            url = None
    if url is not None:
        url = url.rstrip("/").removesuffix("/mcp")
    return url, token


def _call(method: str, url: str, token: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method, url, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw
    )


def run(
    action: str,
    *,
    approval_id: str | None,
    reason: str | None,
    status: str,
    as_json: bool,
    gateway: str | None,
    token: str | None,
    config: Path,
    out: Console,
    err: Console,
) -> int:
    """List, approve or deny; the exit code says how it went."""
    base, bearer = resolve(gateway, token, config)
    if base is None or bearer is None:
        err.print(
            "[red]need the gateway and an approver token: --gateway URL --token JWT "
            "(or MCP_GATE_TOKEN, or run next to `mcp-gate demo`)[/]"
        )
        return EXIT_USAGE
    api = f"{base}/admin/v1/approvals"
    try:
        if action == "list":
            response = _call("GET", api, bearer, params={"status": status})
        else:
            body = {"reason": reason} if reason else {}
            response = _call("POST", f"{api}/{approval_id}/{action}", bearer, json=body)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach {base}: {type(exc).__name__}[/]")
        return EXIT_FAILURE
    if response.status_code != 200:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        err.print(f"[red]{response.status_code}: {message}[/]", highlight=False)
        return EXIT_FAILURE
    data = response.json()
    if as_json:
        out.print_json(json.dumps(data))
    elif action == "list":
        _print_list(out, data.get("approvals", []))
    else:
        out.print(f"{data['id']}: {data['status']}", highlight=False)
    return EXIT_OK


def _print_list(out: Console, approvals: list[dict[str, Any]]) -> None:
    if not approvals:
        out.print("no approval requests")
        return
    table = Table()
    for header in ("id", "status", "requester", "tool", "target", "reasons", "expires", "sql"):
        table.add_column(header)
    for a in approvals:
        principal = a.get("principal") or {}
        table.add_row(
            *(
                Text(str(v))
                for v in (
                    a["id"],
                    a["status"],
                    principal.get("subject", ""),
                    a.get("tool", ""),
                    a.get("target", ""),
                    ", ".join(a.get("reasons", [])),
                    a.get("expires_at", ""),
                    (a.get("sql") or "")[:80],
                )
            )
        )
    out.print(table)
