"""Approval requests: the values, their JSON form (DESIGN §5), the argument digest, the errors.

Times are Unix timestamps (float seconds) in memory and in the store, ISO 8601 UTC with
milliseconds (`2026-03-01T12:00:00.123Z`) in JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from mcp_gate.calls import Principal


class Status(StrEnum):
    """Where a request is in its life (pending → approved | denied | expired | withdrawn;
    approved → executed)."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    EXECUTED = "executed"


#: Statuses a waiting call stops waiting at (everything but pending).
SETTLED: frozenset[Status] = frozenset(Status) - {Status.PENDING}

Vote = Literal["approve", "deny"]


class ApprovalError(Exception):
    """Base of the service's refusals. `reason` is safe to show to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(ApprovalError):
    """No approval request with that id."""


class Forbidden(ApprovalError):
    """The caller may not do this to this request (not an approver, own request, not the
    requester)."""


class Conflict(ApprovalError):
    """The request is not in a state that allows this (already decided, expired, …)."""


def new_approval_id() -> str:
    """`ap_` + 16 base32 characters: 80 random bits, unguessable."""
    return "ap_" + base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no whitespace, UTF-8 kept as is; NaN/Infinity refused."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def arguments_digest(tool: str, arguments: Mapping[str, Any] | None) -> str:
    """`sha256:<hex>` of the canonical JSON of `{"tool": tool, "arguments": arguments}`.

    Key order and whitespace do not matter; any change of a value does (including its JSON
    type: `1` and `1.0` and `"1"` differ). Raises `TypeError`/`ValueError` for values JSON
    cannot represent.
    """
    text = canonical_json({"tool": tool, "arguments": dict(arguments or {})})
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def iso(ts: float | None) -> str | None:
    """A timestamp as ISO 8601 UTC with milliseconds and a `Z`."""
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def parse_iso(text: str | None) -> float | None:
    """The inverse of `iso` (any ISO 8601 form with an offset; naive means UTC)."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _principal_json(principal: Principal) -> dict[str, Any]:
    data: dict[str, Any] = {"subject": principal.subject, "groups": sorted(principal.groups)}
    if principal.client_id is not None:
        data["client_id"] = principal.client_id
    return data


def _principal_from(data: Mapping[str, Any]) -> Principal:
    return Principal(
        subject=data["subject"],
        groups=frozenset(data.get("groups") or ()),
        client_id=data.get("client_id"),
    )


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    """One approver's vote, recorded with who, when and why."""

    approver: str
    approver_groups: frozenset[str]
    decision: Vote
    reason: str | None
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "approver": self.approver,
            "approver_groups": sorted(self.approver_groups),
            "decision": self.decision,
            "reason": self.reason,
            "at": iso(self.at),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ApprovalDecision:
        return cls(
            approver=data["approver"],
            approver_groups=frozenset(data.get("approver_groups") or ()),
            decision=data["decision"],
            reason=data.get("reason"),
            at=parse_iso(data["at"]) or 0.0,
        )


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A held call waiting for (or having received) a human decision.

    `target` names where the call would run (upstream and connection, formatted by the
    caller, e.g. `builtin/main`). `arguments_digest` binds the request to the exact
    arguments; the arguments themselves are never stored (they may hold secrets), `sql` is
    kept for display. `decided_at` is when the request left `pending` (approved, denied,
    expired or withdrawn).
    """

    id: str
    status: Status
    principal: Principal
    target: str
    tool: str
    arguments_digest: str
    policy_version: str
    approvers: tuple[str, ...]
    quorum: int
    created_at: float
    expires_at: float
    sql: str | None = None
    reasons: tuple[str, ...] = ()
    justification: str | None = None
    estimated_rows: int | None = None
    decisions: tuple[ApprovalDecision, ...] = ()
    decided_at: float | None = None
    executed_at: float | None = None

    # -- questions the service and the API ask -------------------------------------------

    @property
    def approved_by(self) -> tuple[str, ...]:
        """Distinct subjects who approved, in order of their first approval."""
        return tuple(dict.fromkeys(d.approver for d in self.decisions if d.decision == "approve"))

    @property
    def denial(self) -> ApprovalDecision | None:
        """The deny that closed the request, if any."""
        return next((d for d in self.decisions if d.decision == "deny"), None)

    def is_requester(self, principal: Principal) -> bool:
        return principal.subject == self.principal.subject

    def is_approver(self, principal: Principal) -> bool:
        """`principal` is in one of the request's approver groups."""
        return not principal.groups.isdisjoint(self.approvers)

    def visible_to(self, principal: Principal) -> bool:
        """Approvers see the requests they could decide; everybody sees their own."""
        return self.is_requester(principal) or self.is_approver(principal)

    def refusal_for(self, approver: Principal) -> str | None:
        """Why `approver` may not decide this request, or None if they may."""
        if self.is_requester(approver):
            return "nobody may decide their own request"
        if not self.is_approver(approver):
            return (
                "only members of the approver groups "
                f"({', '.join(self.approvers) or 'none'}) may decide this request"
            )
        return None

    # -- JSON ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The admin API / SSE / webhook form (DESIGN §5 plus the extra fields)."""
        return {
            "id": self.id,
            "status": str(self.status),
            "principal": _principal_json(self.principal),
            "tool": self.tool,
            "target": self.target,
            "sql": self.sql,
            "reasons": list(self.reasons),
            "approvers": list(self.approvers),
            "quorum": self.quorum,
            "decisions": [d.to_json() for d in self.decisions],
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "arguments_digest": self.arguments_digest,
            "policy_version": self.policy_version,
            "justification": self.justification,
            "estimated_rows": self.estimated_rows,
            "decided_at": iso(self.decided_at),
            "executed_at": iso(self.executed_at),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ApprovalRequest:
        """Parse `to_json` output (for API clients such as the TUI)."""
        return cls(
            id=data["id"],
            status=Status(data["status"]),
            principal=_principal_from(data["principal"]),
            target=data["target"],
            tool=data["tool"],
            arguments_digest=data.get("arguments_digest", ""),
            policy_version=data.get("policy_version", ""),
            approvers=tuple(data.get("approvers") or ()),
            quorum=int(data.get("quorum", 1)),
            created_at=parse_iso(data["created_at"]) or 0.0,
            expires_at=parse_iso(data["expires_at"]) or 0.0,
            sql=data.get("sql"),
            reasons=tuple(data.get("reasons") or ()),
            justification=data.get("justification"),
            estimated_rows=data.get("estimated_rows"),
            decisions=tuple(ApprovalDecision.from_json(d) for d in data.get("decisions") or ()),
            decided_at=parse_iso(data.get("decided_at")),
            executed_at=parse_iso(data.get("executed_at")),
        )


EventKind = Literal["created", "decided", "expired", "withdrawn", "executed", "updated"]


@dataclass(frozen=True, slots=True)
class ApprovalEvent:
    """Something happened to a request: `created`, `decided` (a vote was recorded; the
    request may still be pending under a quorum), `expired`, `withdrawn`, `executed`,
    `updated` (justification changed). `approval` is the state right after it."""

    kind: EventKind
    approval: ApprovalRequest

    def to_json(self) -> dict[str, Any]:
        """`{"event": kind, "approval": {...}}`: the SSE data and the webhook payload."""
        return {"event": self.kind, "approval": self.approval.to_json()}


def normalise_groups(groups: Iterable[str]) -> tuple[str, ...]:
    """Approver groups: non-empty, stripped, deduplicated, order kept."""
    return tuple(dict.fromkeys(g.strip() for g in groups if isinstance(g, str) and g.strip()))
