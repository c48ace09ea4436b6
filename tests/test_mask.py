"""Masking: strategies, compiled [[mask]] rules, masking rows and results by position."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid

import pytest
from mcp import types

from mcp_gate.calls import Principal
from mcp_gate.mask import (
    MASKED,
    STRATEGY_ORDER,
    Hasher,
    MaskPlan,
    mask_result,
    mask_rows,
    partial,
    redact,
    redact_text,
    scan_tool_result,
    scan_tool_result_text,
    scan_value,
    strictest,
    value_function,
)
from mcp_gate.policy.model import MaskRule
from mcp_gate.sqltools.model import Column, QueryResult
from mcp_gate.sqltools.results import structured, text_table

KEY = b"test-key-0123456789abcdef"
OTHER_KEY = b"other-key-0123456789abcdef"
ALICE = Principal("alice", frozenset({"developers"}))
PII_READER = Principal("pat", frozenset({"pii-readers", "developers"}))


def mac_token(key: bytes, data: bytes) -> str:
    """The token as documented, computed independently: keyed BLAKE2s, 6-byte digest."""
    mac_key = hashlib.blake2s(key, person=b"mcpgkey1").digest()
    return "h:" + hashlib.blake2s(data, key=mac_key, digest_size=6, person=b"mcpgtok1").hexdigest()


# --------------------------------------------------------------------------- strategies


@pytest.mark.parametrize(
    "value",
    ["x", "", "José", 42, 3.5, decimal.Decimal("1.50"), True, b"\x00", [1, 2], {"a": 1}],
)
def test_redact_reveals_nothing_but_null_stays_null(value: object) -> None:
    assert redact(value) == MASKED
    assert redact(None) is None
    assert value_function("null")(value) is None
    assert value_function("null")(None) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("john@example.com", "j***@example.com"),
        ("j@example.com", "***@example.com"),
        ("  José.García@correo.es ", "J***@correo.es"),
        ("123-45-6789", "***-**-6789"),
        ("123 45 6789", "***-**-6789"),
        ("123456789", "***-**-6789"),
        ("4242 4242 4242 4242", "************4242"),
        ("4242-4242-4242-4242", "************4242"),
        ("378282246310005", "************0005"),
        ("+1 (415) 555-2671", "***-2671"),
        ("415.555.2671", "***-2671"),
        ("DE89 3704 0044 0532 0130 00", "DE****************3000"),
        ("GB82WEST12345698765432", "GB****************5432"),
        ("Jonathan", "J***"),
        ("日本語のテキスト", "日***"),
        ("Zoë Ünal", "Z***"),
        ("Bob", "***"),
        ("abcd", "***"),
        ("", "***"),
        ("   ", "***"),
        ("2024-05-01", "2***"),
        ('{"email": "a@b.com"}', MASKED),
        ("[1, 2, 3]", MASKED),
        ("(1,secret)", MASKED),
    ],
)
def test_partial_formats(value: str, expected: str) -> None:
    assert partial(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        42,
        4242424242424242,
        3.25,
        decimal.Decimal("12.50"),
        True,
        dt.date(1990, 5, 17),
        dt.datetime(2024, 1, 1, 12, 0),
        uuid.UUID(int=7),
        b"secret",
        [1, 2],
        ["john@example.com"],
        {"email": "john@example.com"},
        ("a", "b"),
    ],
)
def test_partial_never_reveals_non_strings(value: object) -> None:
    assert partial(value) == MASKED


def test_partial_keeps_null() -> None:
    assert partial(None) is None


def test_strategy_order_strictest_wins() -> None:
    assert STRATEGY_ORDER == ("partial", "hash", "redact", "null")
    assert strictest(["partial", "hash"]) == "hash"
    assert strictest(["hash", "redact", "partial"]) == "redact"
    assert strictest(["redact", "null"]) == "null"
    assert strictest([None, "partial", None]) == "partial"
    assert strictest([]) is None
    with pytest.raises(ValueError):
        strictest(["scramble"])


def test_hash_is_a_keyed_mac_of_the_tagged_value() -> None:
    h = Hasher(KEY)
    assert h("alice@example.com") == mac_token(KEY, b"s:alice@example.com")
    assert h(42) == mac_token(KEY, b"n:42")
    assert h(True) == mac_token(KEY, b"b:t")
    assert h(b"\x01\x02") == mac_token(KEY, b"x:\x01\x02")
    token = h("x")
    assert token.startswith("h:") and len(token) == 14
    assert all(c in "0123456789abcdef" for c in token[2:])


def test_hash_cannot_be_computed_without_the_key() -> None:
    # an attacker guessing values offline: no unkeyed hash of the value (or of its tagged
    # encoding) gives the token, and every byte of the key counts, whatever its length
    value = "123-45-6789"
    token = Hasher(KEY)(value)
    for data in (value.encode(), b"s:" + value.encode()):
        for algo in ("sha256", "sha1", "md5", "blake2b", "blake2s"):
            assert hashlib.new(algo, data).hexdigest()[:12] != token[2:]
        assert hashlib.blake2s(data, digest_size=6).hexdigest() != token[2:]
    long_key = bytes(range(100))
    tokens = {
        Hasher(long_key)(value),
        Hasher(long_key[:64])(value),
        Hasher(long_key[:32])(value),
        Hasher(long_key[:-1] + b"\xff")(value),
        Hasher(KEY[:-1] + b"!")(value),
    }
    assert len(tokens) == 5
    assert Hasher(long_key)(value) == mac_token(long_key, b"s:" + value.encode())


def test_hash_stable_joinable_and_key_dependent() -> None:
    a, b = Hasher(KEY), Hasher(bytearray(KEY))
    assert a("alice@example.com") == b("alice@example.com")  # across calls
    # fixed vector: a token never changes for a key (restarts, replicas)
    assert a("alice@example.com") == mac_token(KEY, b"s:alice@example.com")
    # both column functions (with a cache for repeating columns, without for distinct ones)
    cached = value_function("hash", hash_key=KEY, sample=["a", "a", "a", "b"])
    plain = value_function("hash", hash_key=KEY, sample=["a", "b", "c", "d"])
    for fn in (cached, plain):
        for value in ("alice@example.com", "alice@example.com", "", "\ud800", 7, None, [1]):
            assert fn(value) == a(value)
    assert a("alice@example.com") != a("bob@example.com")
    assert Hasher(OTHER_KEY)("alice@example.com") != a("alice@example.com")


def test_hash_canonical_encoding() -> None:
    h = Hasher(KEY)
    # numbers of any SQL type are equal when their values are
    assert h(1) == h(1.0) == h(decimal.Decimal("1.00"))
    assert h(decimal.Decimal("100")) == h(decimal.Decimal("1E+2"))
    # a number and a string with the same digits differ; so do a bool and an int
    assert h(1) != h("1")
    assert h(True) != h(1)
    # what the agent sees as a string joins with the string
    u = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
    assert h(u) == h(str(u))
    assert h(dt.date(2024, 5, 1)) == h("2024-05-01")
    # equal instants in different time zones are equal
    paris = dt.timezone(dt.timedelta(hours=2))
    assert h(dt.datetime(2024, 5, 1, 12, tzinfo=paris)) == h(
        dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    )
    # composite values are hashed whole, key order ignored
    assert h({"a": 1, "b": [1, 2]}) == h({"b": [1, 2], "a": 1})
    assert h([1, 2]) != h([2, 1])
    assert h(None) is None
    assert h("") != h(None)
    assert h("\ud800") == mac_token(KEY, "s:\ud800".encode("utf-8", "surrogatepass"))


def test_hash_needs_a_real_key() -> None:
    with pytest.raises(ValueError):
        Hasher(b"short")
    with pytest.raises(TypeError):
        Hasher("a string key of enough length")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        value_function("hash")


def test_unknown_strategy_is_an_error() -> None:
    with pytest.raises(ValueError):
        value_function("scramble")
    with pytest.raises(ValueError):
        mask_rows([(1,)], ["scramble"])


# --------------------------------------------------------------------------- rules


def plan(*rules: dict[str, object]) -> MaskPlan:
    return MaskPlan([MaskRule.model_validate(r) for r in rules])


def src(*names: str) -> frozenset[str]:
    return frozenset(names)


def test_rule_globs_match_schema_table_column_case_insensitively() -> None:
    p = plan({"columns": ["public.users.email", "*.ssn", "hr.payroll.iban"], "strategy": "partial"})
    assert p.column_strategy(src("public.users.email"), ALICE) == "partial"
    assert p.column_strategy(src("PUBLIC.Users.EMAIL"), ALICE) == "partial"
    assert p.column_strategy(src("public.users.ssn"), ALICE) == "partial"
    assert p.column_strategy(src("hr.people.ssn"), ALICE) == "partial"
    assert p.column_strategy(src("hr.payroll.iban"), ALICE) == "partial"
    assert p.column_strategy(src("public.users.name"), ALICE) is None
    assert p.column_strategy(src("public.users.ssn_verified_at"), ALICE) is None
    assert p.column_strategy(src("other.users.email"), ALICE) is None
    assert p.column_strategy(src(), ALICE) is None  # a literal


def test_rule_patterns_without_schema_match_any_schema() -> None:
    p = plan({"columns": ["users.email", "ssn"], "strategy": "redact"})
    assert p.column_strategy(src("public.users.email"), ALICE) == "redact"
    assert p.column_strategy(src("crm.users.email"), ALICE) == "redact"
    assert p.column_strategy(src("crm.customers.ssn"), ALICE) == "redact"
    assert p.column_strategy(src("crm.customers.email"), ALICE) is None
    assert p.column_strategy(src("crm.myusers.email"), ALICE) is None


def test_any_sensitive_source_masks_the_position() -> None:
    p = plan({"columns": ["*.email"], "strategy": "hash"})
    sources = src("public.users.id", "public.users.name", "public.users.email")
    assert p.column_strategy(sources, ALICE) == "hash"
    assert p.column_strategies([src("public.users.id"), sources], ALICE) == [None, "hash"]


def test_except_groups_exempt_only_from_their_rule() -> None:
    p = plan(
        {"columns": ["*.email"], "strategy": "partial", "except_groups": ["pii-readers"]},
        {"columns": ["*.ssn"], "strategy": "redact"},
    )
    assert p.column_strategy(src("public.users.email"), ALICE) == "partial"
    assert p.column_strategy(src("public.users.email"), PII_READER) is None
    both = src("public.users.email", "public.users.ssn")
    assert p.column_strategy(both, PII_READER) == "redact"
    # exemption names are exact, not globs nor case-folded
    assert p.column_strategy(src("x.y.email"), Principal("p", frozenset({"PII-READERS"}))) == (
        "partial"
    )


def test_strictest_of_several_rules_wins_whatever_the_order() -> None:
    for rules in (
        [{"columns": ["*.email"], "strategy": "partial"}, {"columns": ["public.*"]}],
        [{"columns": ["public.*"]}, {"columns": ["*.email"], "strategy": "partial"}],
    ):
        assert plan(*rules).column_strategy(src("public.users.email"), ALICE) == "redact"
    p = plan(
        {"columns": ["*.ssn"], "strategy": "hash"},
        {"columns": ["*.ssn"], "strategy": "null"},
        {"columns": ["*.ssn"], "strategy": "partial"},
    )
    assert p.column_strategy(src("public.users.ssn"), ALICE) == "null"


def test_explain_says_which_rule_and_source() -> None:
    p = plan(
        {"columns": ["*.email"], "strategy": "partial", "except_groups": ["pii-readers"]},
        {"detect": ["email"]},
        {"columns": ["*.ssn"], "strategy": "redact"},
    )
    reasons = p.explain(src("public.users.id", "public.users.ssn"), PII_READER)
    assert [(r.index, r.sources, r.strategy, r.exempt) for r in reasons] == [
        (2, ("public.users.ssn",), "redact", False)
    ]
    reasons = p.explain(src("public.users.email"), PII_READER)
    assert [(r.index, r.exempt) for r in reasons] == [(0, True)]


def test_detectors_for_principal() -> None:
    p = plan(
        {"detect": ["email", "credit_card"], "strategy": "partial"},
        {"detect": ["credit_card", "us_ssn"], "strategy": "null"},
        {"detect": ["jwt"], "except_groups": ["developers"]},
        {"columns": ["*.ssn"]},
    )
    assert p.detectors_for(ALICE) == [
        ("email", "partial"),
        ("credit_card", "null"),
        ("us_ssn", "null"),
    ]
    assert ("jwt", "redact") in p.detectors_for(Principal("bot"))
    assert plan({"columns": ["*.ssn"]}).detectors_for(ALICE) == []


# --------------------------------------------------------------------------- mask_rows

ROWS = [
    (1, "Alice", "alice@example.com", "123-45-6789", {"k": "v"}),
    (2, "Bob", None, "987-65-4321", None),
]


def test_mask_rows_by_position() -> None:
    out = mask_rows(ROWS, [None, None, "partial", "redact", "null"], hash_key=KEY)
    assert out == [
        (1, "Alice", "a***@example.com", MASKED, None),
        (2, "Bob", None, MASKED, None),
    ]
    assert all(isinstance(r, tuple) for r in out)
    hashed = mask_rows(ROWS, [None, "hash", "hash", None, "hash"], hash_key=KEY)
    h = Hasher(KEY)
    assert hashed[0] == (1, h("Alice"), h("alice@example.com"), "123-45-6789", h({"k": "v"}))
    assert hashed[1][2] is None and hashed[1][4] is None


def test_mask_rows_masks_composite_values_whole() -> None:
    rows = [([{"email": "a@b.com"}], '{"email": "a@b.com"}', ("x", "y"))]
    out = mask_rows(rows, ["partial", "partial", "partial"], types=["jsonb[]", "jsonb", "record"])
    assert out == [(MASKED, MASKED, MASKED)]
    # without types, the values themselves say they are composite
    assert mask_rows(rows, ["partial"] * 3) == [(MASKED, MASKED, MASKED)]


def test_mask_rows_refuses_a_strategy_list_that_does_not_fit() -> None:
    with pytest.raises(ValueError):
        mask_rows(ROWS, ["redact", None])
    with pytest.raises(ValueError):
        mask_rows(ROWS, [None, None])
    with pytest.raises(ValueError):
        mask_rows([(1, 2), (1,)], ["redact", None])


def test_mask_rows_edge_shapes() -> None:
    assert mask_rows([], ["redact"]) == []
    assert mask_rows([(1,)], ["redact"]) == [(MASKED,)]
    assert mask_rows([(1,), (None,)], [None]) == [(1,), (None,)]
    wide = [tuple(range(300))]
    out = mask_rows(wide, ["null" if i % 2 else None for i in range(300)])
    assert out[0][:4] == (0, None, 2, None)


# --------------------------------------------------------------------------- mask_result


def result(columns: list[tuple[str, str]], rows: list[tuple[object, ...]]) -> QueryResult:
    return QueryResult([Column(n, t) for n, t in columns], rows, len(rows), False, 1.0)


def test_mask_result_columns_then_detectors() -> None:
    r = result(
        [("id", "int4"), ("email", "text"), ("note", "text"), ("doc", "jsonb"), ("tags", "text[]")],
        [
            (1, "a@x.com", "card 4242 4242 4242 4242 ok", '{"e": "bob@example.com"}', ["c@x.org"]),
            (2, None, "nothing to see", '{"a": 1}', None),
        ],
    )
    dets = [("email", "redact"), ("credit_card", "partial")]
    masked, flags = mask_result(r, [None, "partial", None, None, None], dets, hash_key=KEY)
    # a rule masked `email`; detectors changed values of `note`, `doc` and `tags`
    assert flags == [False, True, True, True, True]
    assert masked.rows == [
        (1, "***@x.com", "card ************4242 ok", '{"e":"[MASKED]"}', [MASKED]),
        (2, None, "nothing to see", '{"a": 1}', None),
    ]
    assert r.rows[0][1] == "a@x.com"  # the input is not changed
    assert masked.row_count == 2 and masked.elapsed_ms == 1.0
    content = structured(masked, masked=flags)
    assert content["columns"][1] == {"name": "email", "type": "text", "masked": True}
    doc = content["rows"][0][3]
    assert (json.loads(doc) if isinstance(doc, str) else doc) == {"e": MASKED}
    assert [c["masked"] for c in content["columns"]] == flags
    text = text_table(masked, masked=flags)
    assert "a@x.com" not in text and "bob@example.com" not in text and "4242 4242" not in text


def test_mask_result_labelled_and_numeric_values() -> None:
    r = result(
        [("ssn", "int4"), ("card", "int8"), ("amount", "numeric"), ("id", "int8")],
        [(123456789, 4242424242424242, decimal.Decimal("5555555555554444"), 123456789)],
    )
    masked, flags = mask_result(r, [None] * 4, [("us_ssn", "null"), ("credit_card", "redact")])
    assert flags == [True, True, True, False]
    assert masked.rows == [(None, MASKED, MASKED, 123456789)]


def test_mask_result_flags_say_which_columns_detectors_changed() -> None:
    """No column rule applies (a caller exempt from it): a column is flagged exactly when a
    detector changed one of its values, wherever in the column the hit is; a column whose
    values only look alike, or hold a hit elsewhere in the row, stays unflagged."""
    rows = [(i, f"user{i}", "no contact", f"order {i}") for i in range(300)]
    rows[257] = (257, "user257", "reach me at eve@example.org", "order 257")
    rows[3] = (3, "user3", "x", "ssn: 123-45-6789")  # labelled
    r = result([("id", "int4"), ("name", "text"), ("note", "text"), ("memo", "text")], rows)
    dets = [("email", "redact"), ("us_ssn", "null")]
    masked, flags = mask_result(r, [None] * 4, dets)
    assert flags == [False, False, True, True]
    assert masked.rows[257][2] == f"reach me at {MASKED}" and masked.rows[3][3] != rows[3][3]
    assert "123-45-6789" not in str(masked.rows) and "eve@example.org" not in str(masked.rows)
    content = structured(masked, masked=flags)
    assert [c["masked"] for c in content["columns"]] == [False, False, True, True]
    assert text_table(masked, masked=flags).endswith("masked: note, memo")
    clean = result([("note", "text")], [("nothing to see",), ("eve at example dot org",)])
    assert mask_result(clean, [None], dets)[1] == [False]


def test_mask_result_bytea_and_hash_detector() -> None:
    r = result([("raw", "bytea"), ("note", "text")], [(b"mail me: a@example.com", "a@example.com")])
    masked, _ = mask_result(r, [None, None], [("email", "hash")], hash_key=KEY)
    h = Hasher(KEY)
    assert masked.rows == [(h(b"mail me: a@example.com"), h("a@example.com"))]


def test_column_token_equals_detector_token() -> None:
    # a value hashed by a column rule and the same value found by a detector (in free text, in
    # JSON, in another column of the same result, in an upstream tool's text) give one token,
    # so an agent can join them; with a cache (repeating column) and without (distinct values)
    values = ["alice@example.com", "4242 4242 4242 4242", "123-45-6789"]
    dets = [("email", "hash"), ("credit_card", "hash"), ("us_ssn", "hash")]
    for rows in ([(v, f"note {v} end") for v in values], [(values[0], f"x {values[0]}")] * 300):
        r = result([("secret", "text"), ("note", "text")], rows)
        masked, flags = mask_result(r, ["hash", None], dets, hash_key=KEY)
        assert flags == [True, True]  # `note`: by the detectors
        for (token, note), (value, _) in zip(masked.rows, rows, strict=True):
            assert token == Hasher(KEY)(value)
            assert note == f"note {token} end" or note == f"x {token}"
            assert redact_text(f"see {value}", dets, hash_key=KEY) == f"see {token}"
            assert scan_value({"v": [value]}, dets, hash_key=KEY) == {"v": [token]}
            tool_text = scan_tool_result_text(json.dumps({"v": value}), dets, hash_key=KEY)
            assert json.loads(tool_text) == {"v": token}


def test_mask_rows_hash_on_repeating_and_distinct_columns() -> None:
    h = Hasher(KEY)
    repeating = [(i, f"status-{i % 3}") for i in range(1000)]
    distinct = [(i, f"user{i}@example.com") for i in range(1000)]
    mixed = [(i, "same" if i < 300 else i) for i in range(600)]  # cached, then other types
    for rows in (repeating, distinct, mixed):
        out = mask_rows(rows, [None, "hash"], hash_key=KEY)
        assert out == [(i, h(v)) for i, v in rows]
    assert len({t for _, t in mask_rows(distinct, [None, "hash"], hash_key=KEY)}) == 1000


def test_mask_result_private_key_across_rows_is_masked() -> None:
    lines = ["-----BEGIN RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEA", "-----END RSA PRIVATE KEY-----"]
    r = result([("line", "text")], [(line,) for line in [*lines, "after"]])
    masked, _ = mask_result(r, [None], [("private_key", "redact")])
    assert masked.rows == [(MASKED,), (MASKED,), (MASKED,), ("after",)]


def test_mask_result_without_masks_or_detectors() -> None:
    r = result([("a", "text")], [("a@example.com",)])
    masked, flags = mask_result(r, [None], [])
    assert masked.rows == r.rows and flags == [False]
    with pytest.raises(ValueError):
        mask_result(r, [None, None], [])


def test_mask_result_null_strategy_and_hash_key_needed() -> None:
    r = result([("note", "text")], [("write to a@example.com",)])
    masked, _ = mask_result(r, [None], [("email", "null")])
    assert masked.rows == [(None,)]
    with pytest.raises(ValueError):
        mask_result(r, [None], [("email", "hash")])


# --------------------------------------------------------------------------- tool results


def test_scan_tool_result_text_json_and_plain() -> None:
    dets = [("email", "partial"), ("us_ssn", "null"), ("aws_access_key", "redact")]
    doc = {"users": [{"email": "alice@example.com", "ssn": "123-45-6789", "n": 1}]}
    out = json.loads(scan_tool_result_text(json.dumps(doc, indent=2), dets, KEY))
    assert out == {"users": [{"email": "a***@example.com", "ssn": None, "n": 1}]}
    clean = json.dumps({"a": [1, 2, "x"]}, indent=2)
    assert scan_tool_result_text(clean, dets, KEY) is clean  # untouched text kept as is
    plain = "key AKIAIOSFODNN7EXAMPLE for alice@example.com, ssn 123-45-6789"
    assert scan_tool_result_text(plain, dets, KEY) == (
        "key [MASKED] for a***@example.com, ssn [MASKED]"
    )
    assert scan_tool_result_text("not [json", dets, KEY) == "not [json"


def test_scan_tool_result_text_nested_json_and_escapes() -> None:
    dets = [("email", "redact"), ("credit_card", "partial"), ("us_ssn", "redact")]
    # JSON text holding JSON text, an escaped "@", a card as a JSON number, keys as labels
    inner = json.dumps({"ssn": "123456789", "to": "bob@example.org"}).replace("@", "\\u0040")
    doc = json.dumps({"rows": [[1, "a@example.com", 4111111111111111]], "raw": inner})
    out = json.loads(scan_tool_result_text(doc, dets, KEY))
    assert out["rows"] == [[1, MASKED, "************1111"]]
    assert "123456789" not in out["raw"] and "bob" not in out["raw"]
    # a JSON value hit by a `null` detector becomes null; in free text the span is redacted
    assert json.loads(scan_tool_result_text('{"s": "123-45-6789"}', [("us_ssn", "null")])) == {
        "s": None
    }
    assert scan_tool_result_text("ssn 123-45-6789.", [("us_ssn", "null")]) == "ssn [MASKED]."


def test_scan_tool_result_masks_text_resources_and_structured_content() -> None:
    """A whole upstream tool result, as a wrapped server would return it."""
    dets = [("email", "redact"), ("us_ssn", "null"), ("aws_access_key", "redact")]
    picture = types.ImageContent(type="image", data="aGVsbG8=", mime_type="image/png")
    result = types.CallToolResult(
        content=[
            types.TextContent(type="text", text='{"user": {"email": "a@example.com"}}'),
            types.TextContent(type="text", text="key AKIAIOSFODNN7EXAMPLE, ssn 123-45-6789"),
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(
                    uri="file:///export.csv", text="id,email\n1,bob@example.org\n"
                ),
            ),
            picture,
            types.TextContent(type="text", text="nothing to see"),
        ],
        structured_content={"users": [{"email": "a@example.com", "ids": [{"ssn": "123456789"}]}]},
    )
    out = scan_tool_result(result, dets, KEY)
    texts = [getattr(c, "text", None) for c in out.content]
    assert json.loads(texts[0]) == {"user": {"email": MASKED}}
    assert texts[1] == "key [MASKED], ssn [MASKED]"
    assert out.content[2].resource.text == "id,email\n1,[MASKED]\n"
    assert out.content[3] is picture and texts[4] == "nothing to see"
    assert out.structured_content == {"users": [{"email": MASKED, "ids": [{"ssn": None}]}]}
    dumped = out.model_dump_json()
    for value in ("a@example.com", "bob@example.org", "123-45-6789", "123456789", "AKIAIOSF"):
        assert value not in dumped
    assert result.content[0].text.endswith('"a@example.com"}}')  # the input is not changed
    clean = types.CallToolResult(content=[types.TextContent(type="text", text="ok")])
    assert scan_tool_result(clean, dets, KEY) is clean
    assert scan_tool_result(result, [], KEY) is result


def test_mask_result_cells_are_judged_alone() -> None:
    r = result(
        [("doc", "jsonb"), ("note", "text")],
        [
            ('{"e": "alice\\u0040example.com"}', "SSN"),  # an escaped "@" in JSON text
            ("x", "123456789"),  # the label is in the previous cell: not an SSN
            ("ssn: 123456789", "y"),
        ],
    )
    masked, _ = mask_result(r, [None, None], [("email", "redact"), ("us_ssn", "redact")])
    assert masked.rows == [
        ('{"e":"[MASKED]"}', "SSN"),
        ("x", "123456789"),
        (f"ssn: {MASKED}", "y"),
    ]


def test_gateway_messages_keep_their_text_under_a_null_detector() -> None:
    """Error text and tool output pass the detectors; a `null` detector redacts a span in a
    message (a message cannot become None) and nulls a JSON value."""
    from mcp_gate.sqltools.builtin import Masking

    rules = [MaskRule.model_validate({"detect": ["us_ssn"], "strategy": "null"})]
    masking = Masking(lambda: MaskPlan(rules), KEY)
    message = 'mcp-gate: invalid input syntax for type integer: "123-45-6789"'
    assert masking.scrub(message, ALICE) == (
        'mcp-gate: invalid input syntax for type integer: "[MASKED]"'
    )
    assert masking.scrub({"ssn": "123-45-6789", "n": 1}, ALICE) == {"ssn": None, "n": 1}


def test_writes_that_copy_masked_values_into_weaker_columns() -> None:
    p = plan(
        {"columns": ["*.ssn", "*.email"], "strategy": "partial", "except_groups": ["pii-readers"]},
        {"columns": ["*.card_number"], "strategy": "redact"},
    )
    written = [
        ("public.users.name", frozenset({"public.users.ssn", "public.users.id"})),
        ("public.users.email", frozenset({"public.users.email"})),  # masked as strictly
        ("public.users.ssn", frozenset({"public.users.card_number"})),  # partial < redact
        ("public.orders.total", frozenset({"public.orders.total"})),
    ]
    assert p.unmasked_copies(written, ALICE) == [
        ("public.users.name", ("public.users.ssn",)),
        ("public.users.ssn", ("public.users.card_number",)),
    ]
    # a pii-reader sees ssn and email anyway; card_number is still masked for them
    assert p.unmasked_copies(written, PII_READER) == [
        ("public.users.ssn", ("public.users.card_number",))
    ]
