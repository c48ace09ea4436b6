"""What both audit stores share: an event's stored columns, and the sessions index it feeds.

Session index rules (same in every store):
- a `session_start` event creates the session's row from its data: `principal` (an object
  with `subject`, `groups`, `client_id`, or just the subject as text), `transport`, `era`,
  `client_info` (`name`, `version`); a second `session_start` for the same id changes nothing;
- a `session_end` event sets `ended_at` (its `at`);
- every event of the session counts in `events`; a `decision` event counts in `calls`; a
  `decision` or `approval` event whose `decision` is `"deny"` counts in `denied` (the recorder
  marks an approval that ended denied, expired or withdrawn with `decision="deny"`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import AuditEvent, Checkpoint, Direction, EventKind, SessionInfo, StoredEvent

# The event columns in the order of the INSERT statements of both stores.
EVENT_COLUMNS = (
    "seq",
    "prev_hash",
    "hash",
    "session_id",
    "kind",
    "at",
    "direction",
    "method",
    "request_id",
    "tool",
    "decision",
    "approval_id",
    "duration_ms",
    "data",
)
SESSION_COLUMNS = (
    "id",
    "subject",
    "groups",
    "client_id",
    "transport",
    "era",
    "client_name",
    "client_version",
    "started_at",
)


def data_json(event: AuditEvent) -> str:
    """The event's data as stored (sorted keys, so a re-read hashes the same); raises
    ValueError for data that is not plain JSON, before anything is queued."""
    if not isinstance(event.data, dict):
        raise ValueError("AuditEvent.data must be a dict")
    try:
        return json.dumps(
            event.data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"AuditEvent.data is not plain JSON: {exc}") from None


def event_row(seq: int, prev_hash: str, hash_: str, event: AuditEvent, data: str) -> tuple:
    """The stored columns (`EVENT_COLUMNS`) of one chained event."""
    return (
        seq,
        prev_hash,
        hash_,
        event.session_id,
        str(event.kind),
        float(event.at),
        None if event.direction is None else str(event.direction),
        event.method,
        event.request_id,
        event.tool,
        event.decision,
        event.approval_id,
        None if event.duration_ms is None else float(event.duration_ms),
        data,
    )


def stored_event(row: Mapping[str, Any]) -> StoredEvent:
    """A `StoredEvent` from a database row with the `EVENT_COLUMNS`."""
    direction = row["direction"]
    return StoredEvent(
        seq=row["seq"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
        event=AuditEvent(
            session_id=row["session_id"],
            kind=_kind(row["kind"]),
            at=row["at"],
            direction=None if direction is None else _direction(direction),
            method=row["method"],
            request_id=row["request_id"],
            tool=row["tool"],
            decision=row["decision"],
            approval_id=row["approval_id"],
            duration_ms=row["duration_ms"],
            data=_data(row["data"]),
        ),
    )


def _data(text: str) -> dict[str, Any]:
    # Text that is not a JSON object was written by hand: keep it visible (verify then
    # reports the row as edited) instead of failing the whole read.
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {"unreadable": str(text)}
    return value if isinstance(value, dict) else {"unreadable": str(text)}


def _kind(value: str) -> EventKind | str:
    # An unknown kind (edited by hand, or a newer writer) stays text: verify then reports
    # the row instead of the reader crashing.
    try:
        return EventKind(value)
    except ValueError:
        return value


def _direction(value: str) -> Direction | str:
    try:
        return Direction(value)
    except ValueError:
        return value


def session_info(row: Mapping[str, Any]) -> SessionInfo:
    """A `SessionInfo` from an `audit_sessions` row."""
    return SessionInfo(
        id=row["id"],
        subject=row["subject"],
        groups=tuple(json.loads(row["groups"])),
        client_id=row["client_id"],
        transport=row["transport"],
        era=row["era"],
        client_name=row["client_name"],
        client_version=row["client_version"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        events=row["events"],
        calls=row["calls"],
        denied=row["denied"],
    )


def checkpoint_of(row: Mapping[str, Any]) -> Checkpoint:
    """A `Checkpoint` from an `audit_checkpoints` row."""
    return Checkpoint(
        seq=row["seq"],
        head_hash=row["head_hash"],
        at=row["at"],
        key_id=row["key_id"],
        signature=row["signature"],
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def session_start_row(event: AuditEvent) -> tuple:
    """The `SESSION_COLUMNS` of the session a `session_start` event opens."""
    data = event.data
    principal = data.get("principal")
    if not isinstance(principal, dict):
        principal = {"subject": principal} if principal is not None else {}
    client = data.get("client_info")
    if not isinstance(client, dict):
        client = {}
    groups = principal.get("groups") or []
    if not isinstance(groups, list | tuple):
        groups = [groups]
    return (
        event.session_id,
        str(principal.get("subject") or data.get("subject") or "?"),
        json.dumps(sorted(str(g) for g in groups)),
        _text(principal.get("client_id")),
        str(data.get("transport") or "?"),
        _text(data.get("era")),
        _text(client.get("name")),
        _text(client.get("version")),
        float(event.at),
    )


@dataclass
class SessionDelta:
    """What one commit changes in one session's index row."""

    events: int = 0
    calls: int = 0
    denied: int = 0
    ended_at: float | None = None


