"""The audit store interface (DESIGN §8). Implementations: SQLite (embedded default) and
PostgreSQL (shared by several replicas).

One store-wide chain (see `model`): `append` assigns `seq` and the hashes under the store's
write lock (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a lock on the chain-head row), so several
processes appending to one store still build one gap-free chain.

Durability: `append` returns only once its events are committed. Concurrent callers share a
commit (group commit): a writer takes everything queued, writes it in one transaction, and
wakes every caller whose events it held. When the store cannot commit (disk full, database
gone, closed), `append` raises `AuditUnavailable`; callers fail closed on it.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Sequence

from .model import AuditEvent, Checkpoint, SessionInfo, StoredEvent


class AuditUnavailable(Exception):
    """The audit store cannot record right now. The message is safe to show (no secrets)."""


class AuditStore(ABC):
    """Durable, chained audit events. All methods are safe to call concurrently."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema (idempotent)."""

    @abstractmethod
    async def close(self) -> None:
        """Flush what is queued, then release the connection (idempotent)."""

    @abstractmethod
    async def append(self, events: Sequence[AuditEvent]) -> builtins.list[StoredEvent]:
        """Chain and commit `events` (in order, contiguous); return them as stored once durable.
        `session_start` / `session_end` events also create / close the session's index row."""

    @abstractmethod
    async def head(self) -> tuple[int, str]:
        """(seq, hash) of the last event; (0, GENESIS) when the chain is empty."""

    @abstractmethod
    async def events(
        self,
        *,
        session_id: str | None = None,
        since: float | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> builtins.list[StoredEvent]:
        """Events in chain order (ascending seq), filtered by session, time and position."""

    @abstractmethod
    async def sessions(
        self,
        *,
        principal: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> builtins.list[SessionInfo]:
        """Sessions, newest first; `principal` matches the subject, `since` the start time."""

    @abstractmethod
    async def session(self, session_id: str) -> SessionInfo | None:
        """One session, or None."""

    @abstractmethod
    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep a signed checkpoint (they survive pruning)."""

    @abstractmethod
    async def checkpoints(self) -> builtins.list[Checkpoint]:
        """Every kept checkpoint, ascending seq."""

    async def last_checkpoint(self) -> Checkpoint | None:
        """The kept checkpoint with the highest seq, or None (stores may do this cheaper)."""
        kept = await self.checkpoints()
        return kept[-1] if kept else None

    @abstractmethod
    async def prune(self, upto_seq: int) -> int:
        """Delete events with seq <= `upto_seq` (and sessions left without events); the number
        deleted. Callers prune only up to a checkpoint they just added, so the remaining chain
        stays verifiable from that checkpoint."""
