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
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

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
# What one event adds to its session's index row (`event_index`): the new row's columns for a
# session_start (else NULL), then the counts and end it adds.
INDEX_COLUMNS = (
    *(f"start_{c}" for c in SESSION_COLUMNS[1:-1]),
    "calls",
    "denied",
    "ended_at",
)
_NO_START = (None,) * (len(SESSION_COLUMNS) - 2)


# orjson's sorted output is the stdlib canonical form (`json.dumps(sort_keys=True,
# separators=(",", ":"), ensure_ascii=False)`) byte for byte, at a tenth of the cost, except
# for floats below 1e-4 (orjson writes `0.00001` and `1e-6`, the stdlib `1e-05` and `1e-06`),
# which this finds; ints beyond 64 bits, non-string keys, datetimes and dataclasses make orjson
# raise. Either way the stdlib writes those (a test holds the two forms equal).
_ORJSON_FLOAT = re.compile(rb"0\.0000|\de-\d")
_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def canonical_json(value: Any) -> str:
    """`value` as compact JSON with sorted keys, as `AuditEvent.canonical` writes it. A float
    that is not finite is written as null (as orjson and JSON-mode pydantic do: a message
    carrying one is still recorded); raises ValueError for anything that is not plain JSON."""
    try:
        blob = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:
        blob = None
    # Substring tests first: the regex alone scans a response slower than orjson writes it.
    if blob is not None and (
        (b"0.0000" not in blob and b"e-" not in blob) or _ORJSON_FLOAT.search(blob) is None
    ):
        return blob.decode()
    try:
        return json.dumps(
            _finite(value),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not plain JSON: {exc}") from None


def _finite(value: Any) -> Any:
    # Only on the rare stdlib path: what orjson writes as null.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def data_json(event: AuditEvent) -> str:
    """The event's data as stored (`canonical_json`, so a re-read hashes the same); raises
    ValueError for data that is not plain JSON, before anything is queued."""
    if not isinstance(event.data, dict):
        raise ValueError("AuditEvent.data must be a dict")
    try:
        return canonical_json(event.data)
    except ValueError as exc:
        raise ValueError(f"AuditEvent.data is {exc}") from None


def serialised(
    events: Sequence[AuditEvent], data: Sequence[str] | None
) -> list[tuple[AuditEvent, str]]:
    """Each event with its `data_json`: `data` when given (one text per event), else made."""
    if data is None:
        return [(event, data_json(event)) for event in events]
    if len(data) != len(events):
        raise ValueError(f"{len(events)} events but {len(data)} data texts")
    return list(zip(events, data, strict=True))


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
        data_text=row["data"] if isinstance(row["data"], str) else None,
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


def event_index(event: AuditEvent) -> tuple:
    """What one event adds to its session's index row (module docstring rules), as
    `INDEX_COLUMNS`: for a `session_start`, the new row's columns after its id (before its
    `started_at`, which is the event's `at`), else None; then calls, denied and ended_at.
    Chain-wide events (checkpoints, session id "") add nothing."""
    kind = event.kind
    if kind == EventKind.SESSION_START and event.session_id:
        start = session_start_row(event)[1:-1]
    else:
        start = _NO_START
    calls = 1 if kind == EventKind.DECISION else 0
    denied = (
        1 if kind in (EventKind.DECISION, EventKind.APPROVAL) and event.decision == "deny" else 0
    )
    ended_at = float(event.at) if kind == EventKind.SESSION_END else None
    return (*start, calls, denied, ended_at)


def index_changes(events: Iterable[AuditEvent]) -> IndexChanges:
    """The sessions-index changes for `events`, summed per session (`event_index`)."""
    starts: list[tuple] = []
    deltas: dict[str, SessionDelta] = {}
    for event in events:
        if not event.session_id:
            continue  # chain-wide events (checkpoints) belong to no session
        *start, calls, denied, ended_at = event_index(event)
        if start[0] is not None:
            starts.append((event.session_id, *start, float(event.at)))
        delta = deltas.get(event.session_id)
        if delta is None:
            delta = deltas[event.session_id] = SessionDelta()
        delta.events += 1
        delta.calls += calls
        delta.denied += denied
        if ended_at is not None:
            delta.ended_at = ended_at
    return IndexChanges(starts, deltas)


def chain_digest(event: AuditEvent, seq: int, prev_hash: str, data: str) -> str:
    """The chain hash of `event` at `seq` after `prev_hash`, over `data`, the event's data
    exactly as stored: `AuditEvent.chain_hash` without serialising the data again (equal to
    it for `data_json(event)`, as a test holds). Verification hashes the stored text this way,
    so an edit that re-serialises the same (a space, a reordered key) is caught too."""
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
        "data": orjson.Fragment(data),
    }
    try:
        text = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # text orjson refuses (a lone surrogate, written by hand): the stdlib's
        doc["data"] = None
        spliced = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        text = spliced.replace('"data":null', '"data":' + data, 1).encode("utf-8", "surrogatepass")
    return hashlib.sha256(text).hexdigest()


def stored_digest(stored: StoredEvent, seq: int | None = None) -> str:
    """The chain hash `stored` should carry at `seq` (its own by default): over its data text
    as read from the store, or over its data re-serialised when the text is not at hand."""
    at = stored.seq if seq is None else seq
    if stored.data_text is None:
        return stored.event.chain_hash(at, stored.prev_hash)
    return chain_digest(stored.event, at, stored.prev_hash, stored.data_text)


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
            stored.append(StoredEvent(seq, prev, digest, event, data))
            prev = digest
        results.append(stored)
    return results, rows, (seq, prev)
