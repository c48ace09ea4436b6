"""Durable storage of approval requests: the interface and its SQLite implementation.

The interface is small and knows nothing of SQL. Every method that changes state is one
atomic compare-and-set in the store, so several service instances (threads, processes, or
replicas sharing a PostgreSQL store, `pg_store.PostgresApprovalStore`) can race and exactly
one wins:

- `create` returns the existing open request (pending or approved-not-executed, and not yet
  due) with the same requester, target, tool, argument digest and policy version
  instead of inserting a second one;
- `decide` records one vote and applies the state machine in the same transaction: a deny
  closes the request, approvals close it when `quorum` distinct approvers have approved;
  nothing is recorded once the request has left `pending`, or when it is due (then it is
  expired instead);
- `withdraw`, `mark_executed`, `expire_due` move a request only from the state they expect.

Expiry: `expires_at` bounds the whole life of a request, not only the wait for a decision.
A pending request expires at `expires_at`, and so does an approved one that was not executed
by then (approved → expired): an approval cannot be cashed in later than the policy's
`[approval] expires` allows, and the approver sees the one deadline that applies. The
expired request keeps its `decided_at` (when it was approved) and its decisions.

Other processes: `changes()` is the feed of changes made through other store instances, for
waking local waiters (`None` when the store has none: SQLite has no cross-process feed, so
a second process on the same file only sees a change when it reads the store).

Who may do what (approver groups, own request, requester) is the service's business: those
facts never change after creation, so the service checks them before calling the store.

`SqliteApprovalStore` runs every statement on one connection in one dedicated thread (a
queue of jobs), so the event loop never blocks on disk, and a caller that is cancelled while
its job runs cannot let another job (or `close`) onto the connection at the same time.
WAL mode, `synchronous=FULL` (a decision that was reported is on disk), `BEGIN IMMEDIATE`
transactions (the write lock is taken before anything is read, so two processes on the same
file serialise instead of both reading `pending`), and a busy timeout for such waits.

Schema (version 1; `mcp_gate_schema` records one version per component):

    approvals(id PK, status, subject, groups JSON, client_id, target, tool,
              arguments_digest, sql, policy_version, reasons JSON, approvers JSON,
              quorum, justification, estimated_rows, created_at, expires_at,
              decided_at, executed_at)
        UNIQUE (subject, target, tool, arguments_digest, policy_version)
               WHERE status IN ('pending', 'approved')        -- at most one open duplicate
        INDEX (status, expires_at), INDEX (created_at)
    approval_decisions(request_id → approvals, approver, approver_groups JSON,
                       decision approve|deny, reason, at,
                       UNIQUE (request_id, approver, decision))  -- a vote counts once
"""

from __future__ import annotations

import asyncio
import builtins
import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mcp_gate import sqlite_db
from mcp_gate.calls import Principal

from .model import ApprovalDecision, ApprovalRequest, EventKind, Status

T = TypeVar("T")


class DecideOutcome(StrEnum):
    """What `ApprovalStore.decide` did."""

    RECORDED = "recorded"  # vote recorded; still pending (quorum not reached yet)
    APPROVED = "approved"  # vote recorded; it completed the quorum
    DENIED = "denied"  # vote recorded; it denied the request
    DUPLICATE = "duplicate"  # this approver had already cast this vote: nothing changed
    NOT_FOUND = "not_found"
    NOT_PENDING = "not_pending"  # already left pending: nothing recorded
    EXPIRED = "expired"  # it was due: expired now, nothing recorded


@dataclass(frozen=True, slots=True)
class DecideResult:
    outcome: DecideOutcome
    approval: ApprovalRequest | None  # the state after the call (None when not found)


@dataclass(frozen=True, slots=True)
class CreateResult:
    approval: ApprovalRequest  # the new request, or the existing identical open one
    created: bool
    expired: tuple[ApprovalRequest, ...] = ()  # requests the store expired on the way


class StoreError(Exception):
    """The store is closed, unusable, or was written by a newer version."""


@dataclass(frozen=True, slots=True)
class StoreChange:
    """A change made through another store instance: `kind` happened to `approval_id`.

    `approval_id` None means the feed was interrupted and may have missed changes: every
    waiter should re-read the store."""

    approval_id: str | None
    kind: EventKind | None = None


class ChangeFeed(ABC):
    """Changes made through other store instances, in commit order: `await open()` (from
    then on nothing is missed), iterate, `aclose()`."""

    @abstractmethod
    async def open(self) -> None:
        """Start listening; raises `StoreError` when the store cannot be reached."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop listening (idempotent); a pending iteration ends."""

    def __aiter__(self) -> ChangeFeed:
        return self

    @abstractmethod
    async def __anext__(self) -> StoreChange:
        """The next change (reconnecting on its own when the connection is lost)."""


