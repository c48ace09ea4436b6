"""Running agent SQL on the pool: the read recipe, approved writes, EXPLAIN.

Read recipe (DESIGN §6; reference note §5 has the measurements behind each step):

1. acquire a pooled connection;
2. `BEGIN READ ONLY` and, in the same round trip (gateway constants and checked integers,
   the only text sent with the simple protocol), one `SELECT set_config(…, true)` setting
   `statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout` and
   `search_path` for this transaction only. Being a SELECT it also takes the transaction's
   snapshot, after which `SET TRANSACTION READ WRITE` is refused ("must be set before any
   query"); without it, that statement is accepted;
4. prepare the agent text (extended protocol: one statement only, so `COMMIT; INSERT …`
   and `SELECT 1; DELETE …` are refused by the server before anything runs) as a named
   statement in the connection's asyncpg statement cache: a text the connection has
   prepared before is not parsed again, and steps 4–6 take one round trip (Bind/Execute).
   PostgreSQL re-analyses a cached statement whose tables changed or that runs under
   another search_path, and refuses it ("cached plan must not change result type",
   asyncpg's `InvalidCachedStatementError`) if its columns would change: then the cache is
   dropped and the read runs again in a new transaction, prepared afresh;
5. compare the result's column count with the caller's analysis (`FieldCountMismatch`),
   before any row is fetched;
6. bind a protocol-level cursor (the unnamed portal) and execute it for at most
   `max_rows + 1` rows, in one round trip;
7. always `ROLLBACK` together with the session reset (`RESET ROLE`, …) in one round trip,
   shielded from cancellation; if that fails or times out the connection is terminated
   instead of going back to the pool. For reads this runs in a task the pool tracks
   (`GatePool.release_later`) while the result goes back: the read changed nothing, the
   ROLLBACK is cleanup; pool close waits for those tasks. Writes wait for it (their
   COMMIT's outcome is the result).

Agent text never reaches `Connection.execute()` (simple protocol, which runs stacked
statements). Errors come out as `QueryError` (PostgreSQL's message, DETAIL, HINT, SQLSTATE)
or `DatabaseUnavailable`; neither ever carries the connection's password.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import asyncpg
import asyncpg.prepared_stmt

from .dsn import scrub
from .errors import DatabaseUnavailable, FieldCountMismatch, QueryError, SqlToolError
from .model import Column, QueryResult
from .pool import reset_query, secrets_of, target_of

log = logging.getLogger(__name__)

DEFAULT_SEARCH_PATH = "pg_catalog, public, pg_temp"
ACQUIRE_TIMEOUT_S = 10.0
CLEANUP_TIMEOUT_S = 5.0
CLIENT_GRACE_S = 5.0  # client-side timeout = statement_timeout + this (0 = no timeout)
_MAX_MS = 2_147_483_647

# Gateway-owned constant texts.
_BEGIN_READ = "BEGIN READ ONLY"
_BEGIN_WRITE = "BEGIN READ WRITE"
_ROLLBACK = "ROLLBACK"
_COMMIT = "COMMIT"
# Operator intervention (the server is going away), not a problem with the statement.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05"})
_COUNTED_COMMANDS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "MERGE", "SELECT", "COPY", "MOVE", "FETCH"}
)


# What `PreparedStatement.fetchrow` runs with a limit of 1: Bind of the unnamed portal,
# Execute for at most `limit` rows, Sync, in one round trip. The public cursor takes a second
# round trip to close its portal once the rows are exhausted (every result that fits). Private
# in asyncpg (0.30-0.32): should a release rename it, the cursor serves instead.
_BIND_EXECUTE = getattr(
    asyncpg.prepared_stmt.PreparedStatement, "_PreparedStatement__bind_execute", None
)
# `Connection._prepare(…, use_cache=True)`: `prepare()` through the statement cache keyed by
# the text (what `fetch()` uses, but `fetch()` has no row limit). Private in asyncpg (0.30-
# 0.32): without it every read is prepared afresh, one round trip slower.
_PREPARE_CACHED = getattr(asyncpg.Connection, "_prepare", None)


def _ms(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_MS:
        raise ValueError(f"{name} must be an integer number of milliseconds, 0..{_MAX_MS}")
    return value


def _client_timeout(statement_timeout_ms: int) -> float | None:
    return statement_timeout_ms / 1000 + CLIENT_GRACE_S if statement_timeout_ms else None


def _type_name(t: Any) -> str:
    schema = getattr(t, "schema", None)
    if schema in (None, "", "pg_catalog", "public"):
        return str(t.name)
    return f"{schema}.{t.name}"


# --------------------------------------------------------------------------- errors


@contextmanager
def map_errors(pool: Any) -> Iterator[None]:
    """Turn asyncpg/OS errors into `QueryError`/`DatabaseUnavailable` with secrets scrubbed."""
    secrets = secrets_of(pool)
    try:
        yield
    except SqlToolError:
        raise
    except (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, OSError) as exc:
        if isinstance(exc, TimeoutError):
            raise QueryError(
                "the statement timed out (the gateway's client-side limit)", "57014"
            ) from None
        what = scrub(str(exc).strip() or type(exc).__name__, secrets)
        raise DatabaseUnavailable(f"{target_of(pool)}: {what}") from None
    except asyncpg.PostgresError as exc:
        if str(getattr(exc, "sqlstate", "") or "") in _UNAVAILABLE_SQLSTATES:
            what = scrub(getattr(exc, "message", None) or str(exc), secrets)
            raise DatabaseUnavailable(f"{target_of(pool)}: {what}") from None
        raise _query_error(exc, secrets) from None
    except (asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        raise QueryError(scrub(str(exc), secrets), getattr(exc, "sqlstate", None)) from None


def _query_error(exc: asyncpg.PostgresError, secrets: tuple[str, ...]) -> QueryError:
    def clean(value: Any) -> str | None:
        return scrub(str(value), secrets) if value else None

    position = getattr(exc, "position", None)
    try:
        pos = int(position) if position else None
    except (TypeError, ValueError):
        pos = None
    return QueryError(
        clean(getattr(exc, "message", None) or str(exc)) or type(exc).__name__,
        getattr(exc, "sqlstate", None),
        detail=clean(getattr(exc, "detail", None)),
        hint=clean(getattr(exc, "hint", None)),
        position=pos,
    )


# --------------------------------------------------------------------------- transactions


async def _acquire(pool: Any, timeout: float) -> Any:
    try:
        return await pool.acquire(timeout=timeout)
    except TimeoutError:
        raise DatabaseUnavailable(
            f"{target_of(pool)}: no free connection in the pool within {timeout:g}s"
        ) from None


async def _release(pool: Any, conn: Any, *, rollback: bool) -> None:
    """ROLLBACK (if asked) and reset the session in one round trip, then give the connection
    back, even while being cancelled. A connection whose ROLLBACK or reset fails is
    terminated, never returned inside a transaction or with state left over."""
    with anyio.CancelScope(shield=True):
        healthy = True
        try:
            with anyio.fail_after(CLEANUP_TIMEOUT_S):
                # Gateway constants only (simple protocol): ROLLBACK, then the pool's reset.
                cleanup = reset_query(conn)
                await conn.execute(f"{_ROLLBACK};\n{cleanup}" if rollback else cleanup)
            healthy = not conn.is_in_transaction()
            if healthy and hasattr(conn, "mark_reset"):
                conn.mark_reset()
        except Exception as exc:
            log.warning("cleanup failed, terminating the connection: %s", type(exc).__name__)
            healthy = False
        if not healthy:
            # A connection the server closed may already be detached from its pool proxy.
            with contextlib.suppress(Exception):
                conn.terminate()
        try:
            with anyio.fail_after(CLEANUP_TIMEOUT_S):
                await pool.release(conn)
        except Exception as exc:  # the pool terminates connections it cannot reset
            log.debug("releasing a connection failed: %s", type(exc).__name__)


async def _release_read(pool: Any, conn: Any) -> None:
    """`_release` (with ROLLBACK) of a read's connection, off the caller's path when the pool
    tracks background releases (a `GatePool`); on any other pool, before returning. Never
    suspends with a `GatePool`, so a cancelled caller still hands the connection over."""
    later = getattr(pool, "release_later", None)
    if later is None:
        await _release(pool, conn, rollback=True)
    else:
        later(_release(pool, conn, rollback=True))


def _begin_sql(
    begin_sql: str,
    *,
    statement_timeout_ms: int,
    lock_timeout_ms: int,
    idle_timeout_ms: int,
    search_path: str,
) -> str:
    """BEGIN and the transaction-local settings as one simple-protocol text (one round trip).

    Only gateway values go in: the limits are integers checked by `_ms`, the search_path a
    gateway constant, quoted as a literal anyway.
    """
    path = "'" + search_path.replace("'", "''") + "'"
    return (
        f"{begin_sql};\n"
        f"SELECT pg_catalog.set_config('statement_timeout', '{int(statement_timeout_ms)}', true),"
        f" pg_catalog.set_config('lock_timeout', '{int(lock_timeout_ms)}', true),"
        " pg_catalog.set_config('idle_in_transaction_session_timeout',"
        f" '{int(idle_timeout_ms)}', true),"
        f" pg_catalog.set_config('search_path', {path}, true)"
    )


def _is_dead(conn: Any) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # closed by the server and already detached from the pool
        return True


async def _begin(
    pool: Any,
    begin_sql: str,
    *,
    statement_timeout_ms: int,
    lock_timeout_ms: int,
    idle_timeout_ms: int,
    search_path: str,
    acquire_timeout: float,
) -> Any:
    """Acquire, begin, set the transaction-local limits. A pooled connection found dead here
    (server restart, terminated backend) is dropped and the start retried once: no agent text
    has run yet, so retrying is safe."""
    _ms(statement_timeout_ms, "statement_timeout_ms")
    _ms(lock_timeout_ms, "lock_timeout_ms")
    _ms(idle_timeout_ms, "idle_timeout_ms")
    for attempt in (1, 2):
        conn = await _acquire(pool, acquire_timeout)
        try:
            await conn.execute(
                _begin_sql(
                    begin_sql,
                    statement_timeout_ms=statement_timeout_ms,
                    lock_timeout_ms=lock_timeout_ms,
                    idle_timeout_ms=idle_timeout_ms,
                    search_path=search_path,
                )
            )
            return conn
        except BaseException as exc:
            dead = _is_dead(conn) or isinstance(exc, asyncpg.PostgresConnectionError)
            await _release(pool, conn, rollback=True)
            if attempt == 2 or not dead or not isinstance(exc, Exception):
                raise
            log.info("%s: pooled connection was dead; retrying once", target_of(pool))
    raise AssertionError("unreachable")


@asynccontextmanager
async def read_transaction(
    pool: Any,
    *,
    statement_timeout_ms: int,
    lock_timeout_ms: int,
    idle_timeout_ms: int,
    search_path: str = DEFAULT_SEARCH_PATH,
    acquire_timeout: float = ACQUIRE_TIMEOUT_S,
) -> AsyncIterator[Any]:
    """A pooled connection inside `BEGIN READ ONLY` with the timeouts and search_path set and
    the snapshot taken; always rolled back. Run agent text in it only via
    `fetch_in_transaction` (prepare + cursor)."""
    conn = await _begin(
        pool,
        _BEGIN_READ,
        statement_timeout_ms=statement_timeout_ms,
        lock_timeout_ms=lock_timeout_ms,
        idle_timeout_ms=idle_timeout_ms,
        search_path=search_path,
        acquire_timeout=acquire_timeout,
    )
    try:
        yield conn
    finally:
        await _release_read(pool, conn)


async def _prepare(conn: Any, sql: str, timeout: float | None) -> Any:
    if _PREPARE_CACHED is None:
        return await conn.prepare(sql, timeout=timeout)
    return await conn._prepare(sql, timeout=timeout, use_cache=True)


async def fetch_in_transaction(
    conn: Any,
    sql: str,
    params: Sequence[Any] | None,
    *,
    max_rows: int,
    expected_columns: int | None = None,
    timeout: float | None = None,
) -> tuple[list[Column], list[tuple[Any, ...]], bool]:
    """Prepare `sql` (one statement, extended protocol), check its column count, and fetch at
    most `max_rows + 1` rows through a protocol-level cursor. Returns (columns, at most
    `max_rows` rows, truncated). Must run inside a transaction (`read_transaction`).

    The statement comes from the connection's statement cache. Raises
    `asyncpg.InvalidCachedStatementError` (having dropped the pool's cached statements) when
    PostgreSQL refuses a cached statement whose columns changed: nothing ran, the transaction
    is aborted, and the caller runs the read again in a new one."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0:
        raise ValueError("max_rows must be a non-negative integer")
    stmt = await _prepare(conn, sql, timeout)
    # The columns of a cached statement are those it was prepared with: the server refuses
    # to run it with any others (see above), so the count is checked before any row comes.
    attributes = stmt.get_attributes()
    if expected_columns is not None and len(attributes) != expected_columns:
        if _PREPARE_CACHED is not None:
            # Perhaps an outdated cached statement (search_path or table changed since)
            # against an up-to-date analysis: refuse only what a fresh Parse confirms, else
            # the stale entry would refuse this text on this connection for good.
            conn._drop_global_statement_cache()
            stmt = await _prepare(conn, sql, timeout)
            attributes = stmt.get_attributes()
        if len(attributes) != expected_columns:
            raise FieldCountMismatch(expected_columns, len(attributes))
    columns = [Column(a.name, _type_name(a.type)) for a in attributes]
    # The server is asked for at most max_rows + 1 rows (never 0, which would mean all).
    limit = max_rows + 1
    try:
        if _BIND_EXECUTE is not None:
            records = await _BIND_EXECUTE(stmt, tuple(params or ()), limit, timeout)
        else:
            records = []
            async for record in stmt.cursor(*(params or ()), prefetch=limit, timeout=timeout):
                records.append(record)
                if len(records) >= limit:
                    break
    except asyncpg.InvalidCachedStatementError:
        # What asyncpg itself does outside a transaction before its one retry: other
        # connections of the pool hold the same outdated statement.
        conn._drop_global_statement_cache()
        raise
    if not conn.is_in_transaction():
        # COMMIT / ROLLBACK [AND CHAIN] as the agent statement: it could write nothing (one
        # statement, READ ONLY), but it is not a query either.
        raise QueryError(
            "the statement ended the gateway's read-only transaction; "
            "transaction control statements are not allowed",
            "25000",
        )
    rows = [tuple(r) for r in records]
    truncated = len(rows) > max_rows
    return columns, rows[:max_rows], truncated


# --------------------------------------------------------------------------- public API


async def run_read(
    pool: Any,
    sql: str,
    params: list[Any] | None,
    *,
    max_rows: int,
    statement_timeout_ms: int,
    lock_timeout_ms: int,
    idle_timeout_ms: int,
    search_path: str = DEFAULT_SEARCH_PATH,
    expected_columns: int | None = None,
) -> QueryResult:
    """Run one agent statement read-only (the recipe in this module's docstring).

    Raises `QueryError` (including `FieldCountMismatch`), `DatabaseUnavailable`, or
    `ValueError` for invalid limits.
    """
    started = time.perf_counter()
    with map_errors(pool):
        for attempt in (1, 2):
            try:
                async with read_transaction(
                    pool,
                    statement_timeout_ms=statement_timeout_ms,
                    lock_timeout_ms=lock_timeout_ms,
                    idle_timeout_ms=idle_timeout_ms,
                    search_path=search_path,
                ) as conn:
                    columns, rows, truncated = await fetch_in_transaction(
                        conn,
                        sql,
                        params,
                        max_rows=max_rows,
                        expected_columns=expected_columns,
                        timeout=_client_timeout(statement_timeout_ms),
                    )
                    elapsed_ms = (time.perf_counter() - started) * 1000
                break
            except asyncpg.InvalidCachedStatementError:
                if attempt == 2:  # changed again meanwhile: reported as a QueryError
                    raise
                log.debug("%s: cached statement outdated; reading again", target_of(pool))
    return QueryResult(columns, rows, len(rows), truncated, elapsed_ms)


def affected_rows(status: str | None) -> int | None:
    """The row count of a command tag (`INSERT 0 3` → 3, `UPDATE 5` → 5), else None."""
    parts = (status or "").split()
    if len(parts) >= 2 and parts[0] in _COUNTED_COMMANDS and parts[-1].isdigit():
        return int(parts[-1])
    return None


async def run_write(
    pool: Any,
    sql: str,
    params: list[Any] | None,
    *,
    statement_timeout_ms: int,
    lock_timeout_ms: int,
    idle_timeout_ms: int = 60_000,
    search_path: str = DEFAULT_SEARCH_PATH,
    max_rows: int | None = None,
) -> QueryResult:
    """Run one approved statement in its own `BEGIN READ WRITE` … `COMMIT` transaction.

    Extended protocol only (one statement). Returns the RETURNING rows (all of them are
    fetched; `max_rows` only trims what is returned), the command tag in `status` and its
    count in `affected_rows`. On any error or cancellation the transaction is rolled back.
    Session state the statement leaves behind after COMMIT (`set_config(…, false)`,
    `SET ROLE`, temp tables) is cleared by the pool's reset on release.
    """
    timeout = _client_timeout(statement_timeout_ms)
    started = time.perf_counter()
    with map_errors(pool):
        conn = await _begin(
            pool,
            _BEGIN_WRITE,
            statement_timeout_ms=statement_timeout_ms,
            lock_timeout_ms=lock_timeout_ms,
            idle_timeout_ms=idle_timeout_ms,
            search_path=search_path,
            acquire_timeout=ACQUIRE_TIMEOUT_S,
        )
        committed = False
        try:
            stmt = await conn.prepare(sql, timeout=timeout)
            columns = [Column(a.name, _type_name(a.type)) for a in stmt.get_attributes()]
            records = await stmt.fetch(*(params or ()), timeout=timeout)
            status = stmt.get_statusmsg()
            await conn.execute(_COMMIT)
            committed = True
            elapsed_ms = (time.perf_counter() - started) * 1000
        finally:
            await _release(pool, conn, rollback=not committed)
    rows = [tuple(r) for r in records]
    truncated = max_rows is not None and len(rows) > max_rows
    if truncated:
        rows = rows[:max_rows]
    return QueryResult(
        columns,
        rows,
        len(rows),
        truncated,
        elapsed_ms,
        status=status,
        affected_rows=affected_rows(status),
    )


def _plan_summary(raw: Any) -> dict[str, Any]:
    """`{"plan", "estimated_rows", "estimated_cost"}` of an `EXPLAIN (FORMAT JSON)` result."""
    if raw is None:
        raise QueryError("EXPLAIN returned no plan")
    plan = json.loads(raw) if isinstance(raw, str) else raw
    try:
        top = plan[0]["Plan"]
        counted = top
        if top.get("Node Type") == "ModifyTable":
            # Its input ("Outer"); InitPlans and SubPlans are listed beside it.
            inputs = [p for p in top.get("Plans", ()) if p.get("Parent Relationship") == "Outer"]
            counted = inputs[0] if inputs else top
        estimated_rows = int(counted["Plan Rows"])
        estimated_cost = float(top["Total Cost"])
    except (LookupError, TypeError, ValueError):
        raise QueryError("EXPLAIN returned an unexpected plan shape") from None
    return {"plan": plan, "estimated_rows": estimated_rows, "estimated_cost": estimated_cost}


async def _explain_in_transaction(
    conn: Any, sql: str, params: Sequence[Any] | None, timeout: float | None
) -> dict[str, Any]:
    # fetchval prepares through asyncpg's statement cache (extended protocol, one
    # statement): an EXPLAIN the connection has seen before costs one round trip
    # instead of two. Its result is always one json column.
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON)\n" + sql, *(params or ()), timeout=timeout)
    if not conn.is_in_transaction():  # cannot happen for an EXPLAIN; never trust it
        raise QueryError("the statement ended the gateway's read-only transaction")
    return _plan_summary(raw)


