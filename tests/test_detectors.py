"""Value detectors: true positives, hard negatives, JSON walking, and planted values."""

from __future__ import annotations

import base64
import json
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mcp_gate.mask import DETECTORS, MASKED, Hasher, find_spans, redact_text, scan_value
from mcp_gate.mask import detectors as det
from mcp_gate.mask.detectors import iban_valid, luhn_valid, sketch

KEY = b"test-key-0123456789abcdef"
ALL_REDACT = [(name, "redact") for name in DETECTORS]


def found(
    text: str, kinds: tuple[str, ...] = DETECTORS, context: str = ""
) -> list[tuple[str, str]]:
    return [(text[s.start : s.end], s.kind) for s in find_spans(text, kinds, context)]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JWT = (
    b64url(b'{"alg":"HS256","typ":"JWT"}')
    + "."
    + b64url(b'{"sub":"1234567890","name":"John Doe"}')
    + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


# --------------------------------------------------------------------------- emails


@pytest.mark.parametrize(
    "email",
    [
        "alice@example.com",
        "bob.smith+tag@mail.example.co.uk",
        "o'brien@example.ie",
        "x_y-z%1@sub-domain.example.org",
        "josé.garcía@correo.es",
        "用户@例子.中国",
        "ALICE@EXAMPLE.COM",
    ],
)
def test_email_found(email: str) -> None:
    for text in (email, f"write to {email}.", f"<{email}>", f'"{email}"', f"mailto:{email}"):
        assert found(text, ("email",)) == [(email, "email")], text


@pytest.mark.parametrize(
    "text",
    [
        "please send an email@ the usual address",
        "ping @alice on chat",
        "root@localhost",
        "pkg@1.2.3",
        "a@b.c",
        "x@example.com2",
        "user@@example.com",
        "the @ sign",
        "@example.com",
    ],
)
def test_email_hard_negatives(text: str) -> None:
    assert found(text, ("email",)) == []


# --------------------------------------------------------------------------- cards


@pytest.mark.parametrize(
    "card",
    [
        "4111111111111111",  # Visa
        "4242 4242 4242 4242",
        "4000-0566-5566-5556",
        "4222222222222",  # Visa, 13 digits
        "5555555555554444",  # Mastercard
        "2223003122003222",  # Mastercard 2-series
        "378282246310005",  # Amex
        "3782 822463 10005",
        "6011111111111117",  # Discover
        "3530111333300000",  # JCB
        "30569309025904",  # Diners, 14 digits
        "6200000000000005",  # UnionPay
        "6759649826438453",  # Maestro
        "2200000000000004",  # Mir
    ],
)
def test_card_found(card: str) -> None:
    assert luhn_valid(card.replace(" ", "").replace("-", ""))
    for text in (card, f"card: {card}.", f"({card})", f"paid with {card}, thanks", f"[{card}]"):
        assert found(text, ("credit_card",)) == [(card, "credit_card")], text


def test_cards_side_by_side() -> None:
    text = "4242 4242 4242 4242 4000 0566 5566 5556,5555555555554444;378282246310005"
    assert [v for v, _ in found(text, ("credit_card",))] == [
        "4242 4242 4242 4242",
        "4000 0566 5566 5556",
        "5555555555554444",
        "378282246310005",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # not Luhn-valid
        "4242 4242 4242 4241",
        "1716460000000",  # ms timestamp (no card network starts with 1)
        "1000000000000009",  # Luhn-valid, no network
        "9000000000000008",
        "20240523123456789",  # compact timestamp
        "2024-05-23 12:34:56",
        "2024-05-23T12:34:56.123456Z",
        "order 2024052312345678",
        "INV4111111111111111",  # glued to letters
        "4111111111111111x",
        "0.4111111111111111",  # a decimal fraction
        "4111111111111111.25",
        "41111111111111111111111",  # longer run
        "123e4567-e89b-12d3-a456-426614174000",
        "+1 415 555 2671",
        "(415) 555-2671",
        "192.168.100.200",
        "version 4.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1",
        "4242.4242.4242.4242",  # dots are not separators
    ],
)
def test_card_hard_negatives(text: str) -> None:
    assert found(text, ("credit_card",)) == []


