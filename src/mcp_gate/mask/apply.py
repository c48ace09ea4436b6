"""Masking a query result by output position, then running the value detectors over what is
left; and scanning upstream (non-SQL) tool results.

`mask_rows` builds, once per shape of strategy list (cached), a function that rebuilds every
row in one list comprehension: clean positions are copied, `redact` and `null` are inline
expressions, `partial` and `hash` one call of a function chosen once per result (no dispatch
by name per cell); `hash` looks at a sample of its column first and caches tokens only when
the column repeats itself (`Hasher.function`). A position masked by a column rule is masked
whole, whatever its type: JSON, arrays and records are never masked element by element (and
`partial` becomes `redact` for them).

`mask_result` then runs the detectors over every cell of the columns no rule masked: strings
(JSON text included: parsed and walked), arrays, records, integers of 9+ digits, bytea. Cells
are scanned in one pass per column (the column's strings joined by newlines, the column name as
label context), and only the cells holding a hit are masked, one by one. A column is reported
`masked` when a column rule masked it or a detector changed at least one of its values: the
flag says the agent did not get the column's values as stored (a caller exempt from a column
rule still gets detector hits masked).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import decimal
import functools
import itertools
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from mcp import types

from mcp_gate.sqltools.model import QueryResult

from .detectors import Span
from .scan import DetectorStrategies, Scanner, looks_json, scanner
from .strategies import MASKED, Hasher, hasher_for, strictest, strictness, value_function

_COMPOSITE_TYPES = frozenset({"json", "jsonb", "record", "hstore", "xml"})
# values of these classes cannot hold a detectable string
_CLEAN_CLASSES = frozenset(
    {str, type(None), bool, dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID}
)
_BIG = 100_000_000
_JOIN = "\n"
_SAMPLE = 2048  # rows looked at (spread over the result) to choose how a column is hashed


def is_composite_type(type_name: str) -> bool:
    """JSON, arrays, records, ranges and types outside pg_catalog/public (possibly composite):
    `partial` would reveal their structure, so they are redacted instead."""
    name = type_name.lower()
    return name in _COMPOSITE_TYPES or name.endswith("[]") or "range" in name or "." in name


@functools.lru_cache(maxsize=256)
def _row_masker(shape: tuple[str | None, ...]) -> Callable[..., list[tuple[Any, ...]]]:
    """`masker(rows, MASKED, *functions)` for a shape: per position None (copied), "redact",
    "null" or "call" (the next function). Generated from a fixed template: only indices are
    spliced into the code."""
    width = len(shape)
    cells = [f"c{i}" for i in range(width)]
    exprs: list[str] = []
    params: list[str] = []
    for i, kind in enumerate(shape):
        if kind is None:
            exprs.append(f"c{i}")
        elif kind == "redact":
            exprs.append(f"(None if c{i} is None else M)")
        elif kind == "null":
            exprs.append("None")
        else:
            params.append(f"f{i}")
            exprs.append(f"f{i}(c{i})")
    source = (
        f"def masker(rows, M, {', '.join(params)}):\n"
        f"    return [({', '.join(exprs)},) for ({', '.join(cells)},) in rows]\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<mask_rows {width}>", "exec"), namespace)
    return namespace["masker"]


def mask_rows(
    rows: Sequence[Sequence[Any]],
    strategies: Sequence[str | None],
    *,
    hash_key: bytes | None = None,
    types: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """`rows` with output position `i` masked by `strategies[i]` (None: left as is). `types`
    (PostgreSQL type names) turn `partial` into `redact` for composite columns. A strategy list
    that does not fit the rows is an error, never a pass."""
    width = len(strategies)
    if types is not None and len(types) != width:
        raise ValueError(f"{len(types)} types for {width} strategies")
    if not any(s is not None for s in strategies):
        for row in rows:
            if len(row) != width:
                raise ValueError(f"{width} strategies for rows of {len(row)} columns")
        return [tuple(r) for r in rows]
    shape: list[str | None] = []
    functions: list[Callable[[Any], Any]] = []
    for i, name in enumerate(strategies):
        if name is None:
            shape.append(None)
            continue
        strictness(name)  # an unknown name is an error
        if name == "partial" and types is not None and is_composite_type(types[i]):
            name = "redact"
        if name in ("redact", "null"):
            shape.append(name)
        else:
            shape.append("call")
            # a sample of the column tells `hash` whether it repeats itself (worth a cache)
            sample: list[Any] = []
            if name == "hash":  # a short row is left to the masker to refuse
                step = max(1, len(rows) // _SAMPLE)
                sample = [r[i] for r in itertools.islice(rows, 0, None, step) if len(r) > i]
            functions.append(value_function(name, hash_key=hash_key, sample=sample))
    try:
        return _row_masker(tuple(shape))(rows, MASKED, *functions)
    except ValueError as exc:  # a row of another width (unpacking)
        raise ValueError(f"rows do not have {width} columns: {exc}") from None


# --------------------------------------------------------------------------- detectors


def _mask_whole(sc: Scanner, value: Any, spans: list[Span], hasher: Hasher | None) -> Any:
    strategy = strictest(sc.strategies[s.kind] for s in spans)
    if strategy == "null":
        return None
    if strategy == "hash" and hasher is not None:
        return hasher(value)
    return MASKED


def _scan_cell(sc: Scanner, value: Any, context: str, hasher: Hasher | None) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("latin-1")
        spans = sc.find(text, context)
        return _mask_whole(sc, value, spans, hasher) if spans else value
    return sc.scan_value(value, context)


def _label_dependent(span: Span) -> bool:
    """Spans found thanks to a label shortly before them (which may sit in another cell)."""
    length = span.end - span.start
    return (span.kind == "us_ssn" and length == 9) or (
        span.kind == "aws_access_key" and length == 40
    )


def _scan_column(
    sc: Scanner, values: Sequence[Any], context: str, hasher: Hasher | None
) -> dict[int, Any]:
    """{row index: masked value} for the cells of a column holding a detected value.

    The column's strings are scanned as one text; a span inside one cell is applied to that
    cell directly, unless the cell is JSON (walked) or the span depends on a label (the cell
    is scanned again alone). A private-key block running across cells masks the cells inside.
    """
    texts = [v if v.__class__ is str else "" for v in values]
    joined = _JOIN.join(texts)
    spans = sc.find(joined, context)
    per_cell: dict[int, list[Span]] = {}
    rescan: set[int] = set()
    inside_key: set[int] = set()
    if spans:
        starts = list(itertools.accumulate((len(t) + 1 for t in texts[:-1]), initial=0))
        for span in spans:
            first = bisect.bisect_right(starts, span.start) - 1
            last = bisect.bisect_right(starts, max(span.start, span.end - 1)) - 1
            if last > first:
                rescan.add(first)
                if span.kind == "private_key" and "-----END " in joined[span.start : span.end]:
                    inside_key.update(range(first + 1, last + 1))
            elif _label_dependent(span):
                rescan.add(first)
            else:
                base = starts[first]
                per_cell.setdefault(first, []).append(
                    Span(span.start - base, span.end - base, span.kind)
                )
    if "\\u" in joined:  # JSON text may hide a value behind escapes
        rescan.update(i for i, t in enumerate(texts) if "\\u" in t and looks_json(t))
    out: dict[int, Any] = {}
    for i, cell_spans in per_cell.items():
        value = values[i]
        if i in rescan or looks_json(value):
            rescan.add(i)
        else:
            out[i] = sc.apply(value, cell_spans, value=True)
    for i in rescan:
        new = sc.scan_string(values[i], context)
        if new is not values[i]:
            out[i] = new
    for i in inside_key:
        value = values[i]
        if i not in out and value.__class__ is str and value:
            out[i] = sc.apply(value, [Span(0, len(value), "private_key")], value=True)
    for i, v in enumerate(values):
        cls = v.__class__
        if cls in _CLEAN_CLASSES or ((cls is int or cls is float) and -_BIG < v < _BIG):
            continue
        if cls is decimal.Decimal and v.is_finite() and -_BIG < v < _BIG:
            continue
        new = _scan_cell(sc, v, context, hasher)
        if new is not v:
            out[i] = new
    return out


def mask_result(
    result: QueryResult,
    strategies: Sequence[str | None],
    detectors: DetectorStrategies | Scanner = (),
    *,
    hash_key: bytes | None = None,
) -> tuple[QueryResult, list[bool]]:
    """Column masks by output position, then value detectors over the other columns. Returns
    the masked result (a copy) and the per-column `masked` flags for `results.structured` and
    `results.text_table`: True for a column masked by a rule, or with a value a detector
    changed."""
    width = len(result.columns)
    if len(strategies) != width:
        raise ValueError(f"{len(strategies)} strategies for {width} columns")
    flags = [s is not None for s in strategies]
    types = [c.type_name for c in result.columns]
    rows = mask_rows(result.rows, strategies, hash_key=hash_key, types=types)
    sc = scanner(detectors, hash_key) if detectors else None
    if sc and rows:
        hasher = None
        if hash_key is not None and "hash" in sc.strategies.values():
            hasher = hasher_for(hash_key)
        for i, column in enumerate(result.columns):
            if strategies[i] is not None:
                continue
            scanned = _scan_column(sc, [r[i] for r in rows], column.name, hasher)
            flags[i] = bool(scanned)
            for j, value in scanned.items():
                row = list(rows[j])
                row[i] = value
                rows[j] = tuple(row)
    return dataclasses.replace(result, rows=rows), flags


def scan_tool_result_text(
    text: str, detectors: DetectorStrategies | Scanner, hash_key: bytes | None = None
) -> str:
    """Text returned by an upstream tool: JSON text is parsed, walked and re-serialised when
    something was masked (JSON values hit by `null` detectors become null); other text is
    scanned as free text."""
    sc = scanner(detectors, hash_key)
    if not sc:
        return text
    out = sc.scan_string(text, value=False)
    assert out is not None
    return out


def scan_tool_result(
    result: types.CallToolResult,
    detectors: DetectorStrategies | Scanner,
    hash_key: bytes | None = None,
) -> types.CallToolResult:
    """A tool result with the detectors applied to everything it carries as text: every
    `TextContent` and the text of every embedded text resource (`scan_tool_result_text`:
    JSON text parsed and walked, other text as free text), and the structured content
    walked as JSON (`scan_value`). Images, audio, blobs and links are kept as they are.
    Returns `result` itself when nothing was found. Ready for wrapped upstream servers."""
    sc = scanner(detectors, hash_key)
    if not sc:
        return result
    content: list[types.ContentBlock] = []
    changed = False
    for block in result.content:
        new = block
        if isinstance(block, types.TextContent):
            text = scan_tool_result_text(block.text, sc)
            if text is not block.text:
                new = block.model_copy(update={"text": text})
        elif isinstance(block, types.EmbeddedResource) and isinstance(
            block.resource, types.TextResourceContents
        ):
            text = scan_tool_result_text(block.resource.text, sc)
            if text is not block.resource.text:
                resource = block.resource.model_copy(update={"text": text})
                new = block.model_copy(update={"resource": resource})
        changed = changed or new is not block
        content.append(new)
    structured = result.structured_content
    if structured is not None:
        scanned = sc.scan_value(structured)
        if scanned is not structured:
            # a `null` detector may turn a whole string into None: still a JSON object
            structured = scanned if isinstance(scanned, dict) else {}
            changed = True
    if not changed:
        return result
    return result.model_copy(update={"content": content, "structured_content": structured})


__all__ = [
    "is_composite_type",
    "mask_result",
    "mask_rows",
    "scan_tool_result",
    "scan_tool_result_text",
]
