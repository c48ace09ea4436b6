"""What a statement returned, as plain values (before masking and JSON conversion)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Column:
    """One result column: its name and PostgreSQL type name (`int4`, `text`, `int4[]`,
    `myschema.mytype` for types outside pg_catalog/public)."""

    name: str
    type_name: str


@dataclass(slots=True)
class QueryResult:
    """Rows of one statement. `row_count == len(rows)`; `truncated` means there were more rows
    than `max_rows` (exactly `max_rows` are kept). For writes `status` is the command tag
    (`UPDATE 3`) and `affected_rows` its count; both are None for reads."""

    columns: list[Column]
    rows: list[tuple[Any, ...]]
    row_count: int
    truncated: bool
    elapsed_ms: float
    status: str | None = None
    affected_rows: int | None = None