# --------------------------------------------------------------------------- SSNs


@pytest.mark.parametrize(
    "text",
    ["123-45-6789", "SSN 123 45 6789", "ssn:078-05-1120", "(123-45-6789)", "899-99-9999"],
)
def test_ssn_found(text: str) -> None:
    assert [kind for _, kind in found(text, ("us_ssn",))] == ["us_ssn"]


@pytest.mark.parametrize(
    ("text", "context"),
    [
        ("SSN: 123456789", ""),
        ("Social Security Number 123456789", ""),
        ("soc. sec. 123456789", ""),
        ("123456789", "ssn"),
        ("123456789", "customer_social_security"),
    ],
)
def test_unformatted_ssn_only_when_labelled(text: str, context: str) -> None:
    assert found(text, ("us_ssn",), context) == [("123456789", "us_ssn")]
    assert found("123456789", ("us_ssn",)) == []
    assert found("order 123456789 shipped", ("us_ssn",)) == []


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "987-65-4321",
        "123-00-4567",
        "123-45-0000",
        "123-45-67890",
        "1-123-45-6789",
        "123-45-6789-1",
        "555-123-4567",  # a phone number
        "123-456-7890",
        "123.45.6789",
        "A123-45-6789",
        "123-45 6789",  # mixed separators
        "2024-05-23",
        "SSN: 666123456",
    ],
)
def test_ssn_hard_negatives(text: str) -> None:
    assert found(text, ("us_ssn",)) == []


# --------------------------------------------------------------------------- IBAN


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "FR1420041010050500013M02606",
        "NO9386011117947",
        "gb82west12345698765432",
    ],
)
def test_iban_found(iban: str) -> None:
    assert iban_valid(iban.replace(" ", ""))
    for text in (iban, f"IBAN: {iban}.", f"pay {iban} EUR", f"({iban})"):
        assert found(text, ("iban",)) == [(iban, "iban")], text


@pytest.mark.parametrize(
    "text",
    [
        "DE89370400440532013001",  # checksum
        "DE8937040044053201300",  # length for DE
        "XX89370400440532013000",  # unknown country
        "ABDE89370400440532013000",  # glued
        "DE89370400440532013000X",
        "DE89.3704.0044.0532.0130.00",
        "AB12 some words follow here",
        "US12345678901234567890",
    ],
)
def test_iban_hard_negatives(text: str) -> None:
    assert found(text, ("iban",)) == []


def test_iban_followed_by_another() -> None:
    text = "DE89 3704 0044 0532 0130 00 GB82WEST12345698765432 XX12 NO9386011117947"
    assert [v for v, _ in found(text, ("iban",))] == [
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "NO9386011117947",
    ]


# --------------------------------------------------------------------------- secrets


def test_aws_keys() -> None:
    assert found("key=AKIAIOSFODNN7EXAMPLE;", ("aws_access_key",)) == [
        ("AKIAIOSFODNN7EXAMPLE", "aws_access_key")
    ]
    assert found("ASIAY34FZKBOKMUTVV7A", ("aws_access_key",)) != []
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert found(f"aws_secret_access_key = {secret}", ("aws_access_key",)) == [
        (secret, "aws_access_key")
    ]
    assert found(secret, ("aws_access_key",), context="SecretAccessKey") != []
    for text in (
        "AKIAIOSFODNN7EXAMPL",  # too short
        "XAKIAIOSFODNN7EXAMPLE",
        "AKIAIOSFODNN7EXAMPLEX",
        "akiaiosfodnn7example",
        "ASIA-PACIFIC region",
        secret,  # a secret key without its label
        f"secret: {'a' * 40}",
    ):
        assert found(text, ("aws_access_key",)) == [], text


def test_jwt() -> None:
    assert found(f"Authorization: Bearer {JWT}", ("jwt",)) == [(JWT, "jwt")]
    unsigned = b64url(b'{"alg":"none"}') + "." + b64url(b'{"sub":"x"}') + "."
    assert found(unsigned, ("jwt",)) == [(unsigned, "jwt")]
    not_jwt = b64url(b'{"not":"a jwt"}') + ".abc.def"
    garbage = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"  # a header alone
    for text in (not_jwt, garbage, "eyJzzzz.aaaa.bbbb", "aGVsbG8gd29ybGQ=.eyJhIjoxfQ.x"):
        assert found(text, ("jwt",)) == [], text


