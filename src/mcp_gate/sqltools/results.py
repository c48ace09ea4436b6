"""A `QueryResult` as MCP tool output (DESIGN §6): `structuredContent` and a text table.

JSON conversion (`json_value`), chosen so nothing is lost silently and all is plain JSON:

- NULL, boolean, integers: null, true/false, number (bigint stays an exact integer).
- real/double precision: number; NaN/±Infinity become "NaN", "Infinity", "-Infinity".
- numeric (Decimal): **string**, exact digits, never an exponent ("12.50", "0.0000001"), so
  no precision is lost in clients that parse numbers as doubles.
- timestamp, timestamptz, date, time, timetz: ISO 8601 ("2024-05-01T12:00:00+00:00");
  ±infinity (decoded by asyncpg as the max/min datetime) become "infinity"/"-infinity".
- interval: PostgreSQL's own text ("1 mon 2 days 03:00:00"): the gateway's pool decodes it as
  text, because asyncpg's timedelta folds a month into 30 days. A timedelta from another
  pool becomes an ISO 8601 duration ("P1DT2H").
- uuid, inet/cidr, money, xml, tsvector, enums, unknown types: string.
- bytea: "\\x…" hex, as PostgreSQL prints it. bit/varbit: a string of 0s and 1s.
- json/jsonb: the parsed JSON value, except for masked columns (their values are mask
  placeholders) and text that does not parse: then the string.
- arrays and multiranges: lists (nested for multi-dimensional arrays).
- ranges: PostgreSQL's range text ("[1,5)", "(,10]", "empty").
- named composite values: an object {attribute: value}; anonymous records and geometric
  types: lists (point → [x, y], box → [[x, y], [x, y]]).
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from .model import QueryResult

MAX_CELL_CHARS = 60
MAX_TABLE_CHARS = 20_000
_JSON_TYPES = frozenset({"json", "jsonb", "json[]", "jsonb[]"})
_NUMERIC_TYPES = frozenset({"int2", "int4", "int8", "float4", "float8", "numeric", "oid", "money"})
_RANGE_SPECIAL = set(',()[]"\\ ')
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


# --------------------------------------------------------------------------- JSON values


def _float(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _decimal(value: decimal.Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    return format(value, "f")


def iso_duration(value: dt.timedelta) -> str:
    """ISO 8601 duration of a timedelta: `P1DT2H3M4.5S`, `-PT1H`, `PT0S`."""
    total_us = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if total_us < 0 else ""
    total_us = abs(total_us)
    days, rem = divmod(total_us, 86_400 * 1_000_000)
    hours, rem = divmod(rem, 3_600 * 1_000_000)
    minutes, rem = divmod(rem, 60 * 1_000_000)
    seconds, micros = divmod(rem, 1_000_000)
    out = f"{sign}P{days}D" if days else f"{sign}P"
    time_part = ""
    if hours:
        time_part += f"{hours}H"
    if minutes:
        time_part += f"{minutes}M"
    if seconds or micros:
        frac = f".{micros:06d}".rstrip("0") if micros else ""
        time_part += f"{seconds}{frac}S"
    if time_part:
        out += "T" + time_part
    elif not days:
        out += "T0S"
    return out


def _datetime(value: dt.datetime) -> str:
    naive = value.replace(tzinfo=None)
    if naive == dt.datetime.max:  # asyncpg's decoding of 'infinity'
        return "infinity"
    if naive == dt.datetime.min:
        return "-infinity"
    return value.isoformat()


def _date(value: dt.date) -> str:
    if value == dt.date.max:
        return "infinity"
    if value == dt.date.min:
        return "-infinity"
    return value.isoformat()


def _range_bound(value: Any) -> str:
    if value is None:
        return ""
    text = json_value(value)
    text = text if isinstance(text, str) else json.dumps(text)
    if any(c in _RANGE_SPECIAL for c in text) or text == "":
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def range_text(value: asyncpg.Range) -> str:
    """PostgreSQL's text form of a range: `[1,5)`, `(,10]`, `empty`."""
    if value.isempty:
        return "empty"
    lower = "[" if value.lower_inc and value.lower is not None else "("
    upper = "]" if value.upper_inc and value.upper is not None else ")"
    return f"{lower}{_range_bound(value.lower)},{_range_bound(value.upper)}{upper}"


