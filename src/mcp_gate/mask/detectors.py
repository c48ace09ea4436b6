"""Value detectors: where sensitive values sit inside a string.

Each detector finds spans (`Span(start, end, kind)`); `mask.scan` replaces them. Detectors aim
for few false positives: a regular expression proposes candidates, cheap substring tests skip
whole detectors when their marker is absent, and candidates are validated in Python.

- `email`: `local@domain.tld`, local part of letters (any script), digits and `._%+'-`, domain of
  dot-separated labels of letters, digits, `-` and `_`, and an alphabetic TLD of 2–63 letters.
  Missed: addresses without a dot in the domain (`root@localhost`), quoted local parts,
  IP-literal domains, obfuscations (`alice at example dot com`).
- `credit_card`: 13–19 digits, either one run or groups (first of 4 digits, then 2–6 digits)
  separated consistently by single spaces or dashes; Luhn-valid; a known network prefix and
  length (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro, Mir, RuPay, Troy).
  Not flagged: numbers glued to letters (`cc4242…`), decimal fractions (`0.4242…`), other
  separators (dots, slashes, mixed or double spaces), UATP and unknown networks; any other
  Luhn-valid number with a card prefix (an order id) is flagged.
- `us_ssn`: `NNN-NN-NNNN` or `NNN NN NNNN` following the SSA rules (area not 000, 666 or
  900–999; group not 00; serial not 0000); an unformatted 9-digit run only when labelled
  (`ssn`, `social security`, `soc sec` within the 32 characters before it, or in the caller's
  context such as the column name or JSON key). Missed: unlabelled 9-digit SSNs, other
  separators (`123.45.6789`), SSNs glued to letters.
- `iban`: 2-letter country code of the registry (with its exact length), 2 check digits, the
  BBAN, compact or in space-separated groups; mod-97 checksum valid; case-insensitive.
  Missed: countries outside the table, other separators, IBANs glued to letters or digits.
- `aws_access_key`: access key ids (`AKIA`, `ASIA`, `ABIA`, `ACCA` + 16 upper-case letters or
  digits), and 40-character secret access keys when labelled (`aws_secret_access_key`,
  `SecretAccessKey`, `secret access key`, `aws secret` ending at most 48 characters before
  it, or in the context).
  Missed: unlabelled secret keys, session tokens.
- `jwt`: three (JWS) or five (JWE) base64url segments whose first decodes to a JSON object with
  an `alg`. Missed: headers not starting with `{"` (whitespace before the first key).
- `private_key`: PEM blocks `-----BEGIN … PRIVATE KEY-----` (RSA, EC, DSA, OPENSSH,
  ENCRYPTED, PGP `… PRIVATE KEY BLOCK`) through the matching END line; a block without its END
  line is masked to the end of the text. Missed: PuTTY `.ppk`, bare base64 key bodies, JWK.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Iterable
from typing import NamedTuple

from mcp_gate.policy.model import DETECTORS

__all__ = ["DETECTORS", "Span", "SpanFinder", "find_spans", "luhn_valid"]


class Span(NamedTuple):
    """`text[start:end]` is a sensitive value of `kind` (a detector name)."""

    start: int
    end: int
    kind: str


_span = functools.partial(tuple.__new__, Span)  # Span((start, end, kind)) without a Python frame

# --------------------------------------------------------------------------- email

# "@" is a literal prefix, which `re` finds fast; the local part is matched backwards, on the
# reversed text, from the "@".
_EMAIL_DOMAIN = re.compile(
    # labels (possessive: no backtracking), each dot followed by another label, then the TLD
    r"@(?:[\w-]++\.(?=[\w-]))++[^\W\d_]{2,63}+(?![\w-]|\.[^\W_])"
)
_LOCAL_REVERSED = re.compile(r"[\w.%+'-]*[^\W_]")  # backwards: the local part starts alnum


def _emails(text: str, out: list[Span]) -> None:
    reversed_text = ""
    n = len(text)
    append = out.append
    for m in _EMAIL_DOMAIN.finditer(text):
        at, end = m.span()
        if at == 0:
            continue
        if not reversed_text:
            reversed_text = text[::-1]
        local = _LOCAL_REVERSED.match(reversed_text, n - at)
        if local is None:
            continue
        append(_span((n - local.end(), end, "email")))


# --------------------------------------------------------------------------- numbers

# One scan for card and SSN candidates. The first digit must not continue a word or a number
# (`[^\W_]` is a letter or a digit) and must not follow a decimal point.
_NUMBER = re.compile(
    r"[0-9](?<![^\W_][0-9])(?<![0-9]\.[0-9])"
    r"(?:"
    r"(?P<ssn>(?<![0-9]-[0-9])[0-9]{2}(?P<ss>[- ])[0-9]{2}(?P=ss)[0-9]{4}(?!-[0-9]))"
    r"|(?P<grouped>[0-9]{3}(?P<cs>[- ])[0-9]{4,6}(?:(?P=cs)[0-9]{1,6})+)"
    r"|(?P<run>[0-9]{8}(?:[0-9]{4,10})?)"
    r")"
    r"(?![^\W_])(?!\.[0-9])"
)
_SEPARATOR = re.compile(r"[- ]")
_SSN_LABEL = re.compile(r"ssn|social[\s_-]*sec|soc[\s_.-]*sec", re.IGNORECASE)
_LUHN_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of ASCII digits."""
    total = 0
    double = False
    for ch in reversed(digits):
        d = ord(ch) - 48
        total += _LUHN_DOUBLE[d] if double else d
        double = not double
    return total % 10 == 0


