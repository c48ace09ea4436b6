"""Approvals: calls held for a human decision (DESIGN §5).

`ApprovalService` is the state machine over a durable `ApprovalStore` (SQLite, or PostgreSQL
shared by several replicas with LISTEN/NOTIFY between them); `notify` fans events out to
waiters, SSE clients and an optional webhook. `mcp_gate.approvals.api` serves it to approvers
(`admin_routes`); it is imported by name, not from here, so that importing the package does not
load starlette.
"""

from __future__ import annotations

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
from .pg_store import PostgresApprovalStore
from .service import ApprovalService
from .store import ApprovalStore, SqliteApprovalStore, StoreError

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
