"""`PostgresAuditStore`: the audit chain in PostgreSQL (asyncpg), shared by several replicas.

Same contract as `SqliteAuditStore`. Group commit: `append` queues its events; one writer
task per store instance takes everything queued (up to `max_batch` events) and commits it in
one transaction that first locks the chain head row (`SELECT … FROM audit_head … FOR
UPDATE`): replicas appending at the same time queue on that lock, and each chains after the
head the previous one committed, so the store holds one gap-free chain. The rows go in with
COPY; the sessions index and the head row are updated in the same transaction.

A failed commit (server gone, disk full on the server, connection lost) makes every waiter of
that commit raise `AuditUnavailable` naming the store as `user@host:port/database`, never its
password; the next commit tries again. Schema: component `audit` in `mcp_gate_schema`
(version 1), the SQLite tables with PostgreSQL types; migrations run under the advisory lock
every mcp-gate component takes (`pg_db.SCHEMA_LOCK`). `data` is kept as text, not
jsonb: the chain hash covers the exact JSON written, and jsonb would renormalise it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from mcp_gate.pg_db import DB_ERRORS, PgEndpoint

from .model import GENESIS, AuditEvent, Checkpoint, StoredEvent
from .rows import EVENT_COLUMNS, SESSION_COLUMNS, chain, index_changes, serialised
from .store import AuditStore, AuditUnavailable, Row

log = logging.getLogger("mcp_gate.audit")

T = TypeVar("T")

SCHEMA_VERSION = 1
COMPONENT = "audit"
APPLICATION_NAME = "mcp-gate audit"

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE audit_events (
            seq         bigint PRIMARY KEY,
            prev_hash   text NOT NULL,
            hash        text NOT NULL,
            session_id  text NOT NULL,
            kind        text NOT NULL,
            at          double precision NOT NULL,
            direction   text,
            method      text,
            request_id  text,
            tool        text,
            decision    text,
            approval_id text,
            duration_ms double precision,
            data        text NOT NULL
        )
        """,
        "CREATE INDEX audit_events_session ON audit_events (session_id, seq)",
        "CREATE INDEX audit_events_at ON audit_events (at)",
        """
        CREATE TABLE audit_head (
            id   integer PRIMARY KEY CHECK (id = 1),
            seq  bigint NOT NULL,
            hash text NOT NULL
        )
        """,
        f"INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS}')",
        """
        CREATE TABLE audit_sessions (
            id             text PRIMARY KEY,
            subject        text NOT NULL,
            groups         text NOT NULL,
            client_id      text,
            transport      text NOT NULL,
            era            text,
            client_name    text,
            client_version text,
            started_at     double precision NOT NULL,
            ended_at       double precision,
            events         bigint NOT NULL DEFAULT 0,
            calls          bigint NOT NULL DEFAULT 0,
            denied         bigint NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX audit_sessions_started ON audit_sessions (started_at)",
        "CREATE INDEX audit_sessions_subject ON audit_sessions (subject, started_at)",
        """
        CREATE TABLE audit_checkpoints (
            seq       bigint PRIMARY KEY,
            head_hash text NOT NULL,
            at        double precision NOT NULL,
            key_id    text NOT NULL,
            signature text NOT NULL
        )
        """,
    ),
}

_INSERT_SESSION = (
    f"INSERT INTO audit_sessions ({', '.join(SESSION_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(SESSION_COLUMNS)))}) "
    "ON CONFLICT (id) DO NOTHING"
)
_UPDATE_SESSION = (
    "UPDATE audit_sessions SET events = events + $1, calls = calls + $2, denied = denied + $3, "
    "ended_at = COALESCE($4, ended_at) WHERE id = $5"
)


@dataclass
class _Append:
    items: list[tuple[AuditEvent, str]]
    future: asyncio.Future[list[StoredEvent]]


_STOP = object()


class PostgresAuditStore(AuditStore):
    """`AuditStore` in a PostgreSQL database (module docstring). `dsn` carries no password;
    `password` comes from the config (`[server] store_password_env` / `_file`)."""

    def __init__(
        self,
        dsn: str,
        *,
        password: str | None = None,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: float = 10.0,
        connect_attempts: int = 3,
        max_batch: int = 2000,
    ) -> None:
        self._db = PgEndpoint(
            dsn,
            password,
            name="audit store",
            application_name=APPLICATION_NAME,
            error=AuditUnavailable,
            log=log,
            connect_timeout=connect_timeout,
            attempts=connect_attempts,
        )
        self.target = self._db.target
        self.max_batch = max_batch
        self._min_size, self._max_size = min_size, max_size
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgresAuditStore {self.target}>"

    # -- plumbing ---------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException, doing: str = "cannot record") -> AuditUnavailable:
        return AuditUnavailable(f"the audit store ({self.target}) {doing}: {self._db.problem(exc)}")

    async def open(self) -> None:
        if self._pool is not None:
            return
        if self._closed:
            raise AuditUnavailable("the audit store is closed")
        pool = await self._db.with_retries(
            lambda: self._db.create_pool(min_size=self._min_size, max_size=self._max_size)
        )
        try:
            async with pool.acquire() as conn:
                await self._db.migrate(conn, COMPONENT, _MIGRATIONS)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, DB_ERRORS):
                raise self._unavailable(exc, "cannot be set up") from None
            raise
        self._pool = pool
        self._writer = asyncio.create_task(self._run(), name="mcp-gate-audit-writer")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put_nowait(_STOP)
            await writer  # commits everything queued before the stop
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _require(self) -> asyncpg.Pool:
        if self._pool is None or self._closed:
            raise AuditUnavailable(
                "the audit store is closed" if self._closed else "the audit store is not open"
            )
        return self._pool

    @contextlib.asynccontextmanager
    async def _errors(self, doing: str) -> AsyncIterator[None]:
        try:
            yield
        except DB_ERRORS as exc:
            raise self._unavailable(exc, doing) from None

    async def _tx(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = self._require()
        async with self._errors("cannot record"), pool.acquire() as conn, conn.transaction():
            return await fn(conn)

    @staticmethod
    def _param(n: int) -> str:
        return f"${n}"

    async def _select(
        self, sql: str, params: Sequence[Any], convert: Callable[[Row], T]
    ) -> builtins.list[T]:
        pool = self._require()
        async with self._errors("cannot be read"):
            rows = await pool.fetch(sql, *params)
        return [convert(r) for r in rows]

    # -- the writer task --------------------------------------------------------------------

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            group: list[_Append] = []
            item = await self._queue.get()
            count = 0
            while True:
                if item is _STOP:
                    stopping = True
                elif stopping:
                    _settle(item.future, error=AuditUnavailable("the audit store is closed"))
                else:
                    group.append(item)
                    count += len(item.items)
                if count >= self.max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            if group:
                await self._commit(group)

    async def _commit(self, group: list[_Append]) -> None:
        async def tx(conn: asyncpg.Connection) -> list[list[StoredEvent]]:
            row = await conn.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            results, rows, (seq, head_hash) = chain(
                (row["seq"], row["hash"]), [a.items for a in group]
            )
            await conn.copy_records_to_table("audit_events", records=rows, columns=EVENT_COLUMNS)
            changes = index_changes(e for a in group for e, _ in a.items)
            if changes.starts:
                await conn.executemany(_INSERT_SESSION, changes.starts)
            await conn.executemany(
                _UPDATE_SESSION,
                [(d.events, d.calls, d.denied, d.ended_at, s) for s, d in changes.deltas.items()],
            )
            await conn.execute(
                "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", seq, head_hash
            )
            return results

        try:
            results = await self._tx(tx)
        except AuditUnavailable as error:
            for a in group:
                _settle(a.future, error=error)
            return
        except Exception as exc:  # a bug must not kill the writer and strand every waiter
            log.exception("audit store (%s): commit failed", self.target)
            error = AuditUnavailable(f"the audit store ({self.target}) cannot record: {exc}")
            for a in group:
                _settle(a.future, error=error)
            return
        for a, stored in zip(group, results, strict=True):
            _settle(a.future, stored)

    # -- the interface ----------------------------------------------------------------------

    async def append(
        self, events: Sequence[AuditEvent], data: Sequence[str] | None = None
    ) -> builtins.list[StoredEvent]:
        if not events:
            return []
        self._require()
        item = _Append(
            serialised(events, data),
            asyncio.get_running_loop().create_future(),
        )
        self._queue.put_nowait(item)
        return await item.future

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        async def tx(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO audit_checkpoints (seq, head_hash, at, key_id, signature) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
                checkpoint.seq,
                checkpoint.head_hash,
                float(checkpoint.at),
                checkpoint.key_id,
                checkpoint.signature,
            )

        await self._tx(tx)

    async def prune(self, upto_seq: int) -> int:
        async def tx(conn: asyncpg.Connection) -> int:
            status = await conn.execute("DELETE FROM audit_events WHERE seq <= $1", upto_seq)
            await conn.execute(
                "DELETE FROM audit_sessions s WHERE NOT EXISTS "
                "(SELECT 1 FROM audit_events e WHERE e.session_id = s.id)"
            )
            return int(status.split()[-1])

        return await self._tx(tx)


def _settle(
    future: asyncio.Future[T], result: T | None = None, error: BaseException | None = None
) -> None:
    if future.done():  # the waiter was cancelled: nothing to wake
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
