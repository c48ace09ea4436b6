"""The audit store for a `[server] store` target (SQLite file or PostgreSQL database)."""

from __future__ import annotations

from mcp_gate.store_target import StoreTarget

from .store import AuditStore


def audit_store(target: StoreTarget) -> AuditStore:
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
