"""`SqliteAuditStore`: the audit chain in a SQLite file (by default the gateway's `gate.db`,
next to the approvals tables).

Threads: one writer thread owns the write connection and runs every change; a second thread
owns a read connection (WAL: reads see the last commit and never wait for the writer). The
event loop only queues work and awaits futures, so it never blocks on disk.

Group commit: `append` queues its events and waits. The writer takes everything queued (up
to `max_batch` events), chains it after the head it reads inside `BEGIN IMMEDIATE` (so
another process appending to the same file is serialised and the chain stays one gap-free
sequence), inserts the rows, updates the sessions index and the head row, commits once
(`synchronous=FULL`), then wakes every waiter. If the commit fails (disk full, I/O error,
read-only file), every waiter of that commit gets `AuditUnavailable`; nothing is dropped in
silence, and the next commit tries again. After `close`, `append` raises `AuditUnavailable`.

A file deleted or replaced under a running gateway is refused too: in WAL mode SQLite goes on
committing into the unlinked inode, where nobody can read the record and the next start loses
it. The writer remembers the file's (device, inode) and checks it before every commit.

Schema (component `audit` in `mcp_gate_schema`, version 1):

    audit_events(seq PK, prev_hash, hash, session_id, kind, at, direction, method,
                 request_id, tool, decision, approval_id, duration_ms, data JSON text)
        INDEX (session_id, seq), INDEX (at)
    audit_head(id = 1, seq, hash)           -- the chain head; survives pruning
    audit_sessions(id PK, subject, groups JSON, client_id, transport, era, client_name,
                   client_version, started_at, ended_at, events, calls, denied)
        INDEX (started_at), INDEX (subject, started_at)
    audit_checkpoints(seq PK, head_hash, at, key_id, signature)
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mcp_gate import sqlite_db

from .model import GENESIS, AuditEvent, Checkpoint, StoredEvent
from .rows import EVENT_COLUMNS, INDEX_COLUMNS, SESSION_COLUMNS, chain, event_index, serialised
from .store import AuditStore, AuditUnavailable, Row

T = TypeVar("T")

SCHEMA_VERSION = 1
COMPONENT = "audit"

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE audit_events (
            seq         INTEGER PRIMARY KEY,
            prev_hash   TEXT NOT NULL,
            hash        TEXT NOT NULL,
            session_id  TEXT NOT NULL,
            kind        TEXT NOT NULL,
            at          REAL NOT NULL,
            direction   TEXT,
            method      TEXT,
            request_id  TEXT,
            tool        TEXT,
            decision    TEXT,
            approval_id TEXT,
            duration_ms REAL,
            data        TEXT NOT NULL
        )
        """,
        "CREATE INDEX audit_events_session ON audit_events (session_id, seq)",
        "CREATE INDEX audit_events_at ON audit_events (at)",
        """
        CREATE TABLE audit_head (
            id   INTEGER PRIMARY KEY CHECK (id = 1),
            seq  INTEGER NOT NULL,
            hash TEXT NOT NULL
        )
        """,
        f"INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS}')",
        """
        CREATE TABLE audit_sessions (
            id             TEXT PRIMARY KEY,
            subject        TEXT NOT NULL,
            groups         TEXT NOT NULL,
            client_id      TEXT,
            transport      TEXT NOT NULL,
            era            TEXT,
            client_name    TEXT,
            client_version TEXT,
            started_at     REAL NOT NULL,
            ended_at       REAL,
            events         INTEGER NOT NULL DEFAULT 0,
            calls          INTEGER NOT NULL DEFAULT 0,
            denied         INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX audit_sessions_started ON audit_sessions (started_at)",
        "CREATE INDEX audit_sessions_subject ON audit_sessions (subject, started_at)",
        """
        CREATE TABLE audit_checkpoints (
            seq       INTEGER PRIMARY KEY,
            head_hash TEXT NOT NULL,
            at        REAL NOT NULL,
            key_id    TEXT NOT NULL,
            signature TEXT NOT NULL
        )
        """,
    ),
}

# One group commit is one INSERT into this view (a TEMP view and trigger of the writer's
# connection: no schema change): SQLite chains the rows in, updates the sessions index and the
# head in one statement, one transaction, one fsync, all in C. The writer thread so takes the
# GIL back once per commit instead of once per row and statement; each time it did, the event
# loop's thread lost it mid-request (measured: that hand-off, not the disk, was most of what
# recording cost the gateway). The trigger refuses a row that does not continue the head (the
# writer's cached head is stale: another process appended), and the statement rolls back whole.
_APPEND_COLUMNS = (*EVENT_COLUMNS, *INDEX_COLUMNS)
_HEAD_MOVED = "mcp-gate: the chain head moved"
_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"
_APPEND_SETUP = (
    "CREATE TEMP VIEW audit_append AS SELECT " + ", ".join(f"NULL AS {c}" for c in _APPEND_COLUMNS),
    f"""
    CREATE TEMP TRIGGER audit_append_row INSTEAD OF INSERT ON audit_append BEGIN
        SELECT RAISE(ABORT, '{_HEAD_MOVED}') WHERE NOT EXISTS (
            SELECT 1 FROM audit_head WHERE id = 1 AND seq = NEW.seq - 1 AND hash = NEW.prev_hash
        );
        INSERT INTO audit_events ({", ".join(EVENT_COLUMNS)})
            VALUES ({", ".join(f"NEW.{c}" for c in EVENT_COLUMNS)});
        INSERT INTO audit_sessions ({", ".join(SESSION_COLUMNS)})
            SELECT NEW.session_id, {", ".join(f"NEW.start_{c}" for c in SESSION_COLUMNS[1:-1])},
                NEW.at
            WHERE NEW.start_subject IS NOT NULL
            ON CONFLICT (id) DO NOTHING;
        UPDATE audit_sessions SET events = events + 1, calls = calls + NEW.calls,
            denied = denied + NEW.denied, ended_at = COALESCE(NEW.ended_at, ended_at)
            WHERE id = NEW.session_id;
        UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
    END
    """,
)
# Rows per INSERT: SQLite binds at most 32,766 parameters per statement.
_APPEND_ROWS = 1000
_APPEND_ROW = "(" + ", ".join("?" * len(_APPEND_COLUMNS)) + ")"


@functools.lru_cache(maxsize=64)
def _append_sql(rows: int) -> str:
    return "INSERT INTO temp.audit_append VALUES " + ", ".join([_APPEND_ROW] * rows)


def _chained(
    head: tuple[int, str], batches: list[list[tuple[AuditEvent, str]]]
) -> tuple[list[list[StoredEvent]], list[tuple], tuple[int, str]]:
    """`rows.chain` with each row's sessions-index columns: the `_APPEND_COLUMNS` rows."""
    results, rows, new_head = chain(head, batches)
    events = (stored.event for batch in results for stored in batch)
    params = [(*row, *event_index(event)) for row, event in zip(rows, events, strict=True)]
    return results, params, new_head