class ExplainedRead:
    """One agent read in the read-only transaction it will run in, explained there first
    unless opened with `explain=False`.

    `plan` is the EXPLAIN summary (as `explain` returns it), or None: with `error` saying why
    there is none, or because nothing was explained. `fetch` runs the read itself in the same
    transaction, at most once; when the EXPLAIN failed (the transaction is aborted then) or
    the transaction could not start, it runs the plain `run_read` recipe instead, which
    reports its own error.
    """

    def __init__(
        self, pool: Any, sql: str, params: Sequence[Any] | None, limits: dict[str, Any]
    ) -> None:
        self._pool = pool
        self._sql = sql
        self._params = params
        self._limits = limits
        self._conn: Any = None  # the open transaction, until `fetch` or the block ends
        self._used = False
        self.plan: dict[str, Any] | None = None
        self.error: SqlToolError | ValueError | None = None

    async def _give_back(self, *, wait: bool = False) -> None:
        """Roll back and release the transaction's connection: in the background unless
        `wait`."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if wait:
            await _release(self._pool, conn, rollback=True)
        else:
            await _release_read(self._pool, conn)

    async def fetch(self, *, max_rows: int, expected_columns: int | None = None) -> QueryResult:
        """The read's rows (see `run_read`), in the transaction its EXPLAIN ran in."""
        conn = None if self._used else self._conn
        self._used = True
        started = time.perf_counter()
        if conn is not None and not _is_dead(conn):
            with map_errors(self._pool):
                try:
                    columns, rows, truncated = await fetch_in_transaction(
                        conn,
                        self._sql,
                        self._params,
                        max_rows=max_rows,
                        expected_columns=expected_columns,
                        timeout=_client_timeout(self._limits["statement_timeout_ms"]),
                    )
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    return QueryResult(columns, rows, len(rows), truncated, elapsed_ms)
                except asyncpg.InvalidCachedStatementError:
                    pass  # an outdated cached statement, nothing ran: read again below
        # The server ended the idle transaction while the decision was being committed
        # (idle_in_transaction_session_timeout), or refused an outdated cached statement:
        # nothing of the read ran there. Its connection goes back before taking another.
        await self._give_back()
        return await run_read(
            self._pool,
            self._sql,
            list(self._params) if self._params else None,
            max_rows=max_rows,
            expected_columns=expected_columns,
            **self._limits,
        )


