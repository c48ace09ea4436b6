"""`ApprovalStore` on PostgreSQL (asyncpg): one store shared by several gateway replicas.

Same contract and semantics as `SqliteApprovalStore` (see `store.py`), with PostgreSQL doing
the serialising:

- every change is one transaction (READ COMMITTED); `decide` takes the request's row lock
  (`SELECT … FOR UPDATE`) before it reads the status, so of two processes racing exactly one
  sees `pending`; `withdraw`, `mark_executed`, `set_justification` are conditional UPDATEs
  (PostgreSQL re-checks the condition on the row after waiting for its lock); `expire_due`
  locks the due rows in id order first (two replicas expiring at once cannot deadlock, and
  each row is expired by exactly one of them);
- the partial unique index "one open identical request" makes racing `create`s agree: an
  INSERT … ON CONFLICT DO NOTHING that lost finds the winner's row in its next statement;
- a deadlock or serialisation failure (not expected, but PostgreSQL may report one) reruns
  the transaction a few times.

Cross-replica feed: every change NOTIFYs channel `mcp_gate_approvals` in the transaction that
makes it (delivered on commit, never for a rolled-back change), payload
`{"o": origin, "k": kind, "id": approval_id}` (`origin` names the store instance, so a feed
skips its own changes). `changes()` returns a feed on a dedicated connection (LISTEN); it
checks the connection every `health_interval` seconds, reconnects with backoff when it is
lost, and then yields a "re-read everything" change so nothing missed meanwhile is lost.

Schema (version 1, in `mcp_gate_schema` as `approvals`; migrations run under a transaction-
scoped advisory lock, `pg_db.SCHEMA_LOCK`, so replicas starting together do not race): the SQLite
tables with jsonb for the JSON columns, double precision Unix timestamps, and a `seq` column
ordering the decisions.

Errors from PostgreSQL or the network become `StoreError` naming the store's
`user@host:port/database`, never its password.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar, cast, get_args

import asyncpg

from mcp_gate.calls import Principal
from mcp_gate.pg_db import PgEndpoint

from .model import ApprovalDecision, ApprovalRequest, EventKind, Status
from .store import (
    SCHEMA_VERSION,
    ApprovalStore,
    ChangeFeed,
    CreateResult,
    DecideOutcome,
    DecideResult,
    StoreChange,
    StoreError,
    approval_from_row,
    decision_from_row,
)

log = logging.getLogger("mcp_gate.approvals")

T = TypeVar("T")

CHANNEL = "mcp_gate_approvals"
APPLICATION_NAME = "mcp-gate approvals"
_COMPONENT = "approvals"
_EVENT_KINDS = frozenset(get_args(EventKind))
_RETRIED = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

_SCHEMA_V1 = (
    """
    CREATE TABLE approvals (
        id               text PRIMARY KEY,
        status           text NOT NULL CHECK (status IN
                           ('pending','approved','denied','expired','withdrawn','executed')),
        subject          text NOT NULL,
        groups           jsonb NOT NULL,
        client_id        text,
        target           text NOT NULL,
        tool             text NOT NULL,
        arguments_digest text NOT NULL,
        sql              text,
        policy_version   text NOT NULL,
        reasons          jsonb NOT NULL,
        approvers        jsonb NOT NULL,
        quorum           integer NOT NULL CHECK (quorum >= 1),
        justification    text,
        estimated_rows   bigint,
        created_at       double precision NOT NULL,
        expires_at       double precision NOT NULL,
        decided_at       double precision,
        executed_at      double precision
    )
    """,
    """
    CREATE UNIQUE INDEX approvals_open_identical
        ON approvals (subject, target, tool, arguments_digest, policy_version)
        WHERE status IN ('pending', 'approved')
    """,
    "CREATE INDEX approvals_status_expiry ON approvals (status, expires_at)",
    "CREATE INDEX approvals_created ON approvals (created_at)",
    """
    CREATE TABLE approval_decisions (
        seq             bigserial PRIMARY KEY,
        request_id      text NOT NULL REFERENCES approvals (id) ON DELETE CASCADE,
        approver        text NOT NULL,
        approver_groups jsonb NOT NULL,
        decision        text NOT NULL CHECK (decision IN ('approve', 'deny')),
        reason          text,
        at              double precision NOT NULL,
        UNIQUE (request_id, approver, decision)
    )
    """,
)
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: _SCHEMA_V1}
assert max(_MIGRATIONS) == SCHEMA_VERSION  # one schema version for both stores

_OPEN = "('pending', 'approved')"
# A request with its decisions in one statement (one snapshot, one round trip).
_SELECT = """
    SELECT a.*, COALESCE((
        SELECT jsonb_agg(jsonb_build_object(
                   'approver', d.approver, 'approver_groups', d.approver_groups,
                   'decision', d.decision, 'reason', d.reason, 'at', d.at)
               ORDER BY d.at, d.seq)
        FROM approval_decisions d WHERE d.request_id = a.id), '[]'::jsonb) AS decisions
    FROM approvals a
