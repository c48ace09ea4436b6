"""Audit values (DESIGN §8): sessions, the events of their transcripts, and the chain.

Everything the gateway records is an `AuditEvent` appended to one store-wide hash chain:
each stored event carries `seq` (1, 2, …, gap-free in the store), the `hash` of the previous
event (`prev_hash`, `GENESIS` for the first) and its own `hash` over its canonical form, so an
edited, deleted or reordered row breaks the chain at that row. Session metadata travels in the
chain too (a `session_start` event); the sessions listing is an index derived from it.

What is recorded is what the agent saw: payloads are masked and secret-redacted by the
recorder before they reach a store. Times are Unix timestamps (float seconds).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

GENESIS = "0" * 64


class EventKind(StrEnum):
    """What an event records."""

    SESSION_START = "session_start"  # data: principal, transport, era, client_info
    SESSION_END = "session_end"
    MESSAGE = "message"  # one JSON-RPC message in or out; data: the message (masked)
    DECISION = "decision"  # a tools/call's verdict, durable before the call runs
    APPROVAL = "approval"  # an approval request created / decided / expired / executed
    CHECKPOINT = "checkpoint"  # a signed statement of the chain head (also kept on its own)


class Direction(StrEnum):
    """Who sent a message: the client to the gateway, or the gateway to the client."""

    IN = "in"
    OUT = "out"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event as the recorder hands it to a store (not yet in the chain).

    `data` must be JSON-representable (dicts, lists, str, int, float, bool, None) and already
    masked and redacted. `request_id` is the JSON-RPC id as text (`"7"`, `"abc"`).
    """

    session_id: str
    kind: EventKind
    at: float
    direction: Direction | None = None
    method: str | None = None
    request_id: str | None = None
    tool: str | None = None
    decision: str | None = None  # allow | deny | review
    approval_id: str | None = None
    duration_ms: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def canonical(self, seq: int, prev_hash: str) -> bytes:
        """The bytes the chain hash covers: every field, the position and the previous hash."""
        doc = {
            "seq": seq,
            "prev": prev_hash,
            "session": self.session_id,
            "kind": str(self.kind),
            "at": repr(float(self.at)),
            "dir": None if self.direction is None else str(self.direction),
            "method": self.method,
            "id": self.request_id,
            "tool": self.tool,
            "decision": self.decision,
            "approval": self.approval_id,
            "ms": None if self.duration_ms is None else repr(float(self.duration_ms)),
            "data": self.data,
        }
        return json.dumps(
            doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()

    def chain_hash(self, seq: int, prev_hash: str) -> str:
        """sha256 hex of `canonical(seq, prev_hash)`."""
        return hashlib.sha256(self.canonical(seq, prev_hash)).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored: its place in the chain and its hashes; `data_text` is its data
    exactly as stored (what the hash covers), when it was read from or written to a store."""

    seq: int
    prev_hash: str
    hash: str
    event: AuditEvent
    data_text: str | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A recorded session, as listed (derived from its `session_start` / `session_end`)."""

    id: str
    subject: str
    groups: tuple[str, ...]
    client_id: str | None
    transport: str  # "http" | "stdio"
    era: str | None  # protocol version, e.g. "2025-11-25", "2026-07-28"
    client_name: str | None
    client_version: str | None
    started_at: float
    ended_at: float | None = None
    events: int = 0
    calls: int = 0  # tools/call decisions recorded
    denied: int = 0  # of which deny (or review not approved)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that the chain had `head_hash` at `seq` at time `at`."""

    seq: int
    head_hash: str
    at: float
    key_id: str
    signature: str  # base64url


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `verify` found: `ok`, how far it got, and the first broken link if any."""

    ok: bool
    events: int  # events checked
    checkpoints: int  # checkpoints whose signature and hash matched
    first_seq: int | None  # first seq checked (after a prune: the anchor checkpoint's seq + 1)
    last_seq: int | None
    broken_at: int | None = None  # seq of the first event that does not verify
    problem: str | None = None  # what is wrong there, in words
