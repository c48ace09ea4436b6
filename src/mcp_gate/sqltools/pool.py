"""The gateway's asyncpg pool: connect with retry, a reset that really resets, no secret leaks.

`create_pool()` returns a `GatePool` (an `asyncpg.Pool` that also knows its connection name, a
password-free description of its target, and the secrets to scrub from error text).

Connection reset on release (measured: asyncpg's default reset, `RESET ALL`, leaves a
`SET ROLE`/`set_config('role', …, false)` in force) runs, as one gateway-owned constant:
`RESET ROLE; RESET SESSION AUTHORIZATION;` + asyncpg's default reset query (advisory unlocks,
`CLOSE ALL`, `UNLISTEN *`, `RESET ALL`) + `DISCARD TEMP; DISCARD SEQUENCES;` + deallocation of
SQL-level `PREPARE`d statements (which survive ROLLBACK; protocol-level ones, asyncpg's own
cache, are kept). A failed reset makes asyncpg terminate the connection rather than reuse it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import asyncpg

from .dsn import DsnError, describe_target, dsn_password, scrub, to_asyncpg_dsn
from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)

APPLICATION_NAME = "mcp-gate"

_DEALLOCATE_SQL_PREPARED = """DO $mcp_gate_reset$
DECLARE r record;
BEGIN
  FOR r IN SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql LOOP
    EXECUTE pg_catalog.format('DEALLOCATE %I', r.name);
  END LOOP;
