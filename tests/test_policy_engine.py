"""The policy engine: strictest wins, unless exempts, quantifiers fail toward strict."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_gate.calls import Principal, ToolCall
from mcp_gate.inspect.model import AwsInspection, Inspection, Risk, SqlInspection, SqlKind
from mcp_gate.policy import load_policy, parse_policy
from mcp_gate.policy.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
ALICE = Principal("alice", frozenset({"developers"}))
DBA = Principal("bob", frozenset({"dba"}))


def engine(body: str, default: str = "deny") -> Engine:
    text = f'version = 1\ndefault = "{default}"\n[approval]\napprovers = ["dba"]\n{body}'
    return parse_policy(text).engine


def sql(
    *kinds: SqlKind,
    reads: tuple[str, ...] = (),
    writes: tuple[str, ...] = (),
    risks: tuple[Risk, ...] = (),
    columns: tuple[str, ...] = (),
) -> Inspection:
    strictest = kinds[-1] if kinds else SqlKind.OTHER
    return Inspection(
        sql=SqlInspection(
            text="-- test",
            kind=strictest,
            kinds=kinds,
            statement_count=len(kinds),
            relations_read=frozenset(reads),
            relations_written=frozenset(writes),
            columns=frozenset(columns),
            risks=frozenset(risks),
        )
    )


QUERY = ToolCall("sql_query", {"sql": "-- test"}, "builtin", "demo")


def test_no_match_gives_default() -> None:
    e = engine('[[rule]]\nname = "r"\nmatch = { tool = "other" }\ndecision = "allow"\n')
    d = e.decide(ALICE, QUERY, sql(SqlKind.SELECT))
    assert d.decision == "deny" and d.default_used and d.reasons[0] == "default"
    assert "no rule matched" in d.summary()


def test_strictest_wins_and_all_matches_are_listed() -> None:
    e = engine(
        """
[[rule]]
name = "reads"
match = { sql_kind = ["select"] }
decision = "allow"
[[rule]]
name = "sensitive table"
match = { tables = ["hr.*"] }
decision = "review"
[[rule]]
name = "no catalogs"
match = { sql_risk = ["system_catalog"] }
decision = "deny"
"""
    )
    d = e.decide(ALICE, QUERY, sql(SqlKind.SELECT, reads=("hr.payroll",)))
    assert d.decision == "review"
    assert d.deciding == ("sensitive table",)
    assert [h.rule for h in d.matched] == ["reads", "sensitive table"]
    assert d.approvers == ("dba",) and d.quorum == 1
    d = e.decide(
        ALICE, QUERY, sql(SqlKind.SELECT, reads=("hr.payroll",), risks=(Risk.SYSTEM_CATALOG,))
    )
    assert d.decision == "deny" and d.deciding == ("no catalogs",)
    assert d.reasons == ["no catalogs", "system_catalog"]


def test_unless_exempts_by_group() -> None:
    e = engine(
        """
[[rule]]
name = "writes"
match = { sql_kind = ["delete"] }
unless = { groups = ["dba"] }
decision = "review"
""",
        default="allow",
    )
    assert e.decide(ALICE, QUERY, sql(SqlKind.DELETE)).decision == "review"
    d = e.decide(DBA, QUERY, sql(SqlKind.DELETE))
    assert d.decision == "allow" and d.default_used
    assert [h.rule for h in d.exempted] == ["writes"]
    assert d.exempted[0].exempted_by == ("groups: dba matches",)


def test_allow_needs_every_statement_kind() -> None:
    e = engine('[[rule]]\nname = "reads"\nmatch = { sql_kind = ["select"] }\ndecision = "allow"\n')
    assert e.decide(ALICE, QUERY, sql(SqlKind.SELECT, SqlKind.SELECT)).decision == "allow"
    # `SELECT 1; DROP TABLE t` must not be granted by a rule about selects.
    assert e.decide(ALICE, QUERY, sql(SqlKind.SELECT, SqlKind.DDL)).decision == "deny"


def test_deny_triggers_on_any_statement_kind() -> None:
    e = engine(
        '[[rule]]\nname = "no ddl"\nmatch = { sql_kind = ["ddl"] }\ndecision = "deny"\n',
        default="allow",
    )
    assert e.decide(ALICE, QUERY, sql(SqlKind.SELECT, SqlKind.DDL)).decision == "deny"


def test_allow_on_tables_needs_every_table() -> None:
    e = engine('[[rule]]\nname = "orders"\nmatch = { tables = ["orders"] }\ndecision = "allow"\n')
    assert e.decide(ALICE, QUERY, sql(SqlKind.SELECT, reads=("public.orders",))).decision == "allow"
    joined = sql(SqlKind.SELECT, reads=("public.orders", "public.users"))
    assert e.decide(ALICE, QUERY, joined).decision == "deny"
    # A call touching no table is not granted by a rule about tables.
    assert e.decide(ALICE, QUERY, sql(SqlKind.SELECT)).decision == "deny"


def test_unless_on_restriction_must_cover_every_table() -> None:
    e = engine(
        """