@asynccontextmanager
async def explained_read(
    pool: Any,
    sql: str,
    params: Sequence[Any] | None,
    *,
    statement_timeout_ms: int,
    lock_timeout_ms: int,
    idle_timeout_ms: int,
    search_path: str = DEFAULT_SEARCH_PATH,
    explain: bool = True,
) -> AsyncIterator[ExplainedRead]:
    """The read recipe with `EXPLAIN (FORMAT JSON)` (never ANALYZE: nothing executes) of
    `sql` first, on one connection: BEGIN READ ONLY + limits, EXPLAIN, then, if the caller
    calls `fetch`, the read itself; always rolled back when the block ends, whether or not
    the read ran. One transaction instead of two for a read whose policy needs the estimate.
    With `explain=False` entering only begins the transaction (no agent text is sent), so
    that it can start while the call's decision is being committed.

    Precondition as for `explain`: `sql` is one plain statement the caller classified as a
    read. Never raises on entry: a failure to start or to explain is `error` (no plan).
    """
    limits = {
        "statement_timeout_ms": statement_timeout_ms,
        "lock_timeout_ms": lock_timeout_ms,
        "idle_timeout_ms": idle_timeout_ms,
        "search_path": search_path,
    }
    read = ExplainedRead(pool, sql, params, limits)
    try:
        with map_errors(pool):
            read._conn = await _begin(
                pool, _BEGIN_READ, acquire_timeout=ACQUIRE_TIMEOUT_S, **limits
            )
            if explain:
                read.plan = await _explain_in_transaction(
                    read._conn, sql, params, _client_timeout(statement_timeout_ms)
                )
    except (SqlToolError, ValueError) as exc:
        read.error = exc
        # An aborted transaction: back in the pool before the caller decides on the unknown
        # estimate (a rare path, not worth a task).
        await read._give_back(wait=True)
    except BaseException:
        await read._give_back()
        raise
    try:
        yield read
    finally:
        await read._give_back()