def test_private_keys() -> None:
    for kind in ("RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", ""):
        block = (
            f"-----BEGIN {kind}PRIVATE KEY-----\nMIIEow\nIBAAK==\n-----END {kind}PRIVATE KEY-----"
        )
        assert found(f"key:\n{block}\ntail", ("private_key",)) == [(block, "private_key")]
    pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nabc\n-----END PGP PRIVATE KEY BLOCK-----"
    assert found(pgp, ("private_key",)) == [(pgp, "private_key")]
    truncated = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow..."
    assert found(f"x {truncated}", ("private_key",)) == [(truncated, "private_key")]
    public = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"
    assert found(public, ("private_key",)) == []


# --------------------------------------------------------------------------- text


def test_redact_text_strategies() -> None:
    text = "a@example.com 4242424242424242 123-45-6789 DE89370400440532013000 AKIAIOSFODNN7EXAMPLE"
    partial = [(name, "partial") for name in DETECTORS]
    assert redact_text(text, partial) == (
        "***@example.com ************4242 ***-**-6789 DE****************3000 AKIA************MPLE"
    )
    assert redact_text(text, ALL_REDACT) == " ".join([MASKED] * 5)
    assert redact_text(text, [(name, "null") for name in DETECTORS]) == " ".join([MASKED] * 5)
    hashed = redact_text("mail a@example.com", [("email", "hash")], hash_key=KEY)
    assert hashed == "mail " + Hasher(KEY)("a@example.com")
    assert redact_text(f"token {JWT} end", partial) == "token eyJ*** end"
    block = "-----BEGIN EC PRIVATE KEY-----\nabc\n-----END EC PRIVATE KEY-----"
    assert redact_text(block, partial) == (
        "-----BEGIN EC PRIVATE KEY-----***-----END EC PRIVATE KEY-----"
    )
    # only the detectors asked for
    assert redact_text(text, [("email", "redact")]).startswith(f"{MASKED} 4242424242424242")
    assert redact_text("nothing here", ALL_REDACT) == "nothing here"
    assert redact_text("", ALL_REDACT) == ""


def test_overlapping_spans_merge_with_the_strictest_strategy() -> None:
    text = "4242424242424242@example.com"  # a card that is also an email's local part
    out = redact_text(text, [("email", "partial"), ("credit_card", "redact")])
    assert out == MASKED


def test_unknown_detector_and_hash_without_key() -> None:
    with pytest.raises(ValueError):
        redact_text("x", [("phone", "redact")])
    with pytest.raises(ValueError):
        redact_text("x", [("email", "hash")])


# --------------------------------------------------------------------------- JSON walking


def test_scan_value_walks_keys_values_and_nesting() -> None:
    value = {
        "alice@example.com": {"cards": ["4242 4242 4242 4242", 5555555555554444], "n": 7},
        "ok": [1, 2.5, None, True, "plain"],
        "t": ("x", "bob@example.com"),
    }
    out = scan_value(value, ALL_REDACT)
    assert out == {
        MASKED: {"cards": [MASKED, MASKED], "n": 7},
        "ok": [1, 2.5, None, True, "plain"],
        "t": ("x", MASKED),
    }
    assert value["alice@example.com"]["cards"][0] == "4242 4242 4242 4242"  # not mutated
    clean = {"a": [1, {"b": "c"}]}
    assert scan_value(clean, ALL_REDACT) is clean


def test_scan_value_json_in_strings() -> None:
    inner = json.dumps({"email": "alice@example.com", "n": 1}, indent=2)
    out = scan_value({"payload": inner}, ALL_REDACT)
    assert json.loads(out["payload"]) == {"email": MASKED, "n": 1}
    clean_inner = json.dumps({"n": 1}, indent=2)
    assert scan_value({"payload": clean_inner}, ALL_REDACT)["payload"] is clean_inner
    escaped = '{"email": "alice\\u0040example.com"}'  # the "@" escaped in JSON
    assert json.loads(scan_value(escaped, ALL_REDACT)) == {"email": MASKED}
    nested = json.dumps({"doc": json.dumps({"ssn": "123-45-6789"})})
    assert "123-45-6789" not in scan_value(nested, ALL_REDACT)
    assert scan_value("[not json 123-45-6789", ALL_REDACT) == f"[not json {MASKED}"