def card_network_ok(digits: str) -> bool:
    """A known issuer prefix (IIN) with a length that network issues."""
    n = len(digits)
    if not 13 <= n <= 19:
        return False
    p2, p3, p4 = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":  # Visa
        return True
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if 2200 <= p4 <= 2204:  # Mir
        return n >= 16
    if p2 in (36, 38, 39) or 300 <= p3 <= 305:  # Diners Club
        return n >= 14
    if 3528 <= p4 <= 3589:  # JCB
        return n >= 16
    if p2 == 50 or 56 <= p2 <= 69:  # Maestro, Discover, UnionPay, RuPay (60, 65)
        return n >= 13 if p2 in (50, 56, 57, 58, 63, 67) else n >= 16
    if p2 in (81, 82) or p3 == 508:  # RuPay
        return n == 16
    if p4 == 9792:  # Troy
        return n == 16
    return False


def _card_ok(digits: str) -> bool:
    return card_network_ok(digits) and luhn_valid(digits)


def _ssn_ok(digits: str) -> bool:
    area = int(digits[:3])
    return area != 0 and area != 666 and area < 900 and digits[3:5] != "00" and digits[5:] != "0000"


def _grouped_cards(text: str, start: int, end: int, out: list[Span]) -> None:
    """Digit groups `a b c d …`: every longest run of consecutive groups that is a card."""
    groups: list[tuple[int, int]] = []
    pos = start
    for part in _SEPARATOR.split(text[start:end]):
        groups.append((pos, pos + len(part)))
        pos += len(part) + 1
    count = len(groups)
    i = 0
    while i < count:
        for size in range(min(count - i, 10), 1, -1):
            window = groups[i : i + size]
            digits = "".join([text[a:b] for a, b in window])
            if 13 <= len(digits) <= 19 and _card_ok(digits):
                out.append(Span(window[0][0], window[-1][1], "credit_card"))
                i += size
                break
        else:
            i += 1


def _numbers(
    text: str, skeleton: bytes, out: list[Span], cards: bool, ssns: bool, context: str
) -> None:
    for lo, hi in _number_windows(skeleton):
        for m in _NUMBER.finditer(text, lo, hi):
            kind = m.lastgroup
            if kind == "run":
                start, end = m.span()
                digits = text[start:end]
                if len(digits) == 9:
                    if (
                        ssns
                        and _ssn_ok(digits)
                        and (
                            _SSN_LABEL.search(text, max(0, start - 32), start) is not None
                            or (context and _SSN_LABEL.search(context) is not None)
                        )
                    ):
                        out.append(Span(start, end, "us_ssn"))
                elif cards and _card_ok(digits):
                    out.append(Span(start, end, "credit_card"))
            elif kind == "ssn":
                if ssns:
                    start, end = m.span()
                    digits = (
                        text[start : start + 3] + text[start + 4 : start + 6] + text[end - 4 : end]
                    )
                    if _ssn_ok(digits):
                        out.append(Span(start, end, "us_ssn"))
            elif cards:
                _grouped_cards(text, m.start(), m.end(), out)


# --------------------------------------------------------------------------- prefilter

