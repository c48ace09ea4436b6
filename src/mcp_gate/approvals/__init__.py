"""Approvals: calls held for a human decision (DESIGN §5).

`ApprovalService` is the state machine over a durable `ApprovalStore` (SQLite, or PostgreSQL
shared by several replicas with LISTEN/NOTIFY between them); `notify` fans events out to
waiters, SSE clients and an optional webhook. `mcp_gate.approvals.api` serves it to approvers
(`admin_routes`); it is imported by name, not from here, so that importing the package does not
load starlette.
"""

from __future__ import annotations

from typing import Any

from .model import (
    ApprovalDecision,
    ApprovalError,
    ApprovalEvent,
    ApprovalRequest,
    Conflict,
    Forbidden,
    NotFound,
    Status,
    arguments_digest,
)
from .notify import Notifier, Subscription, WebhookSender
from .service import ApprovalService
from .store import ApprovalStore, SqliteApprovalStore, StoreError


def __getattr__(name: str) -> Any:
    # The PostgreSQL store loads asyncpg: only when it is asked for (PEP 562), not for
    # `mcp-gate approvals list`, which only talks to a gateway.
    if name == "PostgresApprovalStore":
        from .pg_store import PostgresApprovalStore

        return PostgresApprovalStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApprovalDecision",
    "ApprovalError",
    "ApprovalEvent",
    "ApprovalRequest",
    "ApprovalService",
    "ApprovalStore",
    "Conflict",
    "Forbidden",
    "NotFound",
    "Notifier",
    "PostgresApprovalStore",
    "SqliteApprovalStore",
    "Status",
    "StoreError",
    "Subscription",
    "WebhookSender",
    "arguments_digest",
]
