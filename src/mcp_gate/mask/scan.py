"""Applying value detectors: to text (`redact_text`) and to JSON-like values (`scan_value`).

A detected span is replaced by its strategy applied to the span: `redact` → `[MASKED]`,
`partial` → the hint for that kind (`j***@example.com`, `************4242`, `***-**-6789`,
`DE****************3000`, `AKIA************MPLE`, `eyJ***`, the PEM header and footer around
`***`), `hash` → the token of the span's text (equal to the token of a column holding exactly
that text), `null` → the value becomes null: a string (a cell, a JSON string) in which a `null`
detector fires becomes null as a whole; in free text (`redact_text`) and in JSON object keys,
which cannot be null, the span is redacted instead. Overlapping spans are merged and take the
strictest strategy among them.

`scan_value` walks dicts (keys and values), lists and tuples, nested; a string that itself is
JSON (an object or an array) is parsed, walked and re-serialised (compact) only if something
was masked, otherwise the original text is kept. Integers (and integral floats and decimals) of
9 digits or more are scanned as their digits (a card number stored as a JSON number). The
nearest JSON key (or the column name) is the context of a value, so `{"ssn": "123456789"}` is
a labelled SSN.
"""

from __future__ import annotations

import decimal
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from .detectors import DETECTORS, Span, SpanFinder
from .strategies import (
    MASKED,
    SHORT,
    Hasher,
    hasher_for,
    partial_card,
    partial_email,
    partial_iban,
    partial_ssn,
    strictest,
    strictness,
)

DetectorStrategies = Sequence[tuple[str, str]]
"""(detector name, strategy name) pairs, as `MaskPlan.detectors_for` returns them."""

_INVALID = object()
_BIG = 100_000_000  # integers below 9 digits cannot hold a card or an SSN


def _partial_aws(text: str) -> str:
    if text[:4] in ("AKIA", "ASIA", "ABIA", "ACCA") and len(text) == 20:
        return text[:4] + "*" * 12 + text[-4:]
    return MASKED


def _partial_pem(text: str) -> str:
    head_end = text.find("-----", 5) + 5
    head = text[:head_end]
    foot_start = text.rfind("-----END ")
    foot = text[foot_start:] if foot_start > 0 else ""
    return f"{head}{SHORT}{foot}"


_PARTIAL: dict[str, Callable[[str], str]] = {
    "email": partial_email,
    "credit_card": partial_card,
    "us_ssn": partial_ssn,
    "iban": partial_iban,
    "aws_access_key": _partial_aws,
    "jwt": lambda _text: "eyJ" + SHORT,
    "private_key": _partial_pem,
}


def looks_json(text: str) -> bool:
    stripped = text.lstrip()
    return stripped[:1] in ("{", "[")


def _parse_json(text: str) -> Any:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return _INVALID
    return value if isinstance(value, dict | list) else _INVALID


def dump_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _pem_opens(text: str) -> bool:
    """Whether a private-key block starts in `text` and does not end there."""
    begin = text.rfind("-----BEGIN ")
    return begin >= 0 and "PRIVATE KEY" in text[begin:] and text.find("-----END ", begin) < 0