@dataclass
class IndexChanges:
    """Everything a group commit changes in the sessions index."""

    starts: list[tuple]
    deltas: dict[str, SessionDelta]


def index_changes(events: Iterable[AuditEvent]) -> IndexChanges:
    """The sessions-index changes for `events` (module docstring rules)."""
    starts: list[tuple] = []
    deltas: dict[str, SessionDelta] = {}
    for event in events:
        if not event.session_id:
            continue  # chain-wide events (checkpoints) belong to no session
        if event.kind == EventKind.SESSION_START:
            starts.append(session_start_row(event))
        delta = deltas.get(event.session_id)
        if delta is None:
            delta = deltas[event.session_id] = SessionDelta()
        delta.events += 1
        if event.kind == EventKind.DECISION:
            delta.calls += 1
        if event.kind in (EventKind.DECISION, EventKind.APPROVAL) and event.decision == "deny":
            delta.denied += 1
        if event.kind == EventKind.SESSION_END:
            delta.ended_at = float(event.at)
    return IndexChanges(starts, deltas)


def chain_digest(event: AuditEvent, seq: int, prev_hash: str, data: str) -> str:
    """`event.chain_hash(seq, prev_hash)` without serialising `data` again: `data` is the
    event's `data_json`, spliced into the canonical form in place of the `data` key (the
    keys are sorted and every string is escaped, so `"data":null` occurs once, as the key;
    a test holds this equal to `AuditEvent.chain_hash`)."""
    doc = {
        "seq": seq,
        "prev": prev_hash,
        "session": event.session_id,
        "kind": str(event.kind),
        "at": repr(float(event.at)),
        "dir": None if event.direction is None else str(event.direction),
        "method": event.method,
        "id": event.request_id,
        "tool": event.tool,
        "decision": event.decision,
        "approval": event.approval_id,
        "ms": None if event.duration_ms is None else repr(float(event.duration_ms)),
        "data": None,
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.replace('"data":null', '"data":' + data, 1).encode()).hexdigest()


def chain(
    head: tuple[int, str], batches: Sequence[Sequence[tuple[AuditEvent, str]]]
) -> tuple[list[list[StoredEvent]], list[tuple], tuple[int, str]]:
    """Chain `batches` (each a caller's events with their `data_json`) after `head`:
    (the stored events per batch, their rows, the new head)."""
    seq, prev = head
    results: list[list[StoredEvent]] = []
    rows: list[tuple] = []
    for batch in batches:
        stored: list[StoredEvent] = []
        for event, data in batch:
            seq += 1
            digest = chain_digest(event, seq, prev, data)
            rows.append(event_row(seq, prev, digest, event, data))
            stored.append(StoredEvent(seq, prev, digest, event))
            prev = digest
        results.append(stored)
    return results, rows, (seq, prev)
