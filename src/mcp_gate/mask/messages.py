"""Database error messages for statements that read masked columns.

PostgreSQL quotes the value it could not handle in its messages, and not always in quotes:
`invalid input syntax for type integer: "123-45-6789"`, `date field value out of range:
2000-123-01` (`make_date(2000, substr(ssn, 1, 3)::int, 1)`), `requested character too large
for encoding: 123456789` (`chr(replace(ssn, '-', '')::int)`), DETAIL lines with a JSON token
or an XML line. The value detectors only find values in the shapes they know; a cast of
`replace(ssn, '-', '')` is nine bare digits. So for a statement that reads a masked column,
the message keeps only its wording: no DETAIL or HINT, nothing after the first `: `, every
quoted part and every digit replaced.
"""

from __future__ import annotations

import re

_QUOTED = re.compile(r'"(?:[^"]|"")*"|\'(?:[^\']|\'\')*\'')
_HEX = re.compile(r"\b0x[0-9A-Fa-f]+")
_DIGITS = re.compile(r"[0-9]+")
WITHHELD = "…"


def withhold_values(message: str, sqlstate: str | None = None) -> str:
    """`message` (PostgreSQL's primary message) without anything that may be a value."""
    first = message.split("\n", 1)[0]
    head, sep, _ = first.partition(": ")
    text = _QUOTED.sub(f'"{WITHHELD}"', head)
    text = _DIGITS.sub("#", _HEX.sub(WITHHELD, text))
    if sep:
        text += f": {WITHHELD}"
    state = f" (SQLSTATE {sqlstate})" if sqlstate else ""
    return (
        f"{text}{state}; the database's full message is withheld because the statement "
        "reads masked columns"
    )
