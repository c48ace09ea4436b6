"""The audit store interface (DESIGN §8). Implementations: SQLite (embedded default) and
PostgreSQL (shared by several replicas).

One store-wide chain (see `model`): `append` assigns `seq` and the hashes under the store's
write lock (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a lock on the chain-head row), so several
processes appending to one store still build one gap-free chain.

Durability: `append` returns only once its events are committed. Concurrent callers share a
commit (group commit): a writer takes everything queued, writes it in one transaction, and
wakes every caller whose events it held. When the store cannot commit (disk full, database
gone, closed), `append` raises `AuditUnavailable`; callers fail closed on it.

Reads (sessions, a session's events, export and verify paging, checkpoints) are one set of
queries here, over two primitives each backend gives (`_param`, `_select`): a backend keeps
only its SQL dialect and its connection handling.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .model import GENESIS, AuditEvent, Checkpoint, SessionInfo, StoredEvent
from .rows import EVENT_COLUMNS, checkpoint_of, session_info, stored_event

T = TypeVar("T")
Row = Mapping[str, Any]  # what `_select` hands to `convert`: sqlite3.Row or asyncpg.Record

_EVENT_LIST = ", ".join(EVENT_COLUMNS)


class AuditUnavailable(Exception):
    """The audit store cannot record right now. The message is safe to show (no secrets)."""


class _Params:
    """One statement's parameters: each call keeps a value and returns its placeholder."""

    def __init__(self, placeholder: Callable[[int], str]) -> None:
        self.values: list[Any] = []
        self._placeholder = placeholder

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return self._placeholder(len(self.values))


class AuditStore(ABC):
    """Durable, chained audit events. All methods are safe to call concurrently.

    A backend writes its own way (the group commit) but reads through the queries here: it
    gives only its placeholder style (`_param`) and a way to run a SELECT (`_select`)."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema (idempotent)."""

    @abstractmethod
    async def close(self) -> None:
        """Flush what is queued, then release the connection (idempotent)."""

    @abstractmethod
    async def append(
        self, events: Sequence[AuditEvent], data: Sequence[str] | None = None
    ) -> builtins.list[StoredEvent]:
        """Chain and commit `events` (in order, contiguous); return them as stored once durable.
        `session_start` / `session_end` events also create / close the session's index row.
        `data`: each event's `rows.data_json`, when the caller has serialised it already."""

    # -- reads: one path for every backend, over `_param` and `_select` ---------------------

    @staticmethod
    @abstractmethod
    def _param(n: int) -> str:
        """The placeholder of the `n`th (from 1) parameter in the backend's SQL."""

    @abstractmethod
    async def _select(
        self, sql: str, params: Sequence[Any], convert: Callable[[Row], T]
    ) -> builtins.list[T]:
        """Run one SELECT (a consistent snapshot) and `convert` each row, a mapping by column
        name; a database error is `AuditUnavailable` naming the store, never its password."""

    async def head(self) -> tuple[int, str]:
        """(seq, hash) of the last event; (0, GENESIS) when the chain is empty."""
        found = await self._select(
            "SELECT seq, hash FROM audit_head WHERE id = 1", (), lambda r: (r["seq"], r["hash"])
        )
        return found[0] if found else (0, GENESIS)

    async def events(
        self,
        *,
        session_id: str | None = None,
        since: float | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> builtins.list[StoredEvent]:
        """Events in chain order (ascending seq), filtered by session, time and position."""
        p = _Params(self._param)
        where = [f"seq > {p(int(after_seq))}"]
        if session_id is not None:
            where.append(f"session_id = {p(session_id)}")
        if since is not None:
            where.append(f"at >= {p(float(since))}")
        sql = f"SELECT {_EVENT_LIST} FROM audit_events WHERE {' AND '.join(where)} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {p(max(0, int(limit)))}"
        return await self._select(sql, p.values, stored_event)

    async def sessions(
        self,
        *,
        principal: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> builtins.list[SessionInfo]:
        """Sessions, newest first; `principal` matches the subject, `since` the start time."""
        p = _Params(self._param)
        where = []
        if principal is not None:
            where.append(f"subject = {p(principal)}")
        if since is not None:
            where.append(f"started_at >= {p(float(since))}")
        sql = "SELECT * FROM audit_sessions"
        if where:
            sql += f" WHERE {' AND '.join(where)}"
        sql += f" ORDER BY started_at DESC, id LIMIT {p(max(0, int(limit)))}"
        return await self._select(sql, p.values, session_info)

    async def sessions_starting(self, prefix: str, limit: int = 2) -> builtins.list[SessionInfo]:
        """Sessions whose id starts with `prefix` (at most `limit`, by id): what a shortened
        id, as `sessions list` shows it, stands for."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        p = _Params(self._param)
        sql = (
            f"SELECT * FROM audit_sessions WHERE id LIKE {p(escaped + '%')} ESCAPE '\\'"
            f" ORDER BY id LIMIT {p(max(0, int(limit)))}"
        )
        return await self._select(sql, p.values, session_info)

    async def session(self, session_id: str) -> SessionInfo | None:
        """One session, or None."""
        sql = f"SELECT * FROM audit_sessions WHERE id = {self._param(1)}"
        found = await self._select(sql, (session_id,), session_info)
        return found[0] if found else None

    @abstractmethod
    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep a signed checkpoint (they survive pruning)."""

    async def checkpoints(self) -> builtins.list[Checkpoint]:
        """Every kept checkpoint, ascending seq."""
        return await self._select("SELECT * FROM audit_checkpoints ORDER BY seq", (), checkpoint_of)

    async def last_checkpoint(self) -> Checkpoint | None:
        """The kept checkpoint with the highest seq, or None."""
        found = await self._select(
            "SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1", (), checkpoint_of
        )
        return found[0] if found else None

    @abstractmethod
    async def prune(self, upto_seq: int) -> int:
        """Delete events with seq <= `upto_seq` (and sessions left without events); the number
        deleted. Callers prune only up to a checkpoint they just added, so the remaining chain
        stays verifiable from that checkpoint."""
