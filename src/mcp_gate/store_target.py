"""Where `[server] store` points, read without the gateway's stack.

The offline commands (`sessions list`, `replay`, `audit verify|export`) need only this to find
the audit store; importing `gateway.runtime` for it would load the MCP SDK and the SQL parsers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mcp_gate.config import STORE_POSTGRESQL, STORE_SQLITE, GateConfig, SecretError, read_secret
from mcp_gate.sqltools.dsn import describe_target


class StartupError(Exception):
    """The gateway cannot start; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class StoreTarget:
    """Where `[server] store` points: a SQLite file, or a PostgreSQL database (its DSN has
    no password; `password` is the one read from `store_password_env`/`_file`)."""

    kind: Literal["sqlite", "postgresql"]
    path: Path | None = None
    dsn: str | None = None
    password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """For messages: the file, or `user@host:port/database` (never the password)."""
        if self.path is not None:
            return str(self.path)
        return str(describe_target(self.dsn or ""))


def store_target(config: GateConfig) -> StoreTarget:
    """The store of `[server] store`: `sqlite:///relative/or/absolute.db` (relative to the
    config file) or `postgresql://user@host:port/db` with its password read now (a missing
    secret is a StartupError naming the reference)."""
    server = config.model.server
    store = server.store
    if store.startswith(STORE_SQLITE):
        path = Path(store.removeprefix(STORE_SQLITE)).expanduser()
        path = path if path.is_absolute() else (config.file.parent / path).resolve()
        return StoreTarget("sqlite", path=path)
    if store.startswith(STORE_POSTGRESQL):
        try:
            password = read_secret(
                server.store_password_env,
                server.store_password_file,
                config.file.parent,
                "server.store",
            )
        except SecretError as exc:
            raise StartupError(str(exc)) from None
        return StoreTarget("postgresql", dsn=store, password=password)
    # The config model admits nothing else; refuse rather than guess if that ever changes.
    raise StartupError(f"server.store: unsupported store {store.split(':', 1)[0]}:…")


def store_path(config: GateConfig) -> Path:
    """The SQLite file of `[server] store`; a StartupError for a PostgreSQL store."""
    target = store_target(config)
    if target.path is None:
        raise StartupError(f"server.store is PostgreSQL ({target.describe()}), not a file")
    return target.path