@dataclass
class _Append:
    items: list[tuple[AuditEvent, str]]
    future: asyncio.Future[list[StoredEvent]]
    loop: asyncio.AbstractEventLoop


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future[Any] = field(default_factory=Future)


_STOP = object()


def _resolve(future: Future[T], result: T | None = None, error: BaseException | None = None):
    # A waiter that was cancelled has its future cancelled already: nothing to wake.
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the waiters' loop: wake each (a cancelled waiter has nothing to wake)."""
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _wake(group: Sequence[_Append], results: Sequence[Any] | None, error: BaseException | None):
    """Wake a commit's waiters with one call into each event loop (not one per waiter)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
    for i, item in enumerate(group):
        outcome = (item.future, None if results is None else results[i], error)
        by_loop.setdefault(item.loop, []).append(outcome)
    for loop, outcomes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, outcomes)


class SqliteAuditStore(AuditStore):
    """`AuditStore` in a SQLite file (created with its folder if missing)."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 10.0,
        max_batch: int = 2000,
        max_page_count: int | None = None,
    ) -> None:
        """`max_page_count` caps the file's size in pages (SQLite's pragma): reaching it
        makes appends fail closed, as a full disk does."""
        self.path = Path(path)
        self.max_page_count = max_page_count
        self.busy_timeout = busy_timeout
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._closed = False
        self._lock = threading.Lock()  # orders `close` against `append`'s enqueue
        self._identity: tuple[int, int] | None = None  # the writer's file: (st_dev, st_ino)
        self._head: tuple[int, str] | None = None  # the writer's last known (seq, hash)

    def __repr__(self) -> str:
        return f"<SqliteAuditStore {self.path}>"

    def _unavailable(self, exc: BaseException) -> AuditUnavailable:
        return AuditUnavailable(f"the audit store {self.path} cannot record: {exc}")

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        if self._closed:
            raise AuditUnavailable("the audit store is closed")
        ready: Future[None] = Future()
        writer = threading.Thread(
            target=self._run, args=(ready,), name="mcp-gate-audit-writer", daemon=True
        )
        writer.start()
        try:
            await asyncio.wrap_future(ready)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        reader = ThreadPoolExecutor(1, thread_name_prefix="mcp-gate-audit-reader")
        try:
            self._read_conn = await asyncio.wrap_future(reader.submit(self._connect))
        except sqlite3.Error as exc:
            reader.shutdown(wait=False)
            self._queue.put(_STOP)
            raise self._unavailable(exc) from None
        self._writer, self._reader = writer, reader

    async def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        writer, self._writer = self._writer, None
        reader, self._reader = self._reader, None
        conn, self._read_conn = self._read_conn, None
        if writer is not None:
            # The writer commits everything queued before the stop, then exits.
            await asyncio.to_thread(writer.join)
        if reader is not None and conn is not None:
            closing = reader.submit(conn.close)
            reader.shutdown(wait=False)
            await asyncio.wrap_future(closing)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite_db.connect(self.path, busy_timeout=self.busy_timeout, error=AuditUnavailable)
        try:
            if self.max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count = {int(self.max_page_count)}")
            sqlite_db.migrate(conn, COMPONENT, _MIGRATIONS, path=self.path, error=AuditUnavailable)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- the writer thread ------------------------------------------------------------------

    def _run(self, ready: Future[None]) -> None:
        try:
            conn = self._connect()
            try:
                for statement in _APPEND_SETUP:
                    conn.execute(statement)
                self._identity = self._file_identity()
            except BaseException:
                conn.close()
                raise
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            self._loop(conn)
        finally:
            conn.close()

    def _loop(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            count = len(items[0].items) if isinstance(items[0], _Append) else 1
            while count < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                count += len(item.items) if isinstance(item, _Append) else 1
            group: list[_Append] = []
            for item in items:
                if stopping:
                    self._fail(item, AuditUnavailable("the audit store is closed"))
                elif isinstance(item, _Append):
                    group.append(item)
                    continue
                else:
                    self._commit(conn, group)
                    group = []
                    if item is _STOP:
                        stopping = True
                    else:
                        self._job(conn, item)
            self._commit(conn, group)
        # Anything queued after the stop (an append racing `close`) is refused, not lost.
        while True:
            try:
                self._fail(self._queue.get_nowait(), AuditUnavailable("the audit store is closed"))
            except queue.Empty:
                return

    def _file_identity(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def _check_file(self) -> None:
        """Raise `sqlite3.OperationalError` unless the writer's file is still at `path`."""
        try:
            same = self._file_identity() == self._identity
        except OSError as exc:
            raise sqlite3.OperationalError(f"the file is gone ({exc.strerror})") from None
        if not same:
            raise sqlite3.OperationalError("the file was replaced since the gateway opened it")

    @staticmethod
    def _fail(item: Any, error: BaseException) -> None:
        if isinstance(item, _Append):
            _wake([item], None, error)
        elif isinstance(item, _Job):
            _resolve(item.future, error=error)

    def _commit(self, conn: sqlite3.Connection, group: list[_Append]) -> None:
        if not group:
            return
        try:
            self._check_file()
            results = self._append(conn, [a.items for a in group])
        except sqlite3.Error as exc:
            _wake(group, None, self._unavailable(exc))
            return
        except Exception as exc:  # a bug must not kill the writer and strand every waiter
            _wake(group, None, AuditUnavailable(f"the audit store {self.path} failed: {exc!r}"))
            return
        _wake(group, results, None)

    def _append(
        self, conn: sqlite3.Connection, batches: list[list[tuple[AuditEvent, str]]]
    ) -> list[list[StoredEvent]]:
        """Chain `batches` after the head and commit them: in one statement after the cached
        head (`_APPEND_SETUP`), or, when that head is stale (another process appended) or the
        group needs several statements, inside `BEGIN IMMEDIATE` after the head read there."""
        try:
            if self._head is not None and sum(map(len, batches)) <= _APPEND_ROWS:
                results, params, head = _chained(self._head, batches)
                try:
                    # One statement outside a transaction is its own, locked for writing
                    # before it reads (as BEGIN IMMEDIATE would).
                    conn.execute(_append_sql(len(params)), [v for p in params for v in p])
                except sqlite3.IntegrityError as exc:
                    if _HEAD_MOVED not in str(exc):
                        raise
                else:
                    self._head = head
                    return results

            def locked(c: sqlite3.Connection) -> tuple[list[list[StoredEvent]], tuple[int, str]]:
                results, params, head = _chained(c.execute(_HEAD).fetchone(), batches)
                for at in range(0, len(params), _APPEND_ROWS):
                    chunk = params[at : at + _APPEND_ROWS]
                    c.execute(_append_sql(len(chunk)), [v for p in chunk for v in p])
                return results, head

            results, self._head = sqlite_db.transaction(conn, locked)
            return results
        except BaseException:
            self._head = None  # whatever landed, the next commit reads the head again
            raise

    def _job(self, conn: sqlite3.Connection, job: _Job) -> None:
        try:
            self._check_file()
            result = sqlite_db.transaction(conn, job.fn)
        except sqlite3.Error as exc:
            _resolve(job.future, error=self._unavailable(exc))
        except BaseException as exc:
            _resolve(job.future, error=exc)
        else:
            _resolve(job.future, result)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        job = _Job(fn)
        self._enqueue(job)
        return await asyncio.wrap_future(job.future)

    def _enqueue(self, item: _Append | _Job) -> None:
        with self._lock:
            if self._closed or self._writer is None:
                raise AuditUnavailable(
                    "the audit store is closed" if self._closed else "the audit store is not open"
                )
            self._queue.put(item)

    # -- reads ------------------------------------------------------------------------------

    @staticmethod
    def _param(n: int) -> str:
        return "?"

    async def _select(
        self, sql: str, params: Sequence[Any], convert: Callable[[Row], T]
    ) -> builtins.list[T]:
        conn, reader = self._read_conn, self._reader
        if conn is None or reader is None:
            raise AuditUnavailable("the audit store is closed")

        def snapshot() -> builtins.list[T]:
            # On the reader thread, rows converted too: the event loop only awaits.
            conn.execute("BEGIN")
            try:
                return [convert(r) for r in conn.execute(sql, params).fetchall()]
            finally:
                conn.execute("COMMIT")

        try:
            return await asyncio.wrap_future(reader.submit(snapshot))
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"the audit store {self.path} cannot be read: {exc}") from None
        except RuntimeError as exc:  # the reader was shut down by a concurrent close
            raise AuditUnavailable("the audit store is closed") from exc

    # -- the interface ----------------------------------------------------------------------

    async def append(
        self, events: Sequence[AuditEvent], data: Sequence[str] | None = None
    ) -> builtins.list[StoredEvent]:
        if not events:
            return []
        loop = asyncio.get_running_loop()
        item = _Append(serialised(events, data), loop.create_future(), loop)
        self._enqueue(item)
        return await item.future

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO audit_checkpoints (seq, head_hash, at, key_id, signature) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (seq) DO NOTHING",
                (
                    checkpoint.seq,
                    checkpoint.head_hash,
                    checkpoint.at,
                    checkpoint.key_id,
                    checkpoint.signature,
                ),
            )

        await self._write(tx)

    async def prune(self, upto_seq: int) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            deleted = conn.execute("DELETE FROM audit_events WHERE seq <= ?", (upto_seq,)).rowcount
            conn.execute(
                "DELETE FROM audit_sessions WHERE NOT EXISTS "
                "(SELECT 1 FROM audit_events e WHERE e.session_id = audit_sessions.id)"
            )
            return deleted

        return await self._write(tx)
