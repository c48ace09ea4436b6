"""policies.toml loading: valid files compile; every kind of mistake is located by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_gate.policy import PolicyError, load_policy, parse_policy
from mcp_gate.policy.model import parse_duration
from mcp_gate.toml_lines import key_lines

ROOT = Path(__file__).resolve().parents[1]


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml")
    return [(p.line, p.key, p.message) for p in info.value.problems]


def test_sample_policy_loads() -> None:
    policy = load_policy(ROOT / "policies.toml")
    names = [r.name for r in policy.model.rule]
    assert "reads" in names and "never unbounded" in names
    assert policy.model.default == "deny"
    assert policy.model.approval.wait == 120
    assert len(policy.version) == 16


def test_version_changes_with_content() -> None:
    a = parse_policy('version = 1\ndefault = "deny"\n')
    b = parse_policy('version = 1\ndefault = "allow"\n')
    assert a.version != b.version


def test_unknown_key_in_inline_table_is_located() -> None:
    text = """version = 1

[[rule]]
name = "reads"
match = { sql_kind = ["select"], tabels = ["x"] }
decision = "allow"
"""
    [(line, key, msg)] = problems(text)
    assert line == 5
    assert key == 'rule "reads" → match.tabels'
    assert "unknown key" in msg


def test_unknown_top_level_and_table_keys() -> None:
    text = 'version = 1\ndefualt = "deny"\n[approval]\napprover = ["dba"]\n'
    found = problems(text)
    assert found[0][:2] == (2, "defualt")
    assert found[1][:2] == (4, "approval.approver")


def test_bad_kind_names_the_list_element_line() -> None:
    text = """version = 1
[[rule]]
name = "w"
match = { sql_kind = [
  "insert",
  "updte",
] }
decision = "deny"
"""
    [(line, key, msg)] = problems(text)
    assert line == 6
    assert key == 'rule "w" → match.sql_kind[1]'
    assert "unknown SQL kind 'updte'" in msg and "update" in msg


def test_bad_risk_flag_glob_and_duration() -> None:
    text = """version = 1
[approval]
wait = "2 minutes"
expires = "-5m"
[[rule]]
name = "a"
match = { sql_risk = ["no_wher"] }
decision = "deny"
[[rule]]
name = "b"
match = { tool = ["sql_[query"] }
decision = "deny"
"""
    found = problems(text)
    by_line = {line: (key, msg) for line, key, msg in found}
    assert "bad duration '2 minutes'" in by_line[3][1]
    assert 4 in by_line  # "-5m" is not a duration either
    assert "unknown risk flag 'no_wher'" in by_line[7][1]
    assert by_line[11][0] == 'rule "b" → match.tool[0]'
    assert "unclosed '['" in by_line[11][1]


def test_duplicate_and_empty_names() -> None:
    text = """version = 1
[[rule]]
name = "reads"
decision = "allow"

[[rule]]
name = "reads"
decision = "deny"

[[rule]]
name = "  "
decision = "deny"
"""
    found = problems(text)
    assert any(
        line == 7 and "two rules are named" in msg and "line 3" in msg for line, _, msg in found
    )
    assert any(line == 11 and "must not be empty" in msg for line, _, msg in found)


def test_errors_from_sub_table_syntax_are_located() -> None:
    text = """version = 1
[[rule]]
name = "first"
decision = "allow"
[[rule]]
name = "second"
decision = "deny"
[rule.match]
sql_kind = "delete"
tool = "a]"
"""
    [(line, key, _msg)] = problems(text)
    assert line == 10
    assert key == 'rule "second" → match.tool[0]'


def test_review_without_approvers_is_rejected() -> None:
    text = 'version = 1\n[[rule]]\nname = "x"\nmatch = { tool = "t" }\ndecision = "review"\n'
    [(line, _key, msg)] = problems(text)
    assert line == 5 and "nobody could approve" in msg


def test_approvers_only_on_review_rules() -> None:
    text = 'version = 1\n[[rule]]\nname = "x"\ndecision = "allow"\napprovers = ["dba"]\n'
    [(line, _key, msg)] = problems(text)
    assert line == 2 and "only to rules with decision" in msg


def test_toml_syntax_error_has_line() -> None:
    [(line, key, msg)] = problems('version = 1\n[[rule]\nname = "x"\n')
    assert line == 2 and key == "" and msg.startswith("not valid TOML")


def test_missing_version_and_wrong_types() -> None:
    found = problems('default = "maybe"\n[approval]\nquorum = 0\n')
    keys = {key for _, key, _ in found}
    assert {"version", "default", "approval.quorum"} <= keys


def test_mask_rules_validated() -> None:
    text = """version = 1
[[mask]]
strategy = "partial"
[[mask]]
detect = ["email", "phone_number"]
"""
    found = problems(text)
    assert found[0][0] == 2 and "needs `columns`, `detect`" in found[0][2]
    assert found[1][0] == 5 and "unknown detector 'phone_number'" in found[1][2]


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"version = 1\n# caf\xe9\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("2m", 120), ("1h30m", 5400), ("7d", 604800), ("250ms", 0.25), (45, 45)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "m", "2 minutes", "1h x", "0s", True, -3])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_locator_handles_strings_that_look_like_toml() -> None:
    text = '''a = "x = [1, 2] # not a comment"
b = """
[[not_a_table]]
c = 1
"""
d = "say \\"[x]\\" = 1"
[t]
e = { f = [ { g = 1 }, { h = "}" } ] }
'''
    import tomllib

    tomllib.loads(text)  # the locator only ever sees text tomllib accepted
    lines = key_lines(text)
    assert lines[("a",)] == 1
    assert lines[("d",)] == 6
    assert lines[("b",)] == 2
    assert ("not_a_table",) not in lines
    assert lines[("t", "e", "f", 1, "h")] == 8