END
$mcp_gate_reset$;"""

# SQLSTATE classes/codes after which retrying cannot help.
_FATAL_SQLSTATES = {
    "28000": "the server refused the login",  # invalid_authorization_specification
    "28P01": "password authentication failed",  # invalid_password
    "3D000": "the database does not exist",  # invalid_catalog_name
    "42501": "the role may not connect",  # insufficient_privilege (no CONNECT)
}


class GateConnection(asyncpg.Connection):
    """A pooled connection that remembers whether the gateway already reset it.

    The read path rolls back and resets in one round trip before releasing; the pool's own
    reset then has nothing left to do. Every other release still gets the full reset.
    """

    __slots__ = ("gate_reset_done",)

    def mark_reset(self) -> None:
        """Record that the reset query just ran on this connection."""
        self.gate_reset_done = True


class GatePool(asyncpg.Pool):
    """An asyncpg pool plus the gateway's bookkeeping (never the password in its repr), and
    the background tasks that give its connections back (`release_later`)."""

    __slots__ = ("_releasing", "name", "secrets", "target")

    name: str
    target: str
    secrets: tuple[str, ...]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._releasing: set[asyncio.Task[None]] = set()
        super().__init__(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<GatePool {self.name!r} {self.target}>"

    def release_later(self, cleanup: Coroutine[Any, Any, None]) -> None:
        """Run `cleanup` (a connection's rollback, reset and release) in a task the pool
        tracks: `close()` waits for it, `terminate()` cancels it. Its errors are logged."""
        task = asyncio.get_running_loop().create_task(cleanup)
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # a bug: the cleanup itself catches what the database raises
            log.error(
                "%s: releasing a connection failed: %s: %s",
                self.name, type(exc).__name__, scrub(str(exc), self.secrets),
            )  # fmt: skip

    async def wait_released(self) -> None:
        """Wait until every connection given back with `release_later` is back in the pool
        (or terminated)."""
        while self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)

    async def close(self) -> None:
        """Wait for the pending releases, then close every connection (asyncpg's close)."""
        await self.wait_released()
        await super().close()

    def terminate(self) -> None:
        """Cancel the pending releases and terminate every connection at once."""
        for task in list(self._releasing):
            task.cancel()
        super().terminate()


def reset_query(conn: asyncpg.Connection) -> str:
    """The full reset query for `conn` (gateway constants plus asyncpg's default)."""
    return "\n".join(
        [
            "RESET ROLE;",
            "RESET SESSION AUTHORIZATION;",
            conn.get_reset_query(),
            "DISCARD TEMP;",
            "DISCARD SEQUENCES;",
            _DEALLOCATE_SQL_PREPARED,
        ]
    )


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # The pool has already rolled back any open transaction (Connection._reset) before this.
    if getattr(conn, "gate_reset_done", False):
        conn.gate_reset_done = False  # type: ignore[attr-defined]
        return
    await conn.execute(reset_query(conn))


async def _init_connection(conn: asyncpg.Connection) -> None:
    # asyncpg decodes interval to timedelta, folding months into 30 days (measured:
    # '1 mon 2 days' -> 32 days). Keep PostgreSQL's own exact text instead.
    await conn.set_type_codec(
        "interval", schema="pg_catalog", encoder=str, decoder=str, format="text"
    )


def _describe_error(exc: BaseException, secrets: tuple[str, ...]) -> str:
    text = str(exc).strip()
    if not isinstance(exc, asyncpg.PostgresError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return scrub(text, secrets)


def _fatal_reason(exc: BaseException) -> str | None:
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate in _FATAL_SQLSTATES:
        return _FATAL_SQLSTATES[sqlstate]
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError | TypeError):
        return "invalid connection settings"
    return None


async def create_pool(
    dsn: str,
    *,
    password: str | None,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = 10,
    retries: int = 5,
    backoff: float = 0.5,
    max_backoff: float = 8.0,
    name: str = "demo",
    **connect_kwargs: Any,
) -> GatePool:
    """Open the pool for connection `name`, retrying unreachable databases.

    `dsn` is a URL or libpq key/value DSN; `password` (from `password_env`/`password_file`)
    overrides a password in the DSN. Up to `retries` retries follow the first attempt, waiting
    `backoff`, 2×, 4× … seconds (at most `max_backoff`). Authentication failures, a missing
    database and invalid settings are not retried. Failure raises `DatabaseUnavailable` naming
    the connection and `user@host:port/database`, never the password (the asyncpg exception is
    not chained). Extra keyword arguments go to asyncpg's `connect` (e.g. `ssl`).
    """
    secrets = tuple(s for s in (password, dsn_password(dsn)) if s)
    target = str(describe_target(dsn))
    where = f"database connection {name!r} ({target})"
    try:
        url = to_asyncpg_dsn(dsn)
    except DsnError as exc:
        raise DatabaseUnavailable(f"{where}: {exc}", retriable=False) from None
    server_settings = {"application_name": APPLICATION_NAME}
    server_settings.update(connect_kwargs.pop("server_settings", None) or {})

    attempts = max(0, retries) + 1
    delay = backoff
    last_error = "no attempt made"
    for attempt in range(1, attempts + 1):
        pool: GatePool | None = None
        try:
            pool = GatePool(
                url,
                password=password,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                max_queries=50000,
                max_inactive_connection_lifetime=300.0,
                init=_init_connection,
                reset=_reset_connection,
                server_settings=server_settings,
                loop=None,
                connection_class=GateConnection,
                record_class=asyncpg.Record,
                **connect_kwargs,
            )
            pool.name, pool.target, pool.secrets = name, target, secrets
            await pool
            if min_size == 0:  # nothing connected yet: prove the database is reachable
                async with pool.acquire(timeout=connect_timeout):
                    pass
            if attempt > 1:
                log.info("%s: connected after %d attempts", where, attempt)
            return pool
        except asyncio.CancelledError:
            _discard(pool)
            raise
        except Exception as exc:
            _discard(pool)
            reason = _fatal_reason(exc)
            detail = _describe_error(exc, secrets)
            if reason is not None:
                raise DatabaseUnavailable(f"{where}: {reason}: {detail}", retriable=False) from None
            last_error = detail
            if attempt < attempts:
                log.warning(
                    "%s: attempt %d/%d failed (%s); retrying in %.2fs",
                    where, attempt, attempts, detail, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_backoff)
    raise DatabaseUnavailable(
        f"{where} is unavailable after {attempts} attempt(s): {last_error}"
    ) from None


def _discard(pool: GatePool | None) -> None:
    if pool is None:
        return
    with contextlib.suppress(Exception):  # not initialised, already closed: nothing to do
        pool.terminate()


def secrets_of(pool: Any) -> tuple[str, ...]:
    """The secrets a pool's error text must be scrubbed of (empty for a foreign pool)."""
    return tuple(getattr(pool, "secrets", ()) or ())


def target_of(pool: Any) -> str:
    name = getattr(pool, "name", None)
    target = getattr(pool, "target", None)
    if name and target:
        return f"database connection {name!r} ({target})"
    return "the database"