# A one-byte-per-character sketch of the text: ASCII digits → "0", ASCII letters → "A", space
# and dash → "-", anything else → "x" (non-Latin-1 characters are first encoded as "?"). Every
# formatted SSN contains "000-00-0000", every grouped card "0000-0000", every unformatted
# candidate is a run of exactly 9 or 13–19 digits not glued to a letter, and every IBAN starts
# with "AA00" after a non-alphanumeric: plain `bytes.find` over the sketch skips the text
# between candidates at C speed, and the regular expressions run only in small windows around
# the hits.
_SKETCH_TABLE = bytes(
    0x30 if chr(b).isdigit() and b < 128
    else 0x41 if chr(b).isalpha() and b < 128
    else 0x2D if b in (0x20, 0x2D)
    else 0x78
    for b in range(256)
)  # fmt: skip
_SKETCH_RUN = re.compile(rb"[0-]*")
_NUMBER_NEEDLES = (b"000-00-0000", b"0000-0000")  # SSN; card groups (first of 4 digits)
_RUN_NEEDLE = b"000000000"
_DIGIT_RUN = re.compile(rb"0*")
_IBAN_NEEDLES = (b"-AA00", b"xAA00")
_BACK = 32  # a candidate containing a needle starts at most this far before it


def sketch(text: str) -> bytes:
    """The prefilter's sketch of `text` (same length, one byte per character)."""
    return text.encode("latin-1", "replace").translate(_SKETCH_TABLE)


def _number_windows(skeleton: bytes) -> list[tuple[int, int]]:
    """(lo, hi) windows of the text in which card and SSN candidates can be."""
    hits: list[tuple[int, int]] = []
    n = len(skeleton)
    for needle in _NUMBER_NEEDLES:
        i = skeleton.find(needle)
        while i >= 0:
            m = _SKETCH_RUN.match(skeleton, i)
            end = m.end() if m is not None else i + len(needle)
            # two characters past the run, so the trailing look-aheads see real text
            hits.append((max(0, i - _BACK), min(n, end + 2)))
            i = skeleton.find(needle, end)
    i = skeleton.find(_RUN_NEEDLE)
    while i >= 0:  # i starts a run of digits: the search resumes past the previous run
        m = _DIGIT_RUN.match(skeleton, i)
        end = m.end() if m is not None else i + len(_RUN_NEEDLE)
        length = end - i
        if (
            (length == 9 or 13 <= length <= 19)
            and (i == 0 or skeleton[i - 1] != 0x41)
            and (end == n or skeleton[end] != 0x41)
        ):
            hits.append((max(0, i - 2), min(n, end + 2)))
        i = skeleton.find(_RUN_NEEDLE, end)
    if len(hits) < 2:
        return hits
    hits.sort()
    merged = [hits[0]]
    for lo, hi in hits[1:]:
        if lo <= merged[-1][1]:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


# --------------------------------------------------------------------------- IBAN

IBAN_LENGTHS: dict[str, int] = {
    # SWIFT IBAN registry
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
    # national IBANs outside the registry
    "AO": 25, "BF": 28, "BJ": 28, "CF": 27, "CG": 27, "CI": 28, "CM": 27, "CV": 25, "DZ": 26,
    "GA": 27, "GQ": 27, "GW": 25, "IR": 26, "KM": 27, "MA": 28, "MG": 27, "ML": 28, "MZ": 25,
    "NE": 28, "SN": 28, "TD": 27, "TG": 28,
}  # fmt: skip

_IBAN = re.compile(r"[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,32}")


def iban_valid(compact: str) -> bool:
    """Country length and the ISO 13616 mod-97 check of an IBAN without spaces."""
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    moved = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _iban_starts(skeleton: bytes) -> list[int]:
    starts = [0] if skeleton[:4] == b"AA00" else []
    for needle in _IBAN_NEEDLES:
        i = skeleton.find(needle)
        while i >= 0:
            starts.append(i + 1)
            i = skeleton.find(needle, i + 4)
    starts.sort()
    return starts


def _ibans(text: str, skeleton: bytes, out: list[Span]) -> None:
    done = 0
    for start in _iban_starts(skeleton):
        if start < done or (start > 0 and text[start - 1].isalnum()):
            continue
        length = IBAN_LENGTHS.get(text[start : start + 2].upper())
        m = _IBAN.match(text, start) if length is not None else None
        if m is None or length is None:
            continue
        # take exactly `length` characters (spaces skipped): the IBAN must end there (the
        # candidate may run on into the next word or IBAN)
        taken: list[str] = []
        stop, end = start, m.end()
        while stop < end and len(taken) < length:
            if text[stop] != " ":
                taken.append(text[stop])
            stop += 1
        if len(taken) != length or (stop < len(text) and text[stop].isalnum()):
            continue
        if iban_valid("".join(taken)):
            out.append(Span(start, stop, "iban"))
            done = stop


# --------------------------------------------------------------------------- AWS