async def explain(
    pool: Any,
    sql: str,
    params: list[Any] | None = None,
    *,
    statement_timeout_ms: int = 10_000,
    lock_timeout_ms: int = 1_000,
    idle_timeout_ms: int = 10_000,
    search_path: str = DEFAULT_SEARCH_PATH,
) -> dict[str, Any]:
    """`EXPLAIN (FORMAT JSON) <sql>` on the read-only path (never ANALYZE: nothing executes).

    Precondition: the caller has already classified `sql` as one plain statement that may be
    explained (e.g. pglast says a single SELECT). The agent text is appended to a gateway
    prefix, so the classification matters; the server's one-statement rule for prepared
    statements still refuses `SELECT 1; DELETE …`, and the READ ONLY transaction refuses
    writes. Returns `{"plan": <EXPLAIN JSON>, "estimated_rows": …, "estimated_cost": Total
    Cost of the top node}`. `estimated_rows` is the top node's Plan Rows, except for DML,
    whose top node (ModifyTable) returns no rows without RETURNING: then it is the rows its
    input plan feeds it, i.e. the rows the statement would insert, update or delete.
    """
    timeout = _client_timeout(statement_timeout_ms)
    with map_errors(pool):
        async with read_transaction(
            pool,
            statement_timeout_ms=statement_timeout_ms,
            lock_timeout_ms=lock_timeout_ms,
            idle_timeout_ms=idle_timeout_ms,
            search_path=search_path,
        ) as conn:
            return await _explain_in_transaction(conn, sql, params, timeout)
