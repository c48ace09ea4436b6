"""Audit (DESIGN §8): every session recorded in a tamper-evident chain, for replay and export."""

from __future__ import annotations

from .model import (
    GENESIS,
    AuditEvent,
    Checkpoint,
    Direction,
    EventKind,
    SessionInfo,
    StoredEvent,
    VerifyReport,
)
from .sqlite_store import SqliteAuditStore
from .store import AuditStore, AuditUnavailable

__all__ = [
    "GENESIS",
    "AuditEvent",
    "AuditStore",
    "AuditUnavailable",
    "Checkpoint",
    "Direction",
    "EventKind",
    "SessionInfo",
    "SqliteAuditStore",
    "StoredEvent",
    "VerifyReport",
]