"""
_EXPIRE_DUE = f"""
    WITH due AS (
        SELECT id FROM approvals
        WHERE status IN {_OPEN} AND expires_at <= $1
        ORDER BY id FOR UPDATE
    )
    UPDATE approvals a SET status = 'expired', decided_at = COALESCE(a.decided_at, a.expires_at)
    FROM due WHERE a.id = due.id AND a.status IN {_OPEN}
    RETURNING a.id
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _approval(row: asyncpg.Record) -> ApprovalRequest:
    # `decisions` is the `jsonb_agg` of `_SELECT`: one JSON text, its objects decoded here.
    return approval_from_row(row, map(decision_from_row, json.loads(row["decisions"])))


class PostgresApprovalStore(ApprovalStore):
    """`ApprovalStore` in a PostgreSQL database (module docstring).

    `dsn` is a URL or key/value DSN without a password; `password` comes from the config's
    `store_password_env`/`store_password_file`. Opening tries `connect_attempts` times
    (backing off 0.5 s, 1 s, …) unless the server refuses the login or the database.
    """

    def __init__(
        self,
        dsn: str,
        *,
        password: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        connect_attempts: int = 3,
        health_interval: float = 10.0,
        channel: str = CHANNEL,
    ) -> None:
        self._db = PgEndpoint(
            dsn,
            password,
            name="approval store",
            application_name=APPLICATION_NAME,
            error=StoreError,
            log=log,
            connect_timeout=connect_timeout,
            attempts=connect_attempts,
        )
        self.target = self._db.target
        self.channel = channel
        self.origin = secrets.token_hex(8)
        self.health_interval = health_interval
        self._min_size, self._max_size = min_size, max_size
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"<PostgresApprovalStore {self.target}>"

    # -- plumbing ---------------------------------------------------------------------------

    def _error(self, exc: BaseException, doing: str = "failed") -> StoreError:
        return StoreError(f"the approval store ({self.target}) {doing}: {self._db.problem(exc)}")

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = await self._db.with_retries(
            lambda: self._db.create_pool(min_size=self._min_size, max_size=self._max_size)
        )
        try:
            async with pool.acquire() as conn:
                await self._db.migrate(conn, _COMPONENT, _MIGRATIONS)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, asyncpg.PostgresError | OSError | asyncpg.InterfaceError):
                raise self._error(exc, "cannot be set up") from None
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the approval store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(exc) from None

    async def _tx(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`fn` in a transaction, rerun after a deadlock or serialisation failure."""
        pool = self._require()
        async with self._errors():
            for attempt in range(5):
                try:
                    async with pool.acquire() as conn, conn.transaction():
                        return await fn(conn)
                except _RETRIED:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")

    async def _fetch(self, sql: str, *args: Any) -> builtins.list[asyncpg.Record]:
        pool = self._require()
        async with self._errors():
            return await pool.fetch(sql, *args)

    async def _notify(self, conn: asyncpg.Connection, kind: EventKind, ids: Sequence[str]) -> None:
        """Queue a notification per id, delivered when the transaction commits."""
        if not ids:
            return
        payloads = [_dumps({"o": self.origin, "k": kind, "id": i}) for i in ids]
        await conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", self.channel,
                           payloads)  # fmt: skip

    @staticmethod
    async def _load_ids(conn: asyncpg.Connection, ids: Sequence[str]) -> list[ApprovalRequest]:
        if not ids:
            return []
        rows = await conn.fetch(_SELECT + " WHERE a.id = ANY($1::text[])", list(ids))
        by_id = {a.id: a for a in map(_approval, rows)}
        return [by_id[i] for i in ids if i in by_id]

    @classmethod
    async def _load_one(cls, conn: asyncpg.Connection, approval_id: str) -> ApprovalRequest | None:
        found = await cls._load_ids(conn, [approval_id])
        return found[0] if found else None

    async def _expire_due(self, conn: asyncpg.Connection, now: float) -> list[str]:
        ids = [row[0] for row in await conn.fetch(_EXPIRE_DUE, now)]
        await self._notify(conn, "expired", ids)
        return ids

    # -- the interface ----------------------------------------------------------------------

    async def create(self, approval: ApprovalRequest, now: float) -> CreateResult:
        if approval.status != Status.PENDING or approval.decisions:
            raise ValueError("a new approval request must be pending, without decisions")
        key = (
            approval.principal.subject,
            approval.target,
            approval.tool,
            approval.arguments_digest,
            approval.policy_version,
        )

        async def tx(conn: asyncpg.Connection) -> CreateResult:
            expired = tuple(await self._load_ids(conn, await self._expire_due(conn, now)))
            # Each statement sees what was committed before it (READ COMMITTED): an insert
            # that lost to a concurrent identical one finds the winner on the next turn.
            for _ in range(3):
                existing = await conn.fetchval(
                    "SELECT id FROM approvals WHERE subject = $1 AND target = $2 AND tool = $3 "
                    "AND arguments_digest = $4 AND policy_version = $5 "
                    f"AND status IN {_OPEN} LIMIT 1 FOR SHARE",
                    *key,
                )
                if existing is not None:
                    found = await self._load_one(conn, existing)
                    assert found is not None
                    return CreateResult(found, False, expired)
                inserted = await conn.fetchval(
                    "INSERT INTO approvals (id, status, subject, groups, client_id, target, "
                    "tool, arguments_digest, sql, policy_version, reasons, approvers, quorum, "
                    "justification, estimated_rows, created_at, expires_at) VALUES ($1, "
                    "'pending', $2, $3::jsonb, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, "
                    "$12, $13, $14, $15, $16) "
                    "ON CONFLICT (subject, target, tool, arguments_digest, policy_version) "
                    f"WHERE status IN {_OPEN} DO NOTHING RETURNING id",
                    approval.id,
                    approval.principal.subject,
                    _dumps(sorted(approval.principal.groups)),
                    approval.principal.client_id,
                    approval.target,
                    approval.tool,
                    approval.arguments_digest,
                    approval.sql,
                    approval.policy_version,
                    _dumps(list(approval.reasons)),
                    _dumps(list(approval.approvers)),
                    approval.quorum,
                    approval.justification,
                    approval.estimated_rows,
                    approval.created_at,
                    approval.expires_at,
                )
                if inserted is not None:
                    await self._notify(conn, "created", [approval.id])
                    created = await self._load_one(conn, approval.id)
                    assert created is not None
                    return CreateResult(created, True, expired)
            raise StoreError(f"approval {approval.id}: identical requests kept changing")

        return await self._tx(tx)

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        rows = await self._fetch(_SELECT + " WHERE a.id = $1", approval_id)
        return _approval(rows[0]) if rows else None

    async def list(
        self,
        *,
        statuses: Collection[Status] | None = None,
        limit: int = 100,
        visible_to: Principal | None = None,
    ) -> builtins.list[ApprovalRequest]:
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if statuses is not None:
            if not statuses:
                return []
            params.append([str(s) for s in statuses])
            where.append(f"a.status = ANY(${len(params)}::text[])")
        if visible_to is not None:
            params.append(visible_to.subject)
            clause = f"a.subject = ${len(params)}"
            if visible_to.groups:
                params.append(sorted(visible_to.groups))
                clause += f" OR a.approvers ?| ${len(params)}::text[]"
            where.append(f"({clause})")
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.append(max(0, int(limit)))
        sql += f" ORDER BY a.created_at DESC, a.id LIMIT ${len(params)}"
        return [_approval(row) for row in await self._fetch(sql, *params)]

    async def decide(self, approval_id: str, decision: ApprovalDecision) -> DecideResult:
        async def tx(conn: asyncpg.Connection) -> DecideResult:
            # The row lock serialises every decision on this request, across processes.
            row = await conn.fetchrow(
                "SELECT status, expires_at, quorum FROM approvals WHERE id = $1 FOR UPDATE",
                approval_id,
            )
            if row is None:
                return DecideResult(DecideOutcome.NOT_FOUND, None)
            if row["status"] != Status.PENDING:
                return DecideResult(
                    DecideOutcome.NOT_PENDING, await self._load_one(conn, approval_id)
                )
            if row["expires_at"] <= decision.at:
                await conn.execute(
                    "UPDATE approvals SET status = 'expired', decided_at = expires_at "
                    "WHERE id = $1",
                    approval_id,
                )
                await self._notify(conn, "expired", [approval_id])
                return DecideResult(DecideOutcome.EXPIRED, await self._load_one(conn, approval_id))
            inserted = await conn.fetchval(
                "INSERT INTO approval_decisions "
                "(request_id, approver, approver_groups, decision, reason, at) "
                "VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING seq",
                approval_id,
                decision.approver,
                _dumps(sorted(decision.approver_groups)),
                decision.decision,
                decision.reason,
                decision.at,
            )
            if inserted is None:
                return DecideResult(
                    DecideOutcome.DUPLICATE, await self._load_one(conn, approval_id)
                )
            if decision.decision == "deny":
                final: Status | None = Status.DENIED
            else:
                approvals = await conn.fetchval(
                    "SELECT COUNT(DISTINCT approver) FROM approval_decisions "
                    "WHERE request_id = $1 AND decision = 'approve'",
                    approval_id,
                )
                final = Status.APPROVED if approvals >= row["quorum"] else None
            outcome = DecideOutcome.RECORDED
            if final is not None:
                await conn.execute(
                    "UPDATE approvals SET status = $1, decided_at = $2 WHERE id = $3",
                    str(final),
                    decision.at,
                    approval_id,
                )
                outcome = DecideOutcome.DENIED if final == Status.DENIED else DecideOutcome.APPROVED
            await self._notify(conn, "decided", [approval_id])
            return DecideResult(outcome, await self._load_one(conn, approval_id))

        return await self._tx(tx)

    async def _move(
        self, approval_id: str, kind: EventKind, sql: str, *params: Any
    ) -> ApprovalRequest | None:
        async def tx(conn: asyncpg.Connection) -> ApprovalRequest | None:
            if await conn.fetchval(sql + " RETURNING id", *params) is None:
                return None
            await self._notify(conn, kind, [approval_id])
            return await self._load_one(conn, approval_id)

        return await self._tx(tx)

    async def withdraw(self, approval_id: str, subject: str, at: float) -> ApprovalRequest | None:
        return await self._move(
            approval_id,
            "withdrawn",
            "UPDATE approvals SET status = 'withdrawn', decided_at = $1 "
            "WHERE id = $2 AND subject = $3 AND status = 'pending' AND expires_at > $1",
            at,
            approval_id,
            subject,
        )

    async def mark_executed(self, approval_id: str, at: float) -> ApprovalRequest | None:
        return await self._move(
            approval_id,
            "executed",
            "UPDATE approvals SET status = 'executed', executed_at = $1 "
            "WHERE id = $2 AND status = 'approved' AND expires_at > $1",
            at,
            approval_id,
        )

    async def set_justification(
        self, approval_id: str, subject: str, text: str | None
    ) -> ApprovalRequest | None:
        return await self._move(
            approval_id,
            "updated",
            "UPDATE approvals SET justification = $1 "
            "WHERE id = $2 AND subject = $3 AND status = 'pending'",
            text,
            approval_id,
            subject,
        )

    async def expire_due(self, now: float) -> builtins.list[ApprovalRequest]:
        async def tx(conn: asyncpg.Connection) -> builtins.list[ApprovalRequest]:
            return await self._load_ids(conn, await self._expire_due(conn, now))

        return await self._tx(tx)

    async def next_expiry(self) -> float | None:
        rows = await self._fetch(f"SELECT MIN(expires_at) FROM approvals WHERE status IN {_OPEN}")
        return rows[0][0]

    def changes(self) -> ChangeFeed:
        return PostgresChangeFeed(self)


_END = StoreChange(None, None)


class PostgresChangeFeed(ChangeFeed):
    """LISTEN on the store's channel over a dedicated connection (module docstring)."""

    def __init__(self, store: PostgresApprovalStore, *, queue_size: int = 10_000) -> None:
        self._store = store
        self._queue: asyncio.Queue[StoreChange] = asyncio.Queue(maxsize=queue_size)
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.reconnects = 0

    async def open(self) -> None:
        if self._task is not None:
            return
        self._conn = await self._listen()
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name="mcp-gate approval feed"
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop()
        self._put(_END, force=True)

    async def __anext__(self) -> StoreChange:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        change = await self._queue.get()
        if change is _END:
            self._put(_END, force=True)  # for any other reader
            raise StopAsyncIteration
        return change

    # -- the connection ---------------------------------------------------------------------

    async def _listen(self) -> asyncpg.Connection:
        store = self._store
        conn = await store._db.with_retries(store._db.connect)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(store.channel, self._on_notify)
        except BaseException as exc:
            conn.terminate()
            if isinstance(exc, asyncpg.PostgresError | OSError | asyncpg.InterfaceError):
                raise store._error(exc, "cannot LISTEN") from None
            raise
        self._lost = lost
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _supervise(self) -> None:
        """Wait for the connection to be lost; reconnect; tell the reader to re-read."""
        while True:
            await self._until_lost()
            await self._drop()
            delay = 0.1
            while True:
                try:
                    self._conn = await self._listen()
                    break
                except Exception as exc:  # whatever it is, keep trying: waiters depend on it
                    log.warning("approval feed: %s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self.reconnects += 1
            log.info("approval feed: listening again on %s", self._store.target)
            self._put(StoreChange(None, None))

    async def _until_lost(self) -> None:
        # The termination listener catches a closed socket; the health check also catches a
        # connection that went silent (a dead peer behind a firewall).
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self._store.health_interval)
                return
            except TimeoutError:
                pass
            conn = self._conn
            if conn is None or conn.is_closed():
                return
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), 5.0)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                log.warning("approval feed: the LISTEN connection stopped answering")
                return

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            data = json.loads(payload)
            origin, kind, approval_id = data["o"], data["k"], data["id"]
        except (ValueError, KeyError, TypeError):
            log.warning("approval feed: ignored a malformed notification")
            return
        if origin == self._store.origin:
            return  # our own change: the service already published it
        if kind not in _EVENT_KINDS or not isinstance(approval_id, str):
            log.warning("approval feed: ignored a notification of kind %r", kind)
            return
        self._put(StoreChange(approval_id, cast(EventKind, kind)))

    def _put(self, change: StoreChange, *, force: bool = False) -> None:
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            # The reader fell behind: replace the backlog with one "re-read everything".
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(change if force else StoreChange(None, None))