class ApprovalStore(ABC):
    """Durable approval requests. All methods are safe to call concurrently."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema (idempotent)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection (idempotent)."""

    @abstractmethod
    async def create(self, approval: ApprovalRequest, now: float) -> CreateResult:
        """Insert `approval` (status pending, no decisions) unless an identical open request
        exists (see the module docstring); requests due at `now` are expired first."""

    @abstractmethod
    async def get(self, approval_id: str) -> ApprovalRequest | None:
        """The request as stored (no expiry applied), or None."""

    @abstractmethod
    async def list(
        self,
        *,
        statuses: Collection[Status] | None = None,
        limit: int = 100,
        visible_to: Principal | None = None,
    ) -> builtins.list[ApprovalRequest]:
        """Newest first. `visible_to` keeps the principal's own requests and those whose
        approver groups include one of the principal's groups."""

    @abstractmethod
    async def decide(self, approval_id: str, decision: ApprovalDecision) -> DecideResult:
        """Record one vote at `decision.at` and apply the state machine atomically."""

    @abstractmethod
    async def withdraw(self, approval_id: str, subject: str, at: float) -> ApprovalRequest | None:
        """pending (not due) → withdrawn if `subject` is the requester; None otherwise."""

    @abstractmethod
    async def mark_executed(self, approval_id: str, at: float) -> ApprovalRequest | None:
        """approved → executed if not due at `at`; None if it was not approved (including
        already executed) or is due (`expire_due` expires it)."""

    @abstractmethod
    async def set_justification(
        self, approval_id: str, subject: str, text: str | None
    ) -> ApprovalRequest | None:
        """Set the requester's justification while pending; None if not pending or not
        `subject`'s request."""

    @abstractmethod
    async def expire_due(self, now: float) -> builtins.list[ApprovalRequest]:
        """Expire every pending or approved (not executed) request with `expires_at <= now`;
        the ones this call moved."""

    @abstractmethod
    async def next_expiry(self) -> float | None:
        """The earliest `expires_at` among pending and approved requests."""

    def changes(self) -> ChangeFeed | None:
        """A new feed of changes made through other instances of this store, or None when
        the store has no cross-process feed (the default, and SQLite's case)."""
        return None


# -- SQLite ------------------------------------------------------------------------------------

SCHEMA_VERSION = 1
_COMPONENT = "approvals"

_SCHEMA_V1 = (
    """
    CREATE TABLE approvals (
        id               TEXT PRIMARY KEY,
        status           TEXT NOT NULL CHECK (status IN
                           ('pending','approved','denied','expired','withdrawn','executed')),
        subject          TEXT NOT NULL,
        groups           TEXT NOT NULL,
        client_id        TEXT,
        target           TEXT NOT NULL,
        tool             TEXT NOT NULL,
        arguments_digest TEXT NOT NULL,
        sql              TEXT,
        policy_version   TEXT NOT NULL,
        reasons          TEXT NOT NULL,
        approvers        TEXT NOT NULL,
        quorum           INTEGER NOT NULL CHECK (quorum >= 1),
        justification    TEXT,
        estimated_rows   INTEGER,
        created_at       REAL NOT NULL,
        expires_at       REAL NOT NULL,
        decided_at       REAL,
        executed_at      REAL
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
        request_id      TEXT NOT NULL REFERENCES approvals (id) ON DELETE CASCADE,
        approver        TEXT NOT NULL,
        approver_groups TEXT NOT NULL,
        decision        TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
        reason          TEXT,
        at              REAL NOT NULL,
        UNIQUE (request_id, approver, decision)
    )
    """,
)

#: version → the statements that lead to it from the previous one (`sqlite_db.migrate`).
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: _SCHEMA_V1}

_OPEN = "('pending', 'approved')"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Row(Protocol):
    """A result row by column name: `sqlite3.Row` and `asyncpg.Record` both are."""

    def __getitem__(self, key: str, /) -> Any: ...


