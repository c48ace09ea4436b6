"""The `policies.toml` contract as pydantic models (DESIGN §4).

Every model forbids unknown keys: a misspelt key (`sql_kinds`) silently ignored would widen
or narrow a policy without anyone noticing.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from mcp_gate.inspect.model import Risk, SqlKind
from mcp_gate.policy.globs import glob_to_regex

Verdict = Literal["allow", "review", "deny"]

DETECTORS = ("email", "credit_card", "us_ssn", "iban", "aws_access_key", "jwt", "private_key")
MASK_STRATEGIES = ("redact", "partial", "hash", "null")
AWS_ACCESS_LEVELS = ("read", "list", "write", "permissions", "tagging")

_DURATION = re.compile(r"(\d+)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """Seconds from `"90s"`, `"2m"`, `"1h30m"`, `"7d"` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError('a duration is a string such as "2m" or "1h30m"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(text):
            if text[pos : m.start()].strip():
                break
            seconds += int(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]
            pos = m.end()
        if not text or pos == 0 or text[pos:].strip():
            raise ValueError(
                f"bad duration {value!r}: use a number with a unit (ms, s, m, h, d, w), "
                'e.g. "90s", "2m", "1h30m"'
            )
    else:
        raise ValueError('a duration is a string such as "2m" or "1h30m"')
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be greater than zero")
    return seconds


def _check_glob(pattern: str) -> str:
    glob_to_regex(pattern)  # raises GlobError (a ValueError) with the reason
    return pattern


def _listify(value: object) -> object:
    """Accept a single string where a list is expected: `tool = "sql_query"`."""
    return [value] if isinstance(value, str) else value


def _one_of(allowed: tuple[str, ...], what: str):
    def check(value: str) -> str:
        if value.lower() not in allowed:
            raise ValueError(f"unknown {what} {value!r} (expected one of: {', '.join(allowed)})")
        return value.lower()

    return check


Glob = Annotated[str, AfterValidator(_check_glob)]
GlobList = Annotated[list[Glob], BeforeValidator(_listify), Field(min_length=1)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
KindName = Annotated[str, AfterValidator(_one_of(tuple(k.value for k in SqlKind), "SQL kind"))]
RiskName = Annotated[str, AfterValidator(_one_of(tuple(r.value for r in Risk), "risk flag"))]
AccessName = Annotated[str, AfterValidator(_one_of(AWS_ACCESS_LEVELS, "AWS access level"))]
KindList = Annotated[list[KindName], BeforeValidator(_listify), Field(min_length=1)]
RiskList = Annotated[list[RiskName], BeforeValidator(_listify), Field(min_length=1)]
AccessList = Annotated[list[AccessName], BeforeValidator(_listify), Field(min_length=1)]
GroupName = Annotated[str, StringConstraints(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RowBound(_Strict):
    """A bound on the planner's row estimate: `{ gt = 10000 }`."""

    gt: int | None = None
    gte: int | None = None
    lt: int | None = None
    lte: int | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> RowBound:
        if self.gt is None and self.gte is None and self.lt is None and self.lte is None:
            raise ValueError("give at least one of gt, gte, lt, lte")
        return self


class Match(_Strict):
    """Conditions of a rule; all given keys must hold. Lists are any-of globs."""

    tool: GlobList | None = None
    upstream: GlobList | None = None
    connection: GlobList | None = None
    principal: GlobList | None = None
    groups: GlobList | None = None
    sql_kind: KindList | None = None
    sql_risk: RiskList | None = None
    tables: GlobList | None = None
    columns: GlobList | None = None
    estimated_rows: RowBound | None = None
    aws_action: GlobList | None = None
    aws_access: AccessList | None = None
    aws_resource: GlobList | None = None
    arguments: dict[Annotated[str, StringConstraints(min_length=1)], Glob] | None = None


class Rule(_Strict):
    """One `[[rule]]`: when `match` holds and `unless` does not, the rule gives `decision`."""

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    description: str | None = None
    match: Match = Match()
    unless: Match | None = None
    decision: Verdict
    approvers: Annotated[list[GroupName], BeforeValidator(_listify)] | None = None
    quorum: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _review_only_fields(self) -> Rule:
        if self.decision != "review" and (self.approvers is not None or self.quorum is not None):
            raise ValueError('approvers and quorum apply only to rules with decision = "review"')
        return self


class ApprovalSettings(_Strict):
    """`[approval]`: defaults for held calls."""

    approvers: Annotated[list[GroupName], BeforeValidator(_listify)] = []
    quorum: Annotated[int, Field(ge=1)] = 1
    wait: Duration = 120.0
    expires: Duration = 3600.0
    webhook: str | None = None  # new requests and decisions are POSTed here (JSON), retried

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("webhook must be an http:// or https:// URL")
        return value


class MaskRule(_Strict):
    """One `[[mask]]`: columns by lineage, and/or value detectors."""

    columns: GlobList | None = None
    detect: (
        Annotated[
            list[Annotated[str, AfterValidator(_one_of(DETECTORS, "detector"))]],
            BeforeValidator(_listify),
            Field(min_length=1),
        ]
        | None
    ) = None
    strategy: Annotated[str, AfterValidator(_one_of(MASK_STRATEGIES, "mask strategy"))] = "redact"
    except_groups: Annotated[list[GroupName], BeforeValidator(_listify)] = []

    @model_validator(mode="after")
    def _has_target(self) -> MaskRule:
        if self.columns is None and self.detect is None:
            raise ValueError("a [[mask]] needs `columns`, `detect`, or both")
        return self


class PolicyFile(_Strict):
    """The whole `policies.toml`."""

    version: Literal[1]
    default: Verdict = "deny"
    approval: ApprovalSettings = ApprovalSettings()
    rule: list[Rule] = []
    mask: list[MaskRule] = []
