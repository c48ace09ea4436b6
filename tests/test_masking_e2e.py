"""Masking end to end: the adversarial lineage corpus, every read run through `sql_query` of a
real gateway on a real PostgreSQL holding sensitive data. No sensitive value may appear
anywhere in a result (text or structured); clean columns stay unmasked; what cannot be traced
is refused."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from gateway_helpers import MCP_GATE, Gateway, running_gateway, text_of
from lineage_corpus import CORPUS, SENSITIVE_VALUES, SETUP_SQL
from mcp_gate.inspect.model import SqlKind
from mcp_gate.inspect.sql import inspect_sql
from pgserver import admin_execute, dsn_with, unique_name

pytestmark = pytest.mark.slow

POLICY = """version = 1
default = "allow"

[approval]
approvers = ["dba"]
wait = "50ms"   # held calls come back at once: nobody approves in this test

[[rule]]
name = "peeking through predicates"
match = { sql_risk = ["sensitive_predicate"] }
decision = "review"

[[mask]]
columns = ["*.email", "*.ssn", "*.card_number", "*.Email", "*.iban", "*.Secret", "*.s",
           "*.contact", "*.account", "*.email_lower"]
strategy = "redact"
except_groups = ["pii-readers"]

[[mask]]
detect = ["email", "credit_card", "us_ssn", "iban"]
strategy = "redact"
"""

# Reads only: the corpus's DML cases would change the data the other cases check.
READS = [
    case
    for case in CORPUS
    if case.runs and inspect_sql(case.sql).kind in (SqlKind.SELECT, SqlKind.OTHER)
]


@pytest.fixture(scope="module")
def gateway(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    name = unique_name("test_masking")
    reader = unique_name("reader")
    password = secrets.token_urlsafe(12)
    admin_execute(pg_dsn, f'CREATE DATABASE "{name}"')
    db = dsn_with(pg_dsn, database=name)
    admin_execute(db, *SETUP_SQL)
    admin_execute(
        pg_dsn,
        f"CREATE ROLE \"{reader}\" LOGIN PASSWORD '{password}'",
        f'GRANT CONNECT ON DATABASE "{name}" TO "{reader}"',
    )
    admin_execute(
        db,
        f'GRANT USAGE ON SCHEMA public, hr TO "{reader}"',
        f'GRANT SELECT ON ALL TABLES IN SCHEMA public, hr TO "{reader}"',
    )
    folder = tmp_path_factory.mktemp("masking")
    policies = folder / "policies.toml"
    policies.write_text(POLICY)
    os.environ["GATE_TEST_READER_PW"] = password
    try:
        with running_gateway(
            folder,
            dsn=dsn_with(db, user=reader, password=""),
            write_dsn=None,
            env={},
            policies=policies,
            extra='schemas = ["public", "hr"]',
        ) as gw:
            yield gw
    finally:
        admin_execute(pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin_execute(pg_dsn, f'DROP ROLE IF EXISTS "{reader}"')


def leaked(result) -> list[str]:
    everything = (text_of(result) + json.dumps(result.structured_content or {})).lower()
    return [v for v in SENSITIVE_VALUES if v.lower() in everything]


@pytest.mark.anyio
async def test_corpus_never_leaks(gateway: Gateway) -> None:
    assert len(READS) >= 150, len(READS)
    token = gateway.token("agent", "developers")
    counts = {"masked": 0, "refused": 0, "clean": 0}
    async with gateway.client(token) as client:
        for case in READS:
            result = await client.call_tool("sql_query", {"sql": case.sql, "max_rows": 50})
            assert not leaked(result), f"{case.id}: leaked {leaked(result)}"
            if result.is_error:
                counts["refused"] += 1
                continue
            assert not case.unresolved, f"{case.id}: ran although lineage is unresolvable"
            assert not case.pred, f"{case.id}: sensitive predicate was not held for review"
            columns = result.structured_content["columns"]
            assert len(columns) == case.n, case.id
            flagged = {i for i, c in enumerate(columns) if c["masked"]}
            assert case.sensitive <= flagged, f"{case.id}: {case.sensitive} not all masked"
            assert flagged <= case.sensitive, f"{case.id}: clean columns {flagged} masked"
            counts["masked" if flagged else "clean"] += 1
    assert counts["masked"] > 50 and counts["clean"] > 20, counts


@pytest.mark.anyio
async def test_masked_column_values_are_replaced(gateway: Gateway) -> None:
    """Column masks replace every value by position and flag the column in the result."""
    token = gateway.token("agent", "developers")
    async with gateway.client(token) as client:
        result = await client.call_tool("sql_query", {"sql": "SELECT id, email FROM users"})
        assert not result.is_error, text_of(result)
        assert [c["masked"] for c in result.structured_content["columns"]] == [False, True]
        assert {r[1] for r in result.structured_content["rows"]} == {"[MASKED]"}


@pytest.mark.anyio
async def test_detector_hits_are_flagged_for_callers_exempt_from_the_column_rule(
    gateway: Gateway,
) -> None:
    """`pii-readers` are exempt from the column rule, not from the value detectors: where a
    detector replaced values, the column says `masked: true` (the text table too); a column
    the detectors left alone does not."""
    sql = "SELECT id, email, name FROM users ORDER BY id"
    async with gateway.client(gateway.token("pat", "pii-readers")) as client:
        exempt = await client.call_tool("sql_query", {"sql": sql})
        # A column no rule names, carrying an email anyway (a hostile alias of a literal).
        smuggled = await client.call_tool(
            "sql_query", {"sql": "SELECT id, 'write to ' || 'eve@example.org' AS name FROM users"}
        )
    async with gateway.client(gateway.token("agent", "developers")) as client:
        ruled = await client.call_tool("sql_query", {"sql": sql})
    for result in (exempt, smuggled, ruled):
        assert not result.is_error, text_of(result)
        assert not leaked(result) and "eve@example.org" not in text_of(result)
    content = exempt.structured_content
    assert [c["masked"] for c in content["columns"]] == [False, True, False]
    assert {row[1] for row in content["rows"]} == {"[MASKED]"}
    assert text_of(exempt).rstrip().endswith("masked: email")
    columns = smuggled.structured_content["columns"]
    assert [c["masked"] for c in columns] == [False, True]
    assert {r[1] for r in smuggled.structured_content["rows"]} == {"write to [MASKED]"}
    # Without the exemption the rule masks it: the same flags, whichever masked it.
    assert [c["masked"] for c in ruled.structured_content["columns"]] == [False, True, False]


@pytest.mark.anyio
async def test_error_text_is_scrubbed(gateway: Gateway) -> None:
    """PostgreSQL quotes the offending value in cast errors; the detectors catch it."""
    token = gateway.token("agent", "developers")
    async with gateway.client(token) as client:
        result = await client.call_tool("sql_query", {"sql": "SELECT email::int FROM users"})
        assert result.is_error
        assert not leaked(result), text_of(result)


def test_policy_test_explains_masked_columns(gateway: Gateway) -> None:
    """`mcp-gate policy test --config` traces against the live catalog, as the gateway does."""
    policies = gateway.folder / "policies.toml"
    sql = (
        "SELECT u.name, lower(u.email) AS e, o.total FROM users u JOIN orders o ON o.user_id = u.id"
    )
    done = subprocess.run(
        [*MCP_GATE, "policy", "test", str(policies), "--config", str(gateway.config),
         "--sql", sql, "--json"],
        env=gateway.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    outputs = answer["columns"]["outputs"]
    assert [o["masked"] for o in outputs] == [None, "redact", None]
    assert outputs[1]["sources"] == ["public.users.email"]
    assert outputs[1]["rules"][0]["patterns"][0] == "*.email"
    assert answer["decision"]["decision"] == "allow"
    peek = subprocess.run(
        [*MCP_GATE, "policy", "test", str(policies), "--config", str(gateway.config),
         "--sql", "SELECT id FROM users WHERE ssn LIKE '1%'", "--json"],
        env=gateway.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    answer = json.loads(peek.stdout)
    assert answer["columns"]["sensitive_predicates"] == ["public.users.ssn"]
    assert answer["decision"]["decision"] == "review"
    human = subprocess.run(
        [*MCP_GATE, "policy", "test", str(policies), "--config", str(gateway.config),
         "--sql", sql],
        env={**gateway.env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "public.users.email" in human.stdout and "redact" in human.stdout