def json_column(value: Any) -> Any:
    """A JSON column's value: SQLite (and asyncpg's jsonb without a codec) return the text,
    a value nested in a decoded `jsonb_agg` is already decoded."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def decision_from_row(row: Row) -> ApprovalDecision:
    """An `approval_decisions` row (or the same keys in a JSON object) as a decision."""
    return ApprovalDecision(
        approver=row["approver"],
        approver_groups=frozenset(json_column(row["approver_groups"])),
        decision=row["decision"],
        reason=row["reason"],
        at=float(row["at"]),
    )


def approval_from_row(row: Row, decisions: Iterable[ApprovalDecision]) -> ApprovalRequest:
    """An `approvals` row (SQLite or PostgreSQL) with its decisions, oldest first."""
    return ApprovalRequest(
        id=row["id"],
        status=Status(row["status"]),
        principal=Principal(
            subject=row["subject"],
            groups=frozenset(json_column(row["groups"])),
            client_id=row["client_id"],
        ),
        target=row["target"],
        tool=row["tool"],
        arguments_digest=row["arguments_digest"],
        policy_version=row["policy_version"],
        approvers=tuple(json_column(row["approvers"])),
        quorum=row["quorum"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        sql=row["sql"],
        reasons=tuple(json_column(row["reasons"])),
        justification=row["justification"],
        estimated_rows=row["estimated_rows"],
        decisions=tuple(decisions),
        decided_at=row["decided_at"],
        executed_at=row["executed_at"],
    )


class SqliteApprovalStore(ApprovalStore):
    """`ApprovalStore` in a SQLite file (created with its directory if missing)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    # -- plumbing ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            return
        thread = ThreadPoolExecutor(1, thread_name_prefix="mcp-gate-approvals-sqlite")
        try:
            self._conn = await asyncio.wrap_future(thread.submit(self._connect))
        except BaseException:
            thread.shutdown(wait=False)
            raise
        self._thread = thread

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        thread, self._thread = self._thread, None
        if conn is not None and thread is not None:
            # Queued behind whatever is still running on the connection, even work whose
            # caller was cancelled: the connection is only ever touched by this one thread.
            closing = thread.submit(conn.close)
            thread.shutdown(wait=False)
            await asyncio.wrap_future(closing)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite_db.connect(self.path, busy_timeout=self.busy_timeout, error=StoreError)
        try:
            sqlite_db.migrate(conn, _COMPONENT, _MIGRATIONS, path=self.path, error=StoreError)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn, thread = self._require()
        return await asyncio.wrap_future(thread.submit(sqlite_db.transaction, conn, fn))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn, thread = self._require()
        return await asyncio.wrap_future(thread.submit(self._snapshot, conn, fn))

    @staticmethod
    def _snapshot(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` in a read transaction: a request and its decisions from one snapshot."""
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    def _require(self) -> tuple[sqlite3.Connection, ThreadPoolExecutor]:
        if self._conn is None or self._thread is None:
            raise StoreError("the approval store is not open")
        return self._conn, self._thread

    # -- loading ----------------------------------------------------------------------------

    @staticmethod
    def _load(conn: sqlite3.Connection, rows: Sequence[sqlite3.Row]) -> list[ApprovalRequest]:
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        decisions: dict[str, list[ApprovalDecision]] = {i: [] for i in ids}
        marks = ",".join("?" * len(ids))
        for d in conn.execute(
            f"SELECT * FROM approval_decisions WHERE request_id IN ({marks}) ORDER BY at, rowid",
            ids,
        ):
            decisions[d["request_id"]].append(decision_from_row(d))
        return [approval_from_row(row, decisions[row["id"]]) for row in rows]

    @classmethod
    def _load_ids(cls, conn: sqlite3.Connection, ids: Sequence[str]) -> list[ApprovalRequest]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = conn.execute(f"SELECT * FROM approvals WHERE id IN ({marks})", list(ids))
        by_id = {a.id: a for a in cls._load(conn, rows.fetchall())}
        return [by_id[i] for i in ids if i in by_id]

    @classmethod
    def _load_one(cls, conn: sqlite3.Connection, approval_id: str) -> ApprovalRequest | None:
        found = cls._load_ids(conn, [approval_id])
        return found[0] if found else None

    @staticmethod
    def _expire_due(conn: sqlite3.Connection, now: float) -> list[str]:
        rows = conn.execute(
            "UPDATE approvals SET status = 'expired', decided_at = COALESCE(decided_at, "
            f"expires_at) WHERE status IN {_OPEN} AND expires_at <= ? RETURNING id",
            (now,),
        ).fetchall()
        return [row[0] for row in rows]

    # -- the interface ----------------------------------------------------------------------

    async def create(self, approval: ApprovalRequest, now: float) -> CreateResult:
        if approval.status != Status.PENDING or approval.decisions:
            raise ValueError("a new approval request must be pending, without decisions")

        def tx(conn: sqlite3.Connection) -> CreateResult:
            expired = self._load_ids(conn, self._expire_due(conn, now))
            row = conn.execute(
                "SELECT id FROM approvals WHERE subject = ? AND target = ? AND tool = ? "
                "AND arguments_digest = ? AND policy_version = ? "
                f"AND status IN {_OPEN} LIMIT 1",
                (
                    approval.principal.subject,
                    approval.target,
                    approval.tool,
                    approval.arguments_digest,
                    approval.policy_version,
                ),
            ).fetchone()
            if row is not None:
                existing = self._load_one(conn, row[0])
                assert existing is not None
                return CreateResult(existing, False, tuple(expired))
            conn.execute(
                "INSERT INTO approvals (id, status, subject, groups, client_id, target, tool, "
                "arguments_digest, sql, policy_version, reasons, approvers, quorum, "
                "justification, estimated_rows, created_at, expires_at) "
                "VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
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
                ),
            )
            created = self._load_one(conn, approval.id)
            assert created is not None
            return CreateResult(created, True, tuple(expired))

        return await self._write(tx)

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        return await self._read(lambda conn: self._load_one(conn, approval_id))

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
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            params += [str(s) for s in statuses]
        if visible_to is not None:
            clause = "subject = ?"
            params.append(visible_to.subject)
            groups = sorted(visible_to.groups)
            if groups:
                clause += (
                    " OR EXISTS (SELECT 1 FROM json_each(approvals.approvers) AS g "
                    f"WHERE g.value IN ({','.join('?' * len(groups))}))"
                )
                params += groups
            where.append(f"({clause})")
        sql = "SELECT * FROM approvals"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        params.append(max(0, int(limit)))

        return await self._read(lambda conn: self._load(conn, conn.execute(sql, params).fetchall()))

    async def decide(self, approval_id: str, decision: ApprovalDecision) -> DecideResult:
        def tx(conn: sqlite3.Connection) -> DecideResult:
            row = conn.execute(
                "SELECT status, expires_at, quorum FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
            if row is None:
                return DecideResult(DecideOutcome.NOT_FOUND, None)
            if row["status"] != Status.PENDING:
                return DecideResult(DecideOutcome.NOT_PENDING, self._load_one(conn, approval_id))
            if row["expires_at"] <= decision.at:
                conn.execute(
                    "UPDATE approvals SET status = 'expired', decided_at = expires_at "
                    "WHERE id = ? AND status = 'pending'",
                    (approval_id,),
                )
                return DecideResult(DecideOutcome.EXPIRED, self._load_one(conn, approval_id))
            inserted = conn.execute(
                "INSERT INTO approval_decisions "
                "(request_id, approver, approver_groups, decision, reason, at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    approval_id,
                    decision.approver,
                    _dumps(sorted(decision.approver_groups)),
                    decision.decision,
                    decision.reason,
                    decision.at,
                ),
            ).rowcount
            if inserted == 0:
                return DecideResult(DecideOutcome.DUPLICATE, self._load_one(conn, approval_id))
            if decision.decision == "deny":
                final: Status | None = Status.DENIED
            else:
                approvals = conn.execute(
                    "SELECT COUNT(DISTINCT approver) FROM approval_decisions "
                    "WHERE request_id = ? AND decision = 'approve'",
                    (approval_id,),
                ).fetchone()[0]
                final = Status.APPROVED if approvals >= row["quorum"] else None
            if final is None:
                return DecideResult(DecideOutcome.RECORDED, self._load_one(conn, approval_id))
            moved = conn.execute(
                "UPDATE approvals SET status = ?, decided_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (str(final), decision.at, approval_id),
            ).rowcount
            if moved != 1:  # impossible under the write lock; refuse rather than guess
                raise StoreError(f"approval {approval_id} changed under a write lock")
            outcome = DecideOutcome.DENIED if final == Status.DENIED else DecideOutcome.APPROVED
            return DecideResult(outcome, self._load_one(conn, approval_id))

        return await self._write(tx)

    async def _move(self, approval_id: str, sql: str, params: tuple[Any, ...]):
        def tx(conn: sqlite3.Connection) -> ApprovalRequest | None:
            if conn.execute(sql, params).rowcount != 1:
                return None
            return self._load_one(conn, approval_id)

        return await self._write(tx)

    async def withdraw(self, approval_id: str, subject: str, at: float) -> ApprovalRequest | None:
        return await self._move(
            approval_id,
            "UPDATE approvals SET status = 'withdrawn', decided_at = ? "
            "WHERE id = ? AND subject = ? AND status = 'pending' AND expires_at > ?",
            (at, approval_id, subject, at),
        )

    async def mark_executed(self, approval_id: str, at: float) -> ApprovalRequest | None:
        return await self._move(
            approval_id,
            "UPDATE approvals SET status = 'executed', executed_at = ? "
            "WHERE id = ? AND status = 'approved' AND expires_at > ?",
            (at, approval_id, at),
        )

    async def set_justification(
        self, approval_id: str, subject: str, text: str | None
    ) -> ApprovalRequest | None:
        return await self._move(
            approval_id,
            "UPDATE approvals SET justification = ? "
            "WHERE id = ? AND subject = ? AND status = 'pending'",
            (text, approval_id, subject),
        )

    async def expire_due(self, now: float) -> builtins.list[ApprovalRequest]:
        return await self._write(lambda conn: self._load_ids(conn, self._expire_due(conn, now)))

    async def next_expiry(self) -> float | None:
        def read(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                f"SELECT MIN(expires_at) FROM approvals WHERE status IN {_OPEN}"
            ).fetchone()
            return row[0]

        return await self._read(read)
