"""Results of inspecting a call: plain values the policy engine matches against."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class SqlKind(StrEnum):
    """The exact kind of a SQL statement, as the policy's `sql_kind` names it."""

    SELECT = "select"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    MERGE = "merge"
    DDL = "ddl"
    PRIVILEGE = "privilege"
    SESSION = "session"
    TRANSACTION = "transaction"
    COPY = "copy"
    EXPLAIN = "explain"
    CALL = "call"
    OTHER = "other"


class Risk(StrEnum):
    """Risk flags, as the policy's `sql_risk` names them."""

    UNPARSEABLE = "unparseable"
    MULTI_STATEMENT = "multi_statement"
    NO_WHERE = "no_where"
    WRITE_IN_CTE = "write_in_cte"
    SELECT_INTO = "select_into"
    LOCKING = "locking"
    DANGEROUS_FUNCTION = "dangerous_function"
    UNKNOWN_FUNCTION = "unknown_function"
    SYSTEM_CATALOG = "system_catalog"
    SENSITIVE_PREDICATE = "sensitive_predicate"


@dataclass(frozen=True, slots=True)
class SqlInspection:
    """What one piece of SQL text does.

    `kind` is the strictest kind over all statements (a write outranks a read), so a
    multi-statement text is never classified by its first statement alone. `kinds` lists each
    statement's kind in order. Names are lower-case as PostgreSQL folds unquoted identifiers;
    relations are schema-qualified (`public.users`) when the text qualifies them, and carry
    the schema the gateway's fixed search_path resolves them to otherwise.
    """

    text: str
    kind: SqlKind
    kinds: tuple[SqlKind, ...] = ()
    statement_count: int = 0
    relations_read: frozenset[str] = frozenset()
    relations_written: frozenset[str] = frozenset()
    columns: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    risks: frozenset[Risk] = frozenset()
    error: str | None = None
    details: tuple[str, ...] = ()
    #: The most rows the planner can estimate for a single plain read, known from its text
    #: alone (`row_bound.limit_bound`: a top-level constant LIMIT), else None.
    row_bound: int | None = None

    @property
    def relations(self) -> frozenset[str]:
        """Every relation the text touches, read or written."""
        return self.relations_read | self.relations_written


@dataclass(frozen=True, slots=True)
class AwsInspection:
    """What an AWS-bearing call does: IAM actions, their access levels, and resources."""

    actions: frozenset[str] = frozenset()
    access: frozenset[str] = frozenset()
    resources: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Inspection:
    """Everything the gateway learned about a call before deciding on it.

    `columns` holds the resolved base columns (`schema.table.column`) once lineage has run,
    None before; `extra_risks` holds flags added by stages after classification
    (`sensitive_predicate`, `lineage_unresolved`).
    """

    sql: SqlInspection | None = None
    aws: AwsInspection | None = None
    estimated_rows: int | None = None
    columns: frozenset[str] | None = None
    extra_risks: frozenset[str] = field(default_factory=frozenset)
    #: Per-output-position lineage (`mcp_gate.inspect.lineage.Lineage`) of a traced read.
    lineage: Any = None
    #: Why lineage could not be resolved; the call is then refused whatever the policy says.
    unresolved: str | None = None

    @property
    def risks(self) -> frozenset[str]:
        """All risk flags: the SQL's and any added by later stages (lineage, catalog)."""
        base: frozenset[str] = self.sql.risks if self.sql else frozenset()
        return base | self.extra_risks if self.extra_risks else base