[[rule]]
name = "hr"
match = { tables = ["hr.*"] }
unless = { tables = ["hr.directory"] }
decision = "deny"
""",
        default="allow",
    )
    assert e.decide(ALICE, QUERY, sql(SqlKind.SELECT, reads=("hr.directory",))).decision == "allow"
    both = sql(SqlKind.SELECT, reads=("hr.directory", "hr.payroll"))
    assert e.decide(ALICE, QUERY, both).decision == "deny"


def test_globs_are_case_insensitive_and_cross_dots() -> None:
    e = engine(
        '[[rule]]\nname = "r"\nmatch = { tables = ["PUBLIC.User*"] }\ndecision = "deny"\n',
        default="allow",
    )
    assert e.decide(ALICE, QUERY, sql(SqlKind.SELECT, reads=("public.users",))).decision == "deny"
    assert e.decide(ALICE, QUERY, sql(SqlKind.SELECT, reads=("hr.users",))).decision == "allow"


def test_columns_before_lineage_restrict_by_name_and_never_grant() -> None:
    deny = engine(
        '[[rule]]\nname = "r"\nmatch = { columns = ["public.users.ssn"] }\ndecision = "deny"\n',
        default="allow",
    )
    # Column as written (`u.ssn`): the restricting rule matches on the name alone.
    assert deny.decide(ALICE, QUERY, sql(SqlKind.SELECT, columns=("u.ssn",))).decision == "deny"
    grant = engine(
        '[[rule]]\nname = "r"\nmatch = { columns = ["public.users.ssn"] }\ndecision = "allow"\n'
    )
    assert grant.decide(ALICE, QUERY, sql(SqlKind.SELECT, columns=("u.ssn",))).decision == "deny"
    resolved = Inspection(sql=sql(SqlKind.SELECT).sql, columns=frozenset({"public.users.ssn"}))
    assert grant.decide(ALICE, QUERY, resolved).decision == "allow"


def test_estimated_rows_unknown_is_reported() -> None:
    e = engine(
        """
[[rule]]
name = "bulk"
match = { sql_kind = ["select"], estimated_rows = { gt = 10000 } }
decision = "review"
""",
        default="allow",
    )
    assert e.needs_estimate
    d = e.decide(ALICE, QUERY, sql(SqlKind.SELECT))
    assert d.decision == "allow" and d.unknown == ('rule "bulk": estimated_rows unknown',)
    big = Inspection(sql=sql(SqlKind.SELECT).sql, estimated_rows=50_000)
    assert e.decide(ALICE, QUERY, big).decision == "review"
    small = Inspection(sql=sql(SqlKind.SELECT).sql, estimated_rows=10_000)
    assert e.decide(ALICE, QUERY, small).decision == "allow"


def test_arguments_tool_principal_connection() -> None:
    e = engine(
        """
