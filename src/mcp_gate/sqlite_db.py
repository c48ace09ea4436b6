"""SQLite plumbing shared by the gateway's stores (one file, several components).

- `connect`: WAL mode (readers never block the writer), `synchronous=FULL` (a commit that was
  reported is on disk), a busy timeout so two processes on one file wait for each other;
- `transaction`: `BEGIN IMMEDIATE` (the write lock is taken before anything is read, so two
  processes serialise instead of both acting on a stale read);
- `migrate`: the `mcp_gate_schema` table (one row per component, its schema version) and
  migrations applied in version order inside one transaction; a file written by a newer
  mcp-gate is refused rather than guessed at.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def connect(
    path: Path, *, busy_timeout: float, error: Callable[[str], Exception]
) -> sqlite3.Connection:
    """Open `path` (creating its folder) in WAL mode with durable commits, autocommit off
    (`isolation_level=None`: transactions are explicit). `error(message)` builds what is
    raised when WAL cannot be used."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise error(f"{path}: cannot use WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """`fn(conn)` inside `BEGIN IMMEDIATE … COMMIT`, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The original error says more; SQLite rolls back a failed commit itself.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


def migrate(
    conn: sqlite3.Connection,
    component: str,
    migrations: Mapping[int, Sequence[str]],
    *,
    path: Path,
    error: Callable[[str], Exception],
) -> None:
    """Bring `component`'s tables to the highest version in `migrations` (version → the
    statements that lead from the previous version to it), in one transaction."""
    latest = max(migrations)

    def run(c: sqlite3.Connection) -> None:
        c.execute(
            "CREATE TABLE IF NOT EXISTS mcp_gate_schema "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        row = c.execute(
            "SELECT version FROM mcp_gate_schema WHERE component = ?", (component,)
        ).fetchone()
        version = row[0] if row else 0
        if version > latest:
            raise error(
                f"{path}: {component} schema version {version} is newer than this mcp-gate "
                f"understands ({latest})"
            )
        for target in sorted(v for v in migrations if v > version):
            for statement in migrations[target]:
                c.execute(statement)
        c.execute(
            "INSERT INTO mcp_gate_schema (component, version) VALUES (?, ?) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (component, latest),
        )

    transaction(conn, run)
