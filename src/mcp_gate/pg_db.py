"""PostgreSQL plumbing shared by the gateway's stores (the twin of `sqlite_db`).

One `PgEndpoint` per store describes how to reach its database, and does what every store
does the same way:

- `target` names the database as `user@host:port/database`, and `problem(exc)` is an
  error's text with every password the store knows scrubbed out: both go into messages;
- `with_retries(connect)`: try `attempts` times, backing off 0.5 s, 1 s, …, except when
  retrying cannot help (the server refused the login or the database, or the settings are
  invalid: `FATAL_SQLSTATES`);
- `create_pool` / `connect`: asyncpg with the store's `application_name`, so the store's
  sessions can be told apart in `pg_stat_activity`;
- `migrate`: the `mcp_gate_schema` table (one row per component) and the migrations applied
  in version order in one transaction, under the advisory lock every component takes
  (`SCHEMA_LOCK`), so replicas starting together do not race; a schema written by a newer
  mcp-gate is refused.

Each store keeps its own exception type and wording: `error(message)` builds what is raised
and `name` ("approval store", "audit store") starts every message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from mcp_gate.sqltools.dsn import DsnError, describe_target, dsn_password, scrub, to_asyncpg_dsn

T = TypeVar("T")

#: `pg_advisory_xact_lock` key every mcp-gate component takes while migrating its schema
#: ("mcp_gate" in ASCII).
SCHEMA_LOCK = 0x6D63705F67617465
#: What the database or the network raise (`TimeoutError` is an `OSError` too).
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
#: Retrying cannot help after these (SQLSTATE → what it means).
FATAL_SQLSTATES = {
    "28000": "the server refused the login",
    "28P01": "password authentication failed",
    "3D000": "the database does not exist",
    "42501": "the role may not connect",
}


@dataclass
class PgEndpoint:
    """How one store reaches its database (module docstring). `dsn` carries no password
    (`password` comes from the config); `error(message)` is the store's exception."""

    dsn: str
    password: str | None
    name: str
    application_name: str
    error: Callable[[str], Exception]
    log: logging.Logger
    connect_timeout: float = 10.0
    attempts: int = 3
    target: str = field(init=False)
    _secrets: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.target = str(describe_target(self.dsn))
        self._secrets = tuple(s for s in (self.password, dsn_password(self.dsn)) if s)
        self.attempts = max(1, self.attempts)

    def problem(self, exc: BaseException) -> str:
        """`exc` as text for a message: its type unless PostgreSQL said it, no password."""
        text = str(exc).strip()
        if not isinstance(exc, asyncpg.PostgresError):
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return scrub(text, self._secrets)

    async def with_retries(self, connect: Callable[[], Awaitable[T]]) -> T:
        """`connect()` up to `attempts` times; `error(…)` (no password) after, or at once
        when retrying cannot help."""
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                return await connect()
            except (*DB_ERRORS, DsnError, ValueError) as exc:
                fatal = FATAL_SQLSTATES.get(getattr(exc, "sqlstate", "") or "")
                if fatal is None and isinstance(exc, DsnError | ValueError):
                    fatal = "invalid connection settings"
                if fatal is not None or attempt == self.attempts:
                    reason = f"{fatal}: " if fatal else ""
                    raise self.error(
                        f"the {self.name} ({self.target}) is unavailable after {attempt} "
                        f"attempt(s): {reason}{self.problem(exc)}"
                    ) from None
                self.log.warning(
                    "%s (%s): attempt %d/%d failed (%s); retrying in %.1fs",
                    self.name, self.target, attempt, self.attempts, self.problem(exc), delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def create_pool(self, *, min_size: int, max_size: int) -> asyncpg.Pool:
        """A pool (one attempt; wrap it in `with_retries`)."""
        return await asyncpg.create_pool(
            to_asyncpg_dsn(self.dsn),
            password=self.password,
            min_size=min_size,
            max_size=max_size,
            timeout=self.connect_timeout,
            server_settings={"application_name": self.application_name},
        )

    async def connect(self) -> asyncpg.Connection:
        """A dedicated connection (one attempt; wrap it in `with_retries`)."""
        return await asyncpg.connect(
            to_asyncpg_dsn(self.dsn),
            password=self.password,
            timeout=self.connect_timeout,
            server_settings={"application_name": self.application_name},
        )

    async def migrate(
        self,
        conn: asyncpg.Connection,
        component: str,
        migrations: Mapping[int, Sequence[str]],
    ) -> None:
        """Bring `component`'s tables to the highest version in `migrations` (version → the
        statements that lead from the previous version to it), in one transaction under
        `SCHEMA_LOCK`."""
        latest = max(migrations)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS mcp_gate_schema "
                "(component text PRIMARY KEY, version integer NOT NULL)"
            )
            version = await conn.fetchval(
                "SELECT version FROM mcp_gate_schema WHERE component = $1", component
            )
            version = version or 0
            if version > latest:
                raise self.error(
                    f"the {self.name} ({self.target}): {component} schema version {version} "
                    f"is newer than this mcp-gate understands ({latest})"
                )
            for step in sorted(v for v in migrations if v > version):
                for statement in migrations[step]:
                    await conn.execute(statement)
            await conn.execute(
                "INSERT INTO mcp_gate_schema (component, version) VALUES ($1, $2) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                component,
                latest,
            )