def json_value(value: Any) -> Any:
    """A JSON-safe equivalent of one decoded value (see the module table)."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, decimal.Decimal):
        return _decimal(value)
    if isinstance(value, dt.datetime):
        return _datetime(value)
    if isinstance(value, dt.date):
        return _date(value)
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return iso_duration(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(
        value,
        ipaddress.IPv4Address
        | ipaddress.IPv6Address
        | ipaddress.IPv4Network
        | ipaddress.IPv6Network
        | ipaddress.IPv4Interface
        | ipaddress.IPv6Interface,
    ):
        return str(value)
    if isinstance(value, asyncpg.Range):
        return range_text(value)
    if isinstance(value, asyncpg.BitString):
        return value.as_string()
    if isinstance(value, asyncpg.Record):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


def _parse_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_parse_json(v) for v in value]
    return json_value(value)


def cell_value(value: Any, type_name: str, masked: bool = False) -> Any:
    """`json_value`, plus json/jsonb text parsed into JSON (never for masked columns, whose
    values are mask placeholders)."""
    if type_name in _JSON_TYPES and not masked:
        return _parse_json(value)
    return json_value(value)


def _masked_flags(result: QueryResult, masked: Sequence[bool] | None) -> list[bool]:
    if masked is None:
        return [False] * len(result.columns)
    flags = [bool(m) for m in masked]
    if len(flags) != len(result.columns):
        raise ValueError(f"masked has {len(flags)} flags for {len(result.columns)} columns")
    return flags


def structured(result: QueryResult, masked: Sequence[bool] | None = None) -> dict[str, Any]:
    """`structuredContent` of a SQL tool result:
    `{"columns": [{"name", "type", "masked"}], "rows": [[…]], "row_count", "truncated"}`,
    plus `"status"` and `"affected_rows"` for writes."""
    flags = _masked_flags(result, masked)
    types = [c.type_name for c in result.columns]
    out: dict[str, Any] = {
        "columns": [
            {"name": c.name, "type": c.type_name, "masked": m}
            for c, m in zip(result.columns, flags, strict=True)
        ],
        "rows": [
            [cell_value(v, types[i], flags[i]) for i, v in enumerate(row)] for row in result.rows
        ],
        "row_count": result.row_count,
        "truncated": result.truncated,
    }
    if result.status is not None:
        out["status"] = result.status
        out["affected_rows"] = result.affected_rows
    return out


# --------------------------------------------------------------------------- text table


def _cell_text(value: Any, type_name: str, masked: bool, max_cell: int) -> str:
    if value is None:
        return "NULL"
    converted = cell_value(value, type_name, masked)
    if isinstance(converted, str):
        text = converted
    elif isinstance(converted, bool):
        text = "t" if converted else "f"
    else:
        text = json.dumps(converted, ensure_ascii=False, separators=(",", ":"))
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        text = "".join(
            _ESCAPES.get(c, f"\\x{ord(c):02x}") if ord(c) < 32 or c == "\x7f" else c for c in text
        )
    if len(text) > max_cell:
        text = text[: max_cell - 1] + "…"
    return text


def _rows_word(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def footer(result: QueryResult) -> str:
    """`3 rows`, `1 row`, `1000 rows (truncated at max_rows=1000)`; writes lead with the
    command tag (`UPDATE 3`)."""
    text = _rows_word(result.row_count)
    if result.truncated:
        text += f" (truncated at max_rows={result.row_count})"
    if result.status is not None:
        text = f"{result.status}; {text} returned" if result.columns else result.status
    return text


def text_table(
    result: QueryResult,
    masked: Sequence[bool] | None = None,
    *,
    max_cell: int = MAX_CELL_CHARS,
    max_chars: int = MAX_TABLE_CHARS,
) -> str:
    """A readable fixed-width table: header, separator, one line per row, footer. Cells are
    cut at `max_cell` characters (with …), control characters escaped, NULL shown as `NULL`.
    Rows that would take the output past `max_chars` are left out and counted in a note."""
    flags = _masked_flags(result, masked)
    if not result.columns:
        return footer(result)
    types = [c.type_name for c in result.columns]
    headers = [_cell_text(c.name, "text", False, max_cell) for c in result.columns]
    body = [
        [_cell_text(v, types[i], flags[i], max_cell) for i, v in enumerate(row)]
        for row in result.rows
    ]
    widths = [len(h) for h in headers]
    for cells in body:
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], len(cell))
    right = [t in _NUMERIC_TYPES and not flags[i] for i, t in enumerate(types)]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(widths[i]) if right[i] else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return (" " + " | ".join(parts)).rstrip()

    lines = [
        line([h.center(widths[i]) for i, h in enumerate(headers)]),
        "-" + "-+-".join("-" * w for w in widths) + "-",
    ]
    tail = [footer(result)]
    if any(flags):
        names = [c.name for c, m in zip(result.columns, flags, strict=True) if m]
        tail.append("masked: " + ", ".join(names))
    budget = max_chars - sum(len(t) + 1 for t in tail) - 80
    used = sum(len(x) + 1 for x in lines)
    shown = 0
    for cells in body:
        text = line(cells)
        if used + len(text) + 1 > budget:
            break
        lines.append(text)
        used += len(text) + 1
        shown += 1
    if shown < len(body):
        lines.append(f"… {len(body) - shown} more rows not shown (text output limit)")
    return "\n".join([*lines, *tail])
