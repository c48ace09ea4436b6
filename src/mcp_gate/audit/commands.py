"""`mcp-gate sessions list`, `mcp-gate replay`, `mcp-gate audit verify|export`: reading the
audit store named by the gateway's config (`[server] store`, SQLite file or PostgreSQL).

Without `--config` (None here) the config is `./mcp-gate.toml`, else the demo's
`./.mcp-gate-demo/mcp-gate.toml` (`config_locate`).

Exit codes: 0 ok; 1 `audit verify` found a broken chain; 2 usage or config error (no config,
unknown session, store unreachable or missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mcp_gate.config import ConfigFileError, GateConfig, load_config
from mcp_gate.config_locate import ConfigNotFound, locate_config
from mcp_gate.policy.model import parse_duration

from .chain import public_keys, verify, walk
from .factory import audit_store
from .model import EventKind, SessionInfo, StoredEvent
from .replay import Timeline, duration, session_header, when
from .store import AuditStore, AuditUnavailable

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
FOLLOW_INTERVAL = 0.5
#: How much of a session id `sessions list` shows ("ses_" and 12 of its 32 hex digits).
SHORT_ID = 16
#: Terminal width from which `sessions list` also shows each session's transport and client.
WIDE_TABLE = 104
#: The shortest prefix `replay` looks up (shorter ones would match too much to be meant).
MIN_PREFIX = 8
T = TypeVar("T")


class CommandError(Exception):
    """A usage or config problem: printed as is, exit 2."""


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """`--since`: a duration back from now (`1h`, `30m`, `7d`) or an ISO date / time (`2026-12-01`,
    `2026-12-01T08:00`, naive means UTC)."""
    if text is None:
        return None
    now = time.time() if now is None else now
    if re.fullmatch(r"\s*\d+(\.\d+)?\s*[a-z]+(\s*\d+(\.\d+)?\s*[a-z]+)*\s*", text, re.I):
        try:
            return now - parse_duration(text)
        except ValueError:
            pass
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC).timestamp()
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(
            f"--since {text!r}: give a duration (1h, 30m, 7d) or a date (2026-12-01, "
            "2026-12-01T08:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _config(given: Path | None) -> GateConfig:
    try:
        path = locate_config(given)
    except ConfigNotFound as exc:
        raise CommandError(str(exc)) from None
    if not path.exists():
        raise CommandError(
            f"no config at {path}: pass the gateway's mcp-gate.toml with --config "
            "(the audit store is the one its [server] store names)"
        )
    try:
        return load_config(path)
    except ConfigFileError as exc:
        raise CommandError(str(exc)) from None


def _store(config: GateConfig) -> AuditStore:
    # The gateway's own reading of `[server] store` (password from store_password_env/_file).
    from mcp_gate.store_target import StartupError, store_target

    try:
        target = store_target(config)
    except StartupError as exc:
        raise CommandError(str(exc)) from None
    if target.path is not None and not target.path.exists():
        raise CommandError(
            f"no audit store at {target.path} ([server] store in {config.file}); has the "
            "gateway run with this config?"
        )
    return audit_store(target)


@contextlib.asynccontextmanager
async def opened(config_path: Path | None) -> AsyncIterator[tuple[GateConfig, AuditStore]]:
    """The config (`--config`, or the default one when None) and its audit store, open;
    `CommandError` when either is unusable."""
    config = _config(config_path)
    store = _store(config)
    try:
        await store.open()
    except AuditUnavailable as exc:
        raise CommandError(f"cannot open the audit store: {exc}") from None
    try:
        yield config, store
    finally:
        with contextlib.suppress(AuditUnavailable):
            await store.close()


def _run(work: Callable[[], Awaitable[int]], err: Console) -> int:
    try:
        return asyncio.run(work())
    except (CommandError, AuditUnavailable) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


# -- sessions list ------------------------------------------------------------------------------


def session_json(info: SessionInfo) -> dict[str, object]:
    """A session for scripts and the admin API (times as Unix seconds and ISO 8601 UTC)."""
    doc: dict[str, object] = asdict(info)
    doc["groups"] = list(info.groups)
    doc["started"] = _iso(info.started_at)
    doc["ended"] = _iso(info.ended_at)
    doc["duration_s"] = None if info.ended_at is None else info.ended_at - info.started_at
    return doc


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def sessions_list(
    config: Path | None,
    *,
    principal: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    out: Console,
    err: Console,
) -> int:
    """`mcp-gate sessions list`."""

    async def work() -> int:
        cutoff = parse_since(since)
        async with opened(config) as (_, store):
            found = await store.sessions(principal=principal, since=cutoff, limit=limit)
        if as_json:
            out.print_json(json.dumps({"sessions": [session_json(s) for s in found]}))
            return EXIT_OK
        if not found:
            out.print(
                "no sessions recorded" + (" matching the filters" if principal or since else "")
            )
            return EXIT_OK
        table = Table(title=None, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
        # Below ~104 columns the transport and client give way to what tells sessions apart.
        wide = out.width >= WIDE_TABLE
        table.add_column("id", no_wrap=True)
        for name in ("principal", "via", "client") if wide else ("principal",):
            table.add_column(name, no_wrap=True, overflow="ellipsis")
        table.add_column("started", no_wrap=True)
        table.add_column("duration", no_wrap=True)
        table.add_column("calls", justify="right")
        table.add_column("denied", justify="right")
        for s in found:
            client = " ".join(x for x in (s.client_name, s.client_version) if x) or "–"
            lasted = "open" if s.ended_at is None else duration(s.ended_at - s.started_at)
            via = f"{s.transport} {s.era}" if s.era else s.transport
            table.add_row(
                s.id[:SHORT_ID], s.subject, *((via, client) if wide else ()),
                when(s.started_at)[:16], lasted,
                str(s.calls), f"[red]{s.denied}[/]" if s.denied else "0",
            )  # fmt: skip
        out.print(table)
        return EXIT_OK

    return _run(work, err)


# -- replay -------------------------------------------------------------------------------------


async def find_session(store: AuditStore, given: str) -> SessionInfo:
    """The session `given` names: its id, or a prefix of exactly one id (as `sessions list`
    shows them); a CommandError saying which when there is none or several."""
    info = await store.session(given)
    if info is not None:
        return info
    found = await store.sessions_starting(given) if len(given) >= MIN_PREFIX else []
    if len(found) == 1:
        return found[0]
    if found:
        raise CommandError(
            f"{given!r} is the start of several session ids ({found[0].id}, {found[1].id}, …); "
            "give more of it"
        )
    raise CommandError(
        f"no session {given!r} in the audit store; `mcp-gate sessions list` shows the recorded ones"
    )


def replay(config: Path | None, given: str, *, follow: bool, out: Console, err: Console) -> int:
    """`mcp-gate replay SESSION [--follow]`: SESSION is an id or the start of one."""

    async def work() -> int:
        async with opened(config) as (_, store):
            info = await find_session(store, given)
            session_id = info.id
            out.print(session_header(info))
            timeline = Timeline(out, info.started_at)
            last, ended = 0, False
            async for stored in walk(store, session_id=session_id):
                timeline.show([stored])
                last = stored.seq
                ended = ended or stored.event.kind == EventKind.SESSION_END
            if not follow or ended:
                return EXIT_OK
            out.print("[dim]following the live session (Ctrl-C to stop)…[/]")
            while not ended:
                await asyncio.sleep(FOLLOW_INTERVAL)
                fresh = await store.events(session_id=session_id, after_seq=last)
                timeline.show(fresh)
                if fresh:
                    last = fresh[-1].seq
                    ended = any(e.event.kind == EventKind.SESSION_END for e in fresh)
            return EXIT_OK

    return _run(work, err)


# -- audit verify / export ----------------------------------------------------------------------


def audit_verify(config: Path | None, *, out: Console, err: Console) -> int:
    """`mcp-gate audit verify`: exit 0 when the chain holds, 1 with its first broken link."""

    async def work() -> int:
        async with opened(config) as (cfg, store):
            keys = public_keys(cfg.data_dir)
            report = await verify(store, keys)
        span = (
            f"seq {report.first_seq}..{report.last_seq}"
            if report.first_seq is not None
            else "empty"
        )
        if report.ok:
            out.print(
                f"[bold green]ok[/]: {report.events} events ({span}), "
                f"{report.checkpoints} signed checkpoints verified",
                highlight=False,
            )
            return EXIT_OK
        out.print(
            f"[bold red]broken[/] at seq {report.broken_at}: {escape(report.problem or '')}\n"
            f"({report.events} events verified before it, {report.checkpoints} checkpoints)",
            highlight=False,
        )
        return EXIT_FAILURE

    return _run(work, err)


def export_doc(stored: StoredEvent) -> dict[str, Any]:
    """One event with every chained field, so a SIEM can recompute `hash` as the sha256 of
    `AuditEvent.canonical(seq, prev_hash)` (`time` is extra, for people)."""
    ev = stored.event
    return {
        "seq": stored.seq,
        "prev_hash": stored.prev_hash,
        "hash": stored.hash,
        "session_id": ev.session_id,
        "kind": str(ev.kind),
        "at": ev.at,
        "time": _iso(ev.at),
        "direction": None if ev.direction is None else str(ev.direction),
        "method": ev.method,
        "request_id": ev.request_id,
        "tool": ev.tool,
        "decision": ev.decision,
        "approval_id": ev.approval_id,
        "duration_ms": ev.duration_ms,
        "data": ev.data,
    }


def export_line(stored: StoredEvent) -> str:
    """`export_doc` as one JSON line (no newline)."""
    return json.dumps(export_doc(stored), ensure_ascii=False, separators=(",", ":"))


def audit_export(
    config: Path | None,
    *,
    fmt: str,
    since: str | None,
    session_id: str | None,
    err: Console,
    stream: IO[str] | None = None,
) -> int:
    """`mcp-gate audit export --format jsonl`: one event per line on stdout, streamed."""
    if fmt != "jsonl":
        err.print(f"[bold red]error:[/] unknown format {escape(repr(fmt))} (supported: jsonl)")
        return EXIT_USAGE
    target = stream if stream is not None else sys.stdout

    async def work() -> int:
        cutoff = parse_since(since)
        async with opened(config) as (_, store):
            if session_id is not None and await store.session(session_id) is None:
                raise CommandError(
                    f"no session {session_id!r} in the audit store; `mcp-gate sessions list` "
                    "shows the recorded ones"
                )
            async for stored in walk(store, session_id=session_id, since=cutoff):
                target.write(export_line(stored) + "\n")
        target.flush()
        return EXIT_OK

    try:
        return _run(work, err)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        return EXIT_OK
