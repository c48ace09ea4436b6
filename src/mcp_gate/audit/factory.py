"""The audit store for a `[server] store` target (SQLite file or PostgreSQL database)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .store import AuditStore


class Target(Protocol):
    """What `gateway.runtime.store_target` returns (kept structural: no import cycle)."""

    kind: str
    path: Path | None
    dsn: str | None
    password: str | None


def audit_store(target: Target) -> AuditStore:
    """The audit store on `target`, not opened yet (`await store.open()`)."""
    if target.kind == "postgresql":
        from .pg_store import PostgresAuditStore  # asyncpg only when it is used

        if target.dsn is None:
            raise ValueError("a postgresql store target needs a DSN")
        return PostgresAuditStore(target.dsn, password=target.password)
    from .sqlite_store import SqliteAuditStore

    if target.path is None:
        raise ValueError("a sqlite store target needs a path")
    return SqliteAuditStore(target.path)
