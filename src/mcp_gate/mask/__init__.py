"""Masking (DESIGN §7): strategies, value detectors, compiled `[[mask]]` rules, and masking of
query results by output position.

- `strategies`: `redact`, `partial`, `hash`, `null`; their order of strictness.
- `detectors`: email, credit_card, us_ssn, iban, aws_access_key, jwt, private_key spans.
- `scan`: detectors with strategies over text and JSON-like values.
- `rules`: `MaskPlan`, the `[[mask]]` list compiled once.
- `apply`: `mask_rows`, `mask_result`, `scan_tool_result` and `scan_tool_result_text`
  (upstream tool results).
"""

from .apply import (
    is_composite_type,
    mask_result,
    mask_rows,
    scan_tool_result,
    scan_tool_result_text,
)
from .detectors import DETECTORS, Span, SpanFinder, find_spans
from .rules import MaskPlan, MaskReason
from .scan import DetectorStrategies, Scanner, redact_text, scan_value, scanner
from .strategies import (
    MASKED,
    STRATEGY_ORDER,
    Hasher,
    partial,
    redact,
    strictest,
    strictness,
    value_function,
)

__all__ = [
    "DETECTORS",
    "MASKED",
    "STRATEGY_ORDER",
    "DetectorStrategies",
    "Hasher",
    "MaskPlan",
    "MaskReason",
    "Scanner",
    "Span",
    "SpanFinder",
    "find_spans",
    "is_composite_type",
    "mask_result",
    "mask_rows",
    "partial",
    "redact",
    "redact_text",
    "scan_tool_result",
    "scan_tool_result_text",
    "scan_value",
    "scanner",
    "strictest",
    "strictness",
    "value_function",
]