# Both start with a literal or a small class (fast to find); the lookbehinds come after it.
_AWS_KEY_ID = re.compile(r"A(?<![A-Za-z0-9]A)(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_AWS_SECRET = re.compile(r"[A-Za-z0-9/+](?<![A-Za-z0-9/+=].)[A-Za-z0-9/+]{39}(?![A-Za-z0-9/+=])")
_AWS_SECRET_LABEL = re.compile(r"secret[\s_-]*access[\s_-]*key|aws[\s_-]*secret", re.IGNORECASE)
_AWS_SECRET_REACH = 48  # a labelled secret starts at most this far after its label


def _aws_secret(text: str, m: re.Match[str], out: list[Span]) -> None:
    secret = m.group()
    if not (secret.isalpha() or secret.isdigit()):
        out.append(Span(m.start(), m.end(), "aws_access_key"))


def _aws(text: str, out: list[Span], context: str) -> None:
    if "IA" in text or "ACCA" in text:
        out.extend(Span(m.start(), m.end(), "aws_access_key") for m in _AWS_KEY_ID.finditer(text))
    if context and _AWS_SECRET_LABEL.search(context) is not None:
        for m in _AWS_SECRET.finditer(text):
            _aws_secret(text, m, out)
    elif "ecret" in text or "ECRET" in text:
        done = 0
        for label in _AWS_SECRET_LABEL.finditer(text):
            start = max(done, label.end())
            stop = min(len(text), label.end() + _AWS_SECRET_REACH + 41)
            for m in _AWS_SECRET.finditer(text, start, stop):
                if m.end() < stop or stop == len(text):  # the look-ahead saw real text
                    _aws_secret(text, m, out)
                    done = m.end()


# --------------------------------------------------------------------------- JWT

_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"(?:\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)?(?![A-Za-z0-9_-])"
)


def _jwt_header_ok(segment: str) -> bool:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def _jwts(text: str, out: list[Span]) -> None:
    for m in _JWT.finditer(text):
        token = m.group()
        if _jwt_header_ok(token[: token.index(".")]):
            out.append(Span(m.start(), m.end(), "jwt"))


# --------------------------------------------------------------------------- private keys

_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK)?-----")


def _private_keys(text: str, out: list[Span]) -> None:
    pos = 0
    while (m := _PEM_BEGIN.search(text, pos)) is not None:
        footer = f"-----END {m.group(1)}PRIVATE KEY{m.group(2) or ''}-----"
        end = text.find(footer, m.end())
        end = len(text) if end < 0 else end + len(footer)
        out.append(Span(m.start(), end, "private_key"))
        pos = end


# --------------------------------------------------------------------------- all


class SpanFinder:
    """The enabled detectors, resolved once; `find(text)` lists their spans, by start."""

    __slots__ = ("_aws", "_cards", "_email", "_iban", "_jwt", "_numbers", "_pem", "_ssns", "kinds")

    def __init__(self, kinds: Iterable[str]) -> None:
        wanted = frozenset(kinds)
        unknown = wanted - set(DETECTORS)
        if unknown:
            raise ValueError(f"unknown detector(s): {', '.join(sorted(unknown))}")
        self.kinds = wanted
        self._email = "email" in wanted
        self._cards = "credit_card" in wanted
        self._ssns = "us_ssn" in wanted
        self._numbers = self._cards or self._ssns
        self._iban = "iban" in wanted
        self._aws = "aws_access_key" in wanted
        self._jwt = "jwt" in wanted
        self._pem = "private_key" in wanted

    def find(self, text: str, context: str = "") -> list[Span]:
        """Spans of sensitive values in `text`, sorted by start (they may overlap).
        `context` is a label for the whole text (a column name, a JSON key)."""
        out: list[Span] = []
        if self._email and "@" in text:
            _emails(text, out)
        if self._numbers or self._iban:
            skeleton = sketch(text)
            if self._numbers:
                _numbers(text, skeleton, out, self._cards, self._ssns, context)
            if self._iban:
                _ibans(text, skeleton, out)
        if self._aws:
            _aws(text, out, context)
        if self._jwt and "eyJ" in text:
            _jwts(text, out)
        if self._pem and "PRIVATE KEY" in text:
            _private_keys(text, out)
        if len(out) > 1:
            out.sort()
        return out


def find_spans(text: str, kinds: Iterable[str] = DETECTORS, context: str = "") -> list[Span]:
    """Spans of `kinds` in `text` (see `SpanFinder.find`)."""
    return SpanFinder(kinds).find(text, context)
