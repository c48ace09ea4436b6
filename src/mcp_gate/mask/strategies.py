"""Mask strategies (DESIGN §7): what a sensitive value becomes.

| strategy  | a non-NULL value becomes                             | reveals                      |
|-----------|------------------------------------------------------|------------------------------|
| `null`    | NULL                                                 | nothing (not even NULL-ness) |
| `redact`  | the string `[MASKED]`                                | that the value is not NULL   |
| `hash`    | `h:` + 12 lowercase hex (keyed BLAKE2s, gateway key) | equality (stable, joinable)  |
| `partial` | a hint: `j***@example.com`, `***-**-6789`, …         | a fragment of the value      |

`STRATEGY_ORDER` lists them from the one revealing most to the one revealing least; when
several rules apply, the strictest (latest in the order) wins: null > redact > hash > partial.

NULL stays NULL under every strategy (and `null` maps everything to NULL): whether a value is
missing is not treated as sensitive, and it can be asked through `IS NULL` predicates anyway.
The empty string is a value like any other (`redact` → `[MASKED]`, `partial` → `***`).

`partial`, by shape of the string:
- email `local@domain.tld` → first character of the local part + `***@domain.tld`
  (`***@domain.tld` when the local part is a single character);
- IBAN (2 letters, 2 check digits, 11–30 letters/digits, spaces allowed) → country code, one
  `*` per hidden character, last 4 (`DE****************3000`, the compact form);
- US SSN (9 ASCII digits, spaces and dashes allowed: `123-45-6789`) → `***-**-6789`;
- card number (13–19 ASCII digits, spaces and dashes allowed) → `************4242`: 12 stars
  and the last 4 digits, separators dropped, so neither the length nor the grouping (both hint
  at the card network) is revealed;
- phone (7–15 digits with spaces, dots, dashes, parentheses, and either a leading `+` or `(`
  or at least 10 digits) → `***-4567`;
- any other string → first character + `***` (`J***`); strings of at most 4 characters and
  strings that look composite (starting with `{`, `[` or `(`: JSON, array or record text)
  reveal nothing: `***` and `[MASKED]` respectively;
- anything that is not a string (numbers, dates, booleans, bytes, JSON, arrays, records) →
  `[MASKED]`: partial never reveals the structure or part of a composite value.

`hash` is a MAC (keyed BLAKE2s, see `Hasher`) under the gateway's key over a type-tagged
canonical encoding, so equal values give equal tokens across calls, restarts, columns, tables
and detector spans (joinable), and values that merely print alike do not collide across kinds:
- strings, and values the agent sees as strings (uuid, inet, date/time in ISO 8601 with aware
  timestamps normalised to UTC, intervals, ranges): `s:` + UTF-8 text, so a uuid column and a
  text column holding the same uuid join;
- numbers (int, float, numeric): `n:` + canonical decimal, so `1`, `1.0` and numeric `1.00`
  are equal, but `1` and `"1"` are not;
- booleans `b:t`/`b:f`; bytea `x:` + bytes; JSON, arrays and records `j:` + compact JSON with
  sorted keys (the value as a whole).
The key must be at least 16 bytes; tokens change when the key changes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mcp_gate.policy.model import MASK_STRATEGIES

MASKED = "[MASKED]"
SHORT = "***"
HASH_HEX_CHARS = 12
MIN_KEY_BYTES = 16

STRATEGY_ORDER: tuple[str, ...] = ("partial", "hash", "redact", "null")
"""From the strategy revealing most to the one revealing least (the strictest)."""

_RANK = {name: i for i, name in enumerate(STRATEGY_ORDER)}
assert set(_RANK) == set(MASK_STRATEGIES)

ValueFunction = Callable[[Any], Any]


def strictness(name: str) -> int:
    """Rank of a strategy: higher reveals less."""
    try:
        return _RANK[name]
    except KeyError:
        raise ValueError(f"unknown mask strategy {name!r}") from None


def strictest(names: Iterable[str | None]) -> str | None:
    """The strategy revealing least among `names` (None entries ignored; None if empty)."""
    best: str | None = None
    rank = -1
    for name in names:
        if name is not None and (r := strictness(name)) > rank:
            best, rank = name, r
    return best


# --------------------------------------------------------------------------- redact, null


def redact(value: Any) -> str | None:
    return None if value is None else MASKED


def null(value: Any) -> None:
    return None


# --------------------------------------------------------------------------- partial

_IBAN = re.compile(r"[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}")
_PHONE = re.compile(r"\+?[\s().-]*(?:[0-9][\s().-]*){7,15}")
_NOT_DIGIT = re.compile(r"[^0-9]+")


def partial_email(text: str) -> str:
    local, _, domain = text.rpartition("@")
    return (local[0] + SHORT if len(local) > 1 else SHORT) + "@" + domain


def partial_ssn(text: str) -> str:
    return "***-**-" + _NOT_DIGIT.sub("", text)[-4:]


def partial_card(text: str) -> str:
    return "*" * 12 + _NOT_DIGIT.sub("", text)[-4:]


def partial_iban(text: str) -> str:
    compact = text.replace(" ", "").replace("-", "")
    return compact[:2].upper() + "*" * (len(compact) - 6) + compact[-4:]


def partial_phone(text: str) -> str:
    return "***-" + _NOT_DIGIT.sub("", text)[-4:]


def partial_text(text: str) -> str:
    """The generic hint: first character + `***`; nothing for short or composite-looking text."""
    stripped = text.strip()
    if len(stripped) <= 4:
        return SHORT
    if stripped[0] in "{[(":
        return MASKED
    return stripped[0] + SHORT


def partial(value: Any) -> Any:
    """`partial` for one value (see the module table)."""
    if value.__class__ is not str:
        if value is None:
            return None
        if not isinstance(value, str):
            return MASKED
        value = str(value)
    text = value.strip()
    if len(text) <= 4:
        return SHORT
    first = text[0]
    at = text.rfind("@")
    if at > 0:
        domain = text[at:]
        if "." in domain[2:-1] and first not in "{[" and " " not in text:
            return (first + SHORT if at > 1 else SHORT) + domain
    if first in "0123456789+(":
        compact = text.replace(" ", "").replace("-", "")
        if compact.isdigit() and compact.isascii():
            if len(compact) == 9:
                return "***-**-" + compact[5:]
            if 13 <= len(compact) <= 19:
                return "*" * 12 + compact[-4:]
        if _PHONE.fullmatch(text):
            digits = _NOT_DIGIT.sub("", text)
            if len(digits) >= 10 or first in "+(":  # not `2024-05-01` nor `555-1234`
                return "***-" + digits[-4:]
    elif first.isalpha() and text[2:4].isdigit() and _IBAN.fullmatch(text):
        return partial_iban(text)
    if first in "{[(":
        return MASKED
    return first + SHORT


# --------------------------------------------------------------------------- hash


def _number_text(value: int | float | decimal.Decimal) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer():
            return str(int(value))
        value = decimal.Decimal(repr(value))
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _plain(value: Any) -> Any:
    """A JSON-safe, canonical form of a composite value (for `j:` encodings)."""
    from mcp_gate.sqltools.results import json_value  # asyncpg types; imported when needed

    return json_value(value)


def canonical_bytes(value: Any) -> bytes:
    """The type-tagged encoding hashed by `hash` (see the module docstring)."""
    if value.__class__ is str:
        return b"s:" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bool):
        return b"b:t" if value else b"b:f"
    if isinstance(value, int | float | decimal.Decimal):
        return b"n:" + _number_text(value).encode()
    if isinstance(value, str):
        return b"s:" + str(value).encode("utf-8", "surrogatepass")
    if isinstance(value, bytes | bytearray | memoryview):
        return b"x:" + bytes(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    if isinstance(value, Mapping | list | tuple | set | frozenset) or hasattr(value, "items"):
        if isinstance(value, set | frozenset):
            value = sorted(value, key=repr)
        text = json.dumps(_plain(value), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return b"j:" + text.encode("utf-8", "surrogatepass")
    plain = _plain(value)
    text = plain if isinstance(plain, str) else str(value)
    return b"s:" + text.encode("utf-8", "surrogatepass")


_KEY_PERSON = b"mcpgkey1"  # BLAKE2s personalisation: at most 8 bytes
_TOKEN_PERSON = b"mcpgtok1"


class Hasher:
    """Keyed BLAKE2s under one key, the keyed initial state computed once.

    BLAKE2 with a key is a MAC by design (one pass, no HMAC double hashing), so a token
    cannot be computed, nor a guess confirmed offline, without the key. The key (at least 16
    bytes, any length) is first condensed to BLAKE2s's 32-byte key, personalised so this use
    of the key is separate from any other; tokens are 6-byte BLAKE2s digests (a digest size
    parameter, not a truncation) personalised for tokens, as 12 hex digits.
    """

    __slots__ = ("_base", "_base_s")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray):
            raise TypeError("the hash key must be bytes")
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the hash key must be at least {MIN_KEY_BYTES} bytes")
        mac_key = hashlib.blake2s(bytes(key), person=_KEY_PERSON).digest()
        self._base = hashlib.blake2s(
            key=mac_key, digest_size=HASH_HEX_CHARS // 2, person=_TOKEN_PERSON
        )
        self._base_s = self._base.copy()
        self._base_s.update(b"s:")  # strings, the common case, start from this state

    def token(self, data: bytes) -> str:
        """`h:` + the 12 hex digits of the keyed BLAKE2s of `data`."""
        mac = self._base.copy()
        mac.update(data)
        return "h:" + mac.hexdigest()

    def text_token(self, text: str) -> str:
        """`token(canonical_bytes(text))` for a string, without building the bytes."""
        mac = self._base_s.copy()
        mac.update(text.encode("utf-8", "surrogatepass"))
        return "h:" + mac.hexdigest()

    def __call__(self, value: Any) -> str | None:
        """`hash` for one value: NULL stays NULL."""
        if value is None:
            return None
        if value.__class__ is str:
            return self.text_token(value)
        return self.token(canonical_bytes(value))

    def function(self, sample: Iterable[Any] = (), limit: int = 65_536) -> ValueFunction:
        """`hash` for one value, fast on strings, for the cells of one column.

        `sample` (some of the column's values, spread over it) chooses how: when its strings
        repeat (a status, a country), each distinct string is hashed once through a cache of
        at most `limit` tokens that lives as long as the returned function (make one per
        result, so no plaintext outlives it); when they do not, a cache would only cost (a
        string hash and a dict insert per value), so there is none. Either way the tokens are
        those of `__call__`."""
        strings = [v for v in sample if v.__class__ is str]
        new = self._base_s.copy
        other = self.__call__

        def hash_value(value: Any) -> str | None:
            if value.__class__ is str:
                mac = new()
                try:
                    mac.update(value.encode())
                except UnicodeEncodeError:  # lone surrogates
                    mac.update(value.encode("utf-8", "surrogatepass"))
                return "h:" + mac.hexdigest()
            return other(value)

        if len(set(strings)) * 2 > len(strings):
            return hash_value
        cache: dict[str, str] = {}
        get = cache.get
        text_token = self.text_token

        def cached_value(value: Any) -> str | None:
            if value.__class__ is str:
                out = get(value)
                if out is None:
                    out = text_token(value)
                    if len(cache) < limit:
                        cache[value] = out
                return out
            return other(value)

        return cached_value


@functools.lru_cache(maxsize=8)
def hasher_for(key: bytes) -> Hasher:
    """The `Hasher` for `key`, built once per key (the key derivation is not free)."""
    return Hasher(key)


# --------------------------------------------------------------------------- by name


def _check(name: str, composite: bool) -> str:
    strictness(name)
    return "redact" if composite and name == "partial" else name


def value_function(
    name: str,
    *,
    hash_key: bytes | None = None,
    composite: bool = False,
    sample: Iterable[Any] = (),
) -> ValueFunction:
    """The function masking one value with strategy `name`. `composite` (JSON, array or record
    column) turns `partial` into `redact`. `hash` needs `hash_key`; `sample` (some of the
    column's values) tells it whether to cache tokens (see `Hasher.function`): make one per
    column of a result."""
    name = _check(name, composite)
    if name == "hash":
        if hash_key is None:
            raise ValueError("the hash strategy needs a hash key")
        return hasher_for(bytes(hash_key)).function(sample)
    return {"redact": redact, "null": null, "partial": partial}[name]