[[rule]]
name = "etc"
match = { tool = "read_*", upstream = "fs", arguments = { path = "/etc/*" } }
decision = "deny"
[[rule]]
name = "prod by bots"
match = { connection = "prod*", principal = "svc-*" }
decision = "review"
""",
        default="allow",
    )
    read = ToolCall("read_file", {"path": "/etc/passwd"}, "fs")
    assert e.decide(ALICE, read, Inspection()).decision == "deny"
    assert (
        e.decide(ALICE, ToolCall("read_file", {"path": "/tmp/x"}, "fs"), Inspection()).decision
        == "allow"
    )
    assert e.decide(ALICE, ToolCall("read_file", {}, "fs"), Inspection()).decision == "allow"
    bot = Principal("svc-reporting")
    prod = ToolCall("sql_query", {}, "builtin", "prod-eu")
    assert e.decide(bot, prod, Inspection()).decision == "review"
    assert e.decide(ALICE, prod, Inspection()).decision == "allow"


def test_non_string_arguments_are_matched_as_json() -> None:
    e = engine(
        '[[rule]]\nname = "r"\nmatch = { arguments = { opts = "*\\"force\\": true*" } }\n'
        'decision = "deny"\n',
        default="allow",
    )
    assert (
        e.decide(ALICE, ToolCall("t", {"opts": {"force": True}}), Inspection()).decision == "deny"
    )
    assert (
        e.decide(ALICE, ToolCall("t", {"opts": {"force": False}}), Inspection()).decision == "allow"
    )


def test_aws_keys() -> None:
    e = engine(
        """
[[rule]]
name = "destructive"
match = { aws_access = ["write"], aws_action = ["s3:Delete*"] }
decision = "review"
approvers = ["cloud-admins"]
quorum = 2
""",
        default="allow",
    )
    delete = Inspection(
        aws=AwsInspection(frozenset({"s3:DeleteBucket"}), frozenset({"write"}), frozenset())
    )
    d = e.decide(ALICE, ToolCall("call_aws", {}, "aws"), delete)
    assert d.decision == "review" and d.approvers == ("cloud-admins",) and d.quorum == 2
    listing = Inspection(aws=AwsInspection(frozenset({"s3:ListBuckets"}), frozenset({"list"})))
    assert e.decide(ALICE, ToolCall("call_aws", {}, "aws"), listing).decision == "allow"
    # No AWS inspection at all: AWS keys never match.
    assert e.decide(ALICE, ToolCall("call_aws", {}, "aws"), Inspection()).decision == "allow"


def test_approvers_union_and_quorum_max() -> None:
    e = engine(
        """
[[rule]]
name = "a"
match = { tool = "t" }
decision = "review"
approvers = ["dba"]
[[rule]]
name = "b"
match = { tool = "t" }
decision = "review"
approvers = ["security"]
quorum = 2
""",
        default="allow",
    )
    d = e.decide(ALICE, ToolCall("t"), Inspection())
    assert d.approvers == ("dba", "security") and d.quorum == 2
    assert d.to_meta("ap_1") == {
        "decision": "review",
        "reasons": ["a", "b"],
        "approval_id": "ap_1",
    }


def test_empty_match_matches_every_call() -> None:
    e = engine('[[rule]]\nname = "all"\ndecision = "review"\n', default="allow")
    d = e.decide(ALICE, ToolCall("anything"), Inspection())
    assert d.decision == "review" and d.matched[0].why == ("matches every call",)


@pytest.mark.parametrize(
    ("principal", "kinds", "risks", "expected", "rule"),
    [
        (ALICE, (SqlKind.SELECT,), (), "allow", "reads"),
        (ALICE, (SqlKind.DELETE,), (), "review", "writes need a DBA"),
        (DBA, (SqlKind.DELETE,), (), "allow", "DBAs write directly"),
        (ALICE, (SqlKind.DELETE,), (Risk.NO_WHERE,), "deny", "never unbounded"),
        (DBA, (SqlKind.DELETE,), (Risk.NO_WHERE,), "deny", "never unbounded"),
        (ALICE, (SqlKind.DDL,), (), "deny", "no schema or privilege changes"),
        (ALICE, (SqlKind.SELECT,), (Risk.UNKNOWN_FUNCTION,), "review", "unknown functions"),
    ],
)
def test_sample_policy(principal, kinds, risks, expected, rule) -> None:
    e = load_policy(ROOT / "policies.toml").engine
    d = e.decide(principal, QUERY, sql(*kinds, risks=risks))
    assert d.decision == expected
    assert d.reasons[0] == rule