class Scanner:
    """Detectors with their strategies, resolved once. Build through `scanner()`."""

    def __init__(self, detectors: DetectorStrategies, hash_key: bytes | None = None) -> None:
        by_kind: dict[str, str] = {}
        for kind, strategy in detectors:
            if kind not in DETECTORS:
                raise ValueError(f"unknown detector {kind!r}")
            strictness(strategy)
            by_kind[kind] = strictest((by_kind.get(kind), strategy)) or strategy
        self.strategies = by_kind
        self.finder = SpanFinder(by_kind)
        self._hasher: Hasher | None = None
        if "hash" in by_kind.values():
            if hash_key is None:
                raise ValueError("the hash strategy needs a hash key")
            self._hasher = hasher_for(hash_key)
        self._pem_strategy = by_kind.get("private_key")

    def __bool__(self) -> bool:
        return bool(self.strategies)

    # ----------------------------------------------------------------- spans

    def find(self, text: str, context: str = "") -> list[Span]:
        return self.finder.find(text, context)

    def _merged(self, spans: list[Span]) -> list[tuple[int, int, str | None, str]]:
        """Non-overlapping (start, end, kind or None when kinds were merged, strategy)."""
        out: list[tuple[int, int, str | None, str]] = []
        strategies = self.strategies
        for span in spans:  # sorted by start
            strategy = strategies[span.kind]
            if out and span.start < out[-1][1]:
                start, end, kind, previous = out[-1]
                merged_kind = kind if kind == span.kind else None
                best = strictest((previous, strategy)) or strategy
                out[-1] = (start, max(end, span.end), merged_kind, best)
            else:
                out.append((span.start, span.end, span.kind, strategy))
        return out

    def _replacement(self, kind: str | None, strategy: str, text: str) -> str:
        if strategy == "hash":
            assert self._hasher is not None
            return self._hasher.text_token(text)
        if strategy == "partial" and kind is not None:
            return _PARTIAL[kind](text)
        return MASKED  # redact, null in text, partial over merged kinds

    def apply(self, text: str, spans: list[Span], *, value: bool) -> str | None:
        """`text` with `spans` replaced. With `value`, a `null` span makes the result None."""
        pieces: list[str] = []
        pos = 0
        for start, end, kind, strategy in self._merged(spans):
            if value and strategy == "null":
                return None
            pieces.append(text[pos:start])
            pieces.append(self._replacement(kind, strategy, text[start:end]))
            pos = end
        pieces.append(text[pos:])
        return "".join(pieces)

    # ----------------------------------------------------------------- text and values

    def redact_text(self, text: str, context: str = "") -> str:
        """Free text: every detected span replaced (`null` spans redacted)."""
        spans = self.finder.find(text, context)
        if not spans:
            return text
        out = self.apply(text, spans, value=False)
        assert out is not None
        return out

    def scan_string(self, text: str, context: str = "", *, value: bool = True) -> str | None:
        """One string value; JSON text is parsed and walked (see the module docstring). With
        `value` a `null` detector makes the whole string None; without, it is redacted."""
        spans = self.finder.find(text, context)
        if not spans and ("\\u" not in text or not looks_json(text)):
            return text
        # a span across JSON strings (a private key split over several values) cannot be
        # masked by walking: the raw text is redacted instead
        if looks_json(text) and not any('"' in text[s.start : s.end] for s in spans):
            parsed = _parse_json(text)
            if parsed is not _INVALID:
                try:
                    walked = self.scan_value(parsed, context)
                except RecursionError:
                    walked = _INVALID
                if walked is parsed and not spans:
                    return text
                if walked is not parsed and walked is not _INVALID:
                    out = dump_json(walked)
                    leftover = self.finder.find(out, context)
                    return self.apply(out, leftover, value=False) if leftover else out
        if not spans:
            return text
        return self.apply(text, spans, value=value)

    def _scan_number(self, value: Any, context: str) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if -_BIG < value < _BIG:
                return value
            digits = str(value)
        elif isinstance(value, float):
            if not (value.is_integer() and _BIG <= abs(value) < 1e20):
                return value
            digits = str(int(value))
        else:  # Decimal
            if not value.is_finite() or value != value.to_integral_value() or abs(value) < _BIG:
                return value
            digits = format(value.to_integral_value(), "f")
        spans = self.finder.find(digits, context)
        return value if not spans else self.apply(digits, spans, value=True)

    def scan_key(self, key: str) -> str:
        spans = self.finder.find(key)
        if not spans:
            return key
        out = self.apply(key, spans, value=False)
        assert out is not None
        return out

    def scan_value(self, value: Any, context: str = "") -> Any:
        """A masked copy of a JSON-like value, or `value` itself when nothing was found."""
        cls = value.__class__
        if cls is str:
            return self.scan_string(value, context)
        if cls is dict:
            return self._scan_dict(value)
        if cls is list or cls is tuple:
            return self._scan_list(value, context)
        if value is None or cls is bool:
            return value
        if isinstance(value, int | float | decimal.Decimal):
            return self._scan_number(value, context)
        if isinstance(value, str):
            return self.scan_string(str(value), context)
        if isinstance(value, dict) or hasattr(value, "items"):  # mappings, asyncpg.Record
            items = dict(value.items())
            walked = self._scan_dict(items)
            return value if walked is items else walked
        if isinstance(value, list | tuple):
            return self._scan_list(value, context)
        return value

    def _scan_dict(self, value: dict[Any, Any]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        changed = False
        for key, item in value.items():
            new_key = self.scan_key(key) if key.__class__ is str else key
            context = key if key.__class__ is str else ""
            new_item = self.scan_value(item, context)
            if new_key is not key:
                changed = True
                if new_key in out or new_key in value:
                    n = 2
                    while f"{new_key} #{n}" in out or f"{new_key} #{n}" in value:
                        n += 1
                    new_key = f"{new_key} #{n}"
            if new_item is not item:
                changed = True
            out[new_key] = new_item
        return out if changed else value

    def _scan_list(self, value: list[Any] | tuple[Any, ...], context: str) -> Any:
        out: list[Any] | None = None
        pem_open = False
        for i, item in enumerate(value):
            if pem_open and item.__class__ is str:
                # lines of a private-key block split across elements: masked to the END line
                new_item: Any = self.apply(item, [Span(0, len(item), "private_key")], value=True)
                pem_open = "-----END " not in item
            else:
                new_item = self.scan_value(item, context)
                if self._pem_strategy is not None and item.__class__ is str:
                    pem_open = _pem_opens(item)
            if new_item is not item and out is None:
                out = list(value[:i])
            if out is not None:
                out.append(new_item)
        if out is None:
            return value
        return tuple(out) if isinstance(value, tuple) else out


@functools.lru_cache(maxsize=64)
def _cached_scanner(detectors: tuple[tuple[str, str], ...], hash_key: bytes | None) -> Scanner:
    return Scanner(detectors, hash_key)


def scanner(detectors: DetectorStrategies | Scanner, hash_key: bytes | None = None) -> Scanner:
    """A (cached) `Scanner` for `detectors`; a `Scanner` is returned as is."""
    if isinstance(detectors, Scanner):
        return detectors
    key = tuple((str(k), str(s)) for k, s in detectors)
    return _cached_scanner(key, bytes(hash_key) if hash_key is not None else None)


def redact_text(
    text: str, detectors: DetectorStrategies | Scanner, *, hash_key: bytes | None = None
) -> str:
    """`text` with every span found by `detectors` replaced by its strategy's output."""
    return scanner(detectors, hash_key).redact_text(text)


def scan_value(
    value: Any,
    detectors: DetectorStrategies | Scanner,
    *,
    hash_key: bytes | None = None,
    context: str = "",
) -> Any:
    """A masked copy of a JSON-like value (or the value itself when nothing was found)."""
    return scanner(detectors, hash_key).scan_value(value, context)