def test_scan_value_null_strategy_and_keys() -> None:
    dets = [("email", "null"), ("us_ssn", "null")]
    out = scan_value({"a@example.com": "x", "b@example.com": "y", "v": "ssn 123-45-6789"}, dets)
    assert out == {MASKED: "x", f"{MASKED} #2": "y", "v": None}
    assert scan_value({"ssn": "123456789"}, dets) == {"ssn": None}
    assert scan_value({"ssn": 123456789}, dets) == {"ssn": None}
    assert scan_value({"id": 123456789}, dets) == {"id": 123456789}


def test_scan_value_private_key_lines() -> None:
    lines = ["-----BEGIN RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEA", "-----END RSA PRIVATE KEY-----"]
    out = scan_value({"key": [*lines, "after"]}, ALL_REDACT)
    assert out == {"key": [MASKED, MASKED, MASKED, "after"]}
    text = json.dumps({"key": lines})
    assert "MIIEowIBAAKCAQEA" not in scan_value(text, ALL_REDACT)


# --------------------------------------------------------------------------- prefilter


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 -.AZaz:/", max_size=120))
def test_prefilter_windows_find_what_a_full_scan_finds(text: str) -> None:
    windowed: list[det.Span] = []
    full: list[det.Span] = []
    det._numbers(text, sketch(text), windowed, True, True, "ssn")
    original = det._number_windows
    try:
        det._number_windows = lambda skeleton: [(0, len(skeleton))]  # type: ignore[assignment]
        det._numbers(text, sketch(text), full, True, True, "ssn")
    finally:
        det._number_windows = original
    assert sorted(windowed) == sorted(full)


def test_sketch_keeps_positions() -> None:
    text = "Zoë 日本 4242-42 x"
    assert len(sketch(text)) == len(text)
    assert sketch(text) == b"AAx-xx-0000-00-A"


# --------------------------------------------------------------------------- planted values


def luhn_complete(body: str) -> str:
    for d in "0123456789":
        if luhn_valid(body + d):
            return body + d
    raise AssertionError


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix, length = draw(
        st.sampled_from([("4", 16), ("4", 13), ("51", 16), ("2221", 16), ("34", 15), ("6011", 16)])
    )
    body = prefix + draw(
        st.text("0123456789", min_size=length - 1 - len(prefix), max_size=length - 1 - len(prefix))
    )
    card = luhn_complete(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    if sep and length == 16:
        card = sep.join(card[i : i + 4] for i in range(0, 16, 4))
    return card


@st.composite
def ssns(draw: st.DrawFn) -> str:
    area = draw(st.integers(1, 899).filter(lambda a: a != 666))
    group = draw(st.integers(1, 99))
    serial = draw(st.integers(1, 9999))
    sep = draw(st.sampled_from(["-", " "]))
    return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}"


@st.composite
def emails(draw: st.DrawFn) -> str:
    alnum = string.ascii_lowercase + string.digits
    local = draw(st.text(alnum, min_size=1, max_size=3)) + draw(
        st.text(alnum + "._+-", max_size=12)
    )
    labels = draw(st.lists(st.text(alnum, min_size=1, max_size=10), min_size=1, max_size=3))
    tld = draw(st.text(string.ascii_lowercase, min_size=2, max_size=6))
    return f"{local}@{'.'.join(labels)}.{tld}"


noise = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    planted=st.one_of(cards(), ssns(), emails()),
    before=noise,
    after=noise,
    strategy=st.sampled_from(["redact", "partial", "hash", "null"]),
)
def test_planted_values_never_survive(planted: str, before: str, after: str, strategy: str) -> None:
    assume(planted not in before and planted not in after)
    text = f"{before} {planted} {after}"
    dets = [(name, strategy) for name in DETECTORS]
    out = redact_text(text, dets, hash_key=KEY)
    assert planted not in out
    value = scan_value({"k": [text, {"x": text}]}, dets, hash_key=KEY)
    assert planted not in json.dumps(value, ensure_ascii=False)
