"""The demo's customers table, attacked (issue 4, "Done when").

The demo's own sample data (`mcp_gate.demo.sample`) in a real PostgreSQL, served by a real
gateway with the repository's own `policies.toml` (only `approval.wait` shortened, so held
calls come back at once), queried by an agent through a real SDK client. Every way of writing
a query an attacker would try is fired at it; for each, the result (text, structuredContent,
the decision in `_meta`, the error text when refused) must hold none of the demo's real
emails, SSNs or card numbers, in their raw forms or obvious transformations (case, digits
only, reversed, hex, base64, md5/sha256), and queries over clean columns must come back with
those columns unmasked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from gateway_helpers import MCP_GATE, Gateway, text_of
from pgserver import run_sync
from shop_helpers import sample_policy, sample_shop, shop_gateway

pytestmark = pytest.mark.slow

MASKED = "[MASKED]"


@dataclass
class Demo:
    gateway: Gateway
    secrets: dict[str, list[str]]  # kind -> the real values in the demo's data
    needles: dict[str, str]  # lower-cased form -> which value it reveals


def forms(kind: str, value: str) -> set[str]:
    """A sensitive value and the obvious transformations of it an attacker could read off."""
    out = {value, value[::-1]}
    digits = "".join(c for c in value if c.isdigit())
    if kind in ("ssn", "card_number", "phone", "iban") and len(digits) >= 9:
        out |= {digits, digits[::-1]}
    if kind == "card_number":
        out |= {
            " ".join(digits[i : i + 4] for i in range(0, 16, 4)),
            "-".join(digits[i : i + 4] for i in range(0, 16, 4)),
        }
    if kind == "email":
        local = value.partition("@")[0]
        if len(local) >= 6:
            out.add(local + "@")  # the local part (the domain alone is what partial shows)
    raw = value.encode()
    out |= {raw.hex(), base64.b64encode(raw).decode(), hashlib.md5(raw).hexdigest()}
    out.add(hashlib.sha256(raw).hexdigest())
    return {f.lower() for f in out}


@pytest.fixture(scope="module")
def demo(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with sample_shop(pg_dsn, "test_demo_masking") as shop:

        async def read_secrets() -> dict[str, list[str]]:
            conn = await asyncpg.connect(shop.dsn)
            try:
                rows = await conn.fetch(
                    "SELECT email, ssn, card_number, phone FROM customers ORDER BY id"
                )
                ibans = await conn.fetch(
                    "SELECT DISTINCT iban FROM payments WHERE iban IS NOT NULL"
                )
            finally:
                await conn.close()
            kinds = ("email", "ssn", "card_number", "phone")
            found = {k: [r[k] for r in rows if r[k]] for k in kinds}
            found["iban"] = [r["iban"] for r in ibans]
            return found

        values = run_sync(read_secrets)
        assert len(values["email"]) == 2000 and len(values["card_number"]) == 2000
        needles = {
            f: f"{kind} {v}" for kind, vs in values.items() for v in vs for f in forms(kind, v)
        }
        folder = tmp_path_factory.mktemp("demo_masking")
        with shop_gateway(shop, folder, sample_policy(wait='"50ms"')) as gw:
            yield Demo(gw, values, needles)


def find_leaks(text: str, needles: dict[str, str]) -> list[str]:
    """The sensitive values (in any of their forms) that occur anywhere in `text`."""
    text = text.lower()
    lengths = sorted({len(n) for n in needles})
    found: set[str] = set()
    for i in range(len(text)):
        for n in lengths:
            hit = needles.get(text[i : i + n])
            if hit is not None:
                found.add(hit)
    return sorted(found)


def everything(result: Any) -> str:
    return "\n".join(
        [
            text_of(result),
            json.dumps(result.structured_content, ensure_ascii=False),
            json.dumps(result.meta, ensure_ascii=False, default=str),
        ]
    )


def verdict(result: Any) -> str:
    return ((result.meta or {}).get("io.mcp-gate/decision") or {}).get("decision", "?")


# --------------------------------------------------------------------------- the attacks


@dataclass(frozen=True)
class Attack:
    """One query and what must happen to it.

    `expect`: "ok" (allowed, runs; exactly the positions in `masked` are masked), "error"
    (allowed, PostgreSQL refuses it: its message must not quote a value), "deny" (refused by
    the gateway: policy or `lineage_unresolved`), "review" (held for a human, not run).
    `hint`: the masked positions are plain copies of a column, so the policy's `partial`
    may show its hint (`***-**-6789`); otherwise they must be `[MASKED]` whole."""

    technique: str
    sql: str
    expect: str
    masked: tuple[int, ...] = ()
    tool: str = "sql_query"
    hint: bool = False


ATTACKS: list[Attack] = [
    # ---- clean queries stay clean
    Attack("clean", "SELECT id, name, country, created_at FROM customers", "ok"),
    Attack(
        "clean",
        "SELECT o.id, o.status, o.total, c.name FROM orders o "
        "JOIN customers c ON c.id = o.customer_id",
        "ok",
    ),
    Attack("clean", "SELECT country, count(*) FROM customers GROUP BY country", "ok"),
    Attack("clean", "SELECT id, amount, method, paid_at FROM payments", "ok"),
    Attack("clean", "SELECT name || ' (' || country || ')' AS who FROM customers", "ok"),
    Attack("clean", "SELECT max(total), min(created_at) FROM orders", "ok"),
    # ---- the columns themselves, every spelling
    Attack("plain", "SELECT * FROM customers", "ok", (2, 3, 4, 5), hint=True),
    Attack("plain", "SELECT c.* FROM customers c", "ok", (2, 3, 4, 5), hint=True),
    Attack("plain", "SELECT * FROM payments", "ok", (4,), hint=True),
    Attack(
        "plain", "SELECT id, email, ssn, card_number FROM customers", "ok", (1, 2, 3), hint=True
    ),
    Attack(
        "plain",
        "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id",
        "ok",
        (7, 8, 9, 10),
        hint=True,
    ),
    Attack(
        "aliases",
        "SELECT email AS e, ssn AS not_secret, card_number AS x FROM customers",
        "ok",
        (0, 1, 2),
        hint=True,
    ),
    Attack("aliases", "SELECT cu.email FROM public.customers AS cu", "ok", (0,), hint=True),
    Attack("aliases", "SELECT e FROM customers AS c(i, n, e)", "ok", (0,), hint=True),
    Attack(
        "aliases", "SELECT x.e FROM (SELECT email AS e FROM customers) x", "ok", (0,), hint=True
    ),
    Attack(
        "aliases",
        "SELECT t.card FROM (SELECT card_number card FROM customers) AS t(card)",
        "ok",
        (0,),
        hint=True,
    ),
    Attack(
        "identifiers",
        'SELECT "c"."card_number", "ssn" FROM "customers" "c"',
        "ok",
        (0, 1),
        hint=True,
    ),
    Attack("identifiers", "SELECT CUSTOMERS.SSN, Email FROM CUSTOMERS", "ok", (0, 1), hint=True),
    Attack("identifiers", 'SELECT "SSN" FROM customers', "deny"),
    Attack(
        "identifiers", "SELECT public.customers.email FROM public.customers", "ok", (0,), hint=True
    ),
    # ---- casts
    Attack(
        "casts",
        "SELECT ssn::text, card_number::varchar(30), email::bytea FROM customers",
        "ok",
        (0, 1, 2),
    ),
    Attack("casts", "SELECT CAST(card_number AS numeric) FROM customers", "ok", (0,)),
    Attack("casts", "SELECT card_number::bigint FROM customers", "ok", (0,)),
    Attack("casts", "SELECT convert_to(email, 'UTF8') FROM customers", "ok", (0,)),
    Attack("casts", "SELECT ssn::int FROM customers", "error"),
    Attack("casts", "SELECT card_number::int FROM customers", "error"),
    Attack("casts", "SELECT email::int FROM customers", "error"),
    Attack("casts", "SELECT (ssn || 'x')::int FROM customers", "error"),
    Attack("casts", "SELECT replace(ssn, '-', '')::int4 / 0 FROM customers", "error"),
    Attack("casts", "SELECT ('x' || replace(ssn, '-', ''))::int FROM customers", "error"),
    Attack("casts", "SELECT replace(ssn, '-', '')::smallint FROM customers", "error"),
    Attack("casts", "SELECT card_number::uuid FROM customers", "error"),
    Attack("casts", "SELECT email::regclass FROM customers", "error"),
    Attack("casts", "SELECT ssn::regclass FROM customers", "error"),
    Attack("casts", "SELECT email::json FROM customers", "error"),
    Attack("casts", "SELECT email::xml FROM customers", "error"),
    Attack("casts", "SELECT ssn::date FROM customers", "error"),
    Attack("casts", "SELECT ('{' || ssn)::text[] FROM customers", "error"),
    Attack("casts", "SELECT make_date(2000, substr(ssn, 1, 3)::int, 1) FROM customers", "error"),
    Attack("casts", "SELECT chr(replace(ssn, '-', '')::int) FROM customers", "error"),
    # ---- string functions
    Attack(
        "functions",
        "SELECT substr(card_number, 1, 13), substring(ssn from 1 for 9) FROM customers",
        "ok",
        (0, 1),
    ),
    Attack(
        "functions",
        "SELECT reverse(ssn), reverse(card_number), reverse(email) FROM customers",
        "ok",
        (0, 1, 2),
    ),
    Attack("functions", "SELECT overlay(ssn placing 'X' from 1 for 1) FROM customers", "ok", (0,)),
    Attack(
        "functions",
        "SELECT translate(card_number, '0123456789', 'abcdefghij') FROM customers",
        "ok",
        (0,),
    ),
    Attack("functions", "SELECT regexp_replace(email, '@', ' at ') FROM customers", "ok", (0,)),
    Attack(
        "functions",
        "SELECT encode(convert_to(ssn, 'UTF8'), 'hex'), "
        "encode(email::bytea, 'base64') FROM customers",
        "ok",
        (0, 1),
    ),
    Attack("functions", "SELECT md5(ssn), sha256(card_number::bytea) FROM customers", "ok", (0, 1)),
    Attack(
        "functions",
        "SELECT upper(email), lower(ssn), initcap(email) FROM customers",
        "ok",
        (0, 1, 2),
    ),
    Attack(
        "functions",
        "SELECT left(card_number, 8), right(card_number, 8) FROM customers",
        "ok",
        (0, 1),
    ),
    Attack(
        "functions",
        "SELECT split_part(email, '@', 1), lpad(ssn, 20, '*') FROM customers",
        "ok",
        (0, 1),
    ),
    Attack(
        "functions", "SELECT to_hex(card_number::bigint), ascii(ssn) FROM customers", "ok", (0, 1)
    ),
    Attack(
        "functions",
        "SELECT quote_literal(email), quote_ident(ssn), btrim(ssn, '0') FROM customers",
        "ok",
        (0, 1, 2),
    ),
    Attack(
        "functions", "SELECT length(email), position('@' in email) FROM customers", "ok", (0, 1)
    ),
    Attack(
        "functions",
        "SELECT id, coalesce(ssn, 'none'), nullif(email, '') FROM customers",
        "ok",
        (1, 2),
    ),
    Attack(
        "functions",
        "SELECT greatest(ssn, card_number), least(email, name) FROM customers",
        "ok",
        (0, 1),
    ),
    # ---- concatenation and format
    Attack(
        "concat", "SELECT 'ssn: ' || ssn || ' card: ' || card_number FROM customers", "ok", (0,)
    ),
    Attack(
        "concat",
        "SELECT concat(name, ':', email), concat_ws('|', ssn, phone) FROM customers",
        "ok",
        (0, 1),
    ),
    Attack(
        "concat",
        "SELECT format('%s/%s', ssn, card_number), format('%I', email) FROM customers",
        "ok",
        (0, 1),
    ),
    Attack("concat", "SELECT string_agg(ssn, ',') FROM customers", "ok", (0,)),
    Attack("concat", "SELECT id || ssn FROM customers", "ok", (0,)),
    # ---- arrays
    Attack("arrays", "SELECT array_agg(email) FROM customers", "ok", (0,)),
    Attack(
        "arrays",
        "SELECT ARRAY[ssn, card_number], string_to_array(ssn, '-') FROM customers",
        "ok",
        (0, 1),
    ),
    Attack("arrays", "SELECT array_to_string(ARRAY[card_number], ',') FROM customers", "ok", (0,)),
    Attack("arrays", "SELECT (ARRAY[ssn])[1] FROM customers", "ok", (0,)),
    Attack("arrays", "SELECT x FROM customers, unnest(ARRAY[email, ssn]) AS u(x)", "review"),
    Attack("arrays", "SELECT ARRAY(SELECT card_number FROM customers LIMIT 3)", "ok", (0,)),
    # ---- JSON
    Attack("json", "SELECT row_to_json(c) FROM customers c", "ok", (0,)),
    Attack("json", "SELECT to_jsonb(c) ->> 'email' FROM customers c", "ok", (0,)),
    Attack("json", "SELECT to_json(c.*) FROM customers c", "ok", (0,)),
    Attack("json", "SELECT json_build_object('e', email, 's', ssn) FROM customers", "ok", (0,)),
    Attack("json", "SELECT jsonb_agg(c) FROM customers c", "ok", (0,)),
    Attack("json", "SELECT json_agg(card_number) FROM customers", "ok", (0,)),
    Attack("json", "SELECT jsonb_build_array(ssn) ->> 0 FROM customers", "ok", (0,)),
    Attack(
        "json", "SELECT to_jsonb(ssn)::text, to_json(email) #>> '{}' FROM customers", "ok", (0, 1)
    ),
    Attack("json", "SELECT jsonb_object_agg(id, email) FROM customers", "ok", (0,)),
    Attack("json", "SELECT row_to_json(t) FROM (SELECT id, ssn FROM customers) t", "ok", (0,)),
    Attack(
        "json",
        "SELECT j ->> 'card_number' FROM (SELECT to_jsonb(c) j FROM customers c) s",
        "ok",
        (0,),
    ),
    Attack("json", "SELECT value FROM customers c, jsonb_each_text(to_jsonb(c))", "review"),
    # ---- whole rows and records
    Attack("rows", "SELECT c FROM customers c", "ok", (0,)),
    Attack("rows", "SELECT c::text FROM customers c", "ok", (0,)),
    Attack("rows", "SELECT (c).ssn, (c).id FROM customers c", "ok", (0,), hint=True),
    Attack("rows", "SELECT (c).* FROM customers c", "ok", (2, 3, 4, 5), hint=True),
    Attack("rows", "SELECT ROW(email, ssn) FROM customers", "ok", (0,)),
    Attack("rows", "SELECT customers FROM customers", "ok", (0,)),
    Attack("rows", "SELECT (x).email FROM (SELECT c AS x FROM customers c) s", "ok", (0,)),
    # ---- LATERAL, subqueries
    Attack(
        "lateral",
        "SELECT l.s FROM customers c, LATERAL (SELECT c.ssn AS s) l",
        "ok",
        (0,),
        hint=True,
    ),
    Attack(
        "lateral",
        "SELECT c.id, l.* FROM customers c CROSS JOIN LATERAL (SELECT c.card_number, c.name) l",
        "ok",
        (1,),
        hint=True,
    ),
    Attack(
        "subquery",
        "SELECT (SELECT email FROM customers c2 WHERE c2.id = o.customer_id) FROM orders o",
        "ok",
        (0,),
    ),
    Attack("subquery", "SELECT id, (SELECT max(ssn) FROM customers) FROM orders", "ok", (1,)),
    Attack(
        "subquery",
        "SELECT * FROM (SELECT * FROM (SELECT ssn FROM customers) a) b",
        "ok",
        (0,),
        hint=True,
    ),
    Attack("subquery", "SELECT EXISTS (SELECT 1 FROM customers WHERE ssn LIKE '1%')", "review"),
    Attack(
        "subquery", "SELECT id FROM customers WHERE ssn IN (SELECT ssn FROM customers)", "review"
    ),
    # ---- CTEs
    Attack(
        "cte",
        "WITH x AS (SELECT email, ssn FROM customers) SELECT * FROM x",
        "ok",
        (0, 1),
        hint=True,
    ),
    Attack(
        "cte",
        "WITH x(a, b) AS (SELECT card_number, id FROM customers) SELECT b, a FROM x",
        "ok",
        (1,),
        hint=True,
    ),
    Attack(
        "cte",
        "WITH a AS (SELECT ssn s FROM customers), b AS (SELECT s AS t FROM a) SELECT t FROM b",
        "ok",
        (0,),
        hint=True,
    ),
    Attack(
        "cte",
        "WITH RECURSIVE r(n, v) AS (SELECT 1, ssn FROM customers WHERE id = 1 "
        "UNION ALL SELECT n + 1, v FROM r WHERE n < 3) SELECT n, v FROM r",
        "ok",
        (1,),
        hint=True,
    ),
    Attack(
        "cte",
        "WITH RECURSIVE r(a, b) AS (SELECT name, email FROM customers WHERE id = 2 "
        "UNION ALL SELECT b, a FROM r WHERE length(a) < 0) SELECT a, b FROM r",
        "review",
    ),
    Attack("cte", "WITH c AS (SELECT * FROM customers) SELECT c FROM c", "ok", (0,)),
    Attack(
        "cte",
        "WITH m AS MATERIALIZED (SELECT email FROM customers) SELECT * FROM m",
        "ok",
        (0,),
        hint=True,
    ),
    # ---- set operations
    Attack(
        "setops",
        "SELECT name FROM customers UNION ALL SELECT email FROM customers",
        "ok",
        (0,),
        hint=True,
    ),
    Attack(
        "setops", "SELECT id, name FROM customers UNION SELECT id, ssn FROM customers", "review"
    ),
    Attack("setops", "SELECT ssn FROM customers INTERSECT SELECT '101-11-1013'", "review"),
    Attack("setops", "SELECT name FROM customers EXCEPT SELECT ssn FROM customers", "review"),
    Attack(
        "setops",
        "SELECT DISTINCT s FROM (SELECT ssn FROM customers WHERE id = 1 "
        "UNION ALL SELECT '101-11-1013') t(s)",
        "review",
    ),
    Attack("setops", "SELECT country FROM customers UNION SELECT country FROM customers", "ok"),
    Attack("setops", "SELECT 'x' UNION ALL SELECT ssn FROM customers", "ok", (0,)),
    Attack("setops", "VALUES ((SELECT min(email) FROM customers))", "ok", (0,)),
    # ---- window functions and aggregates
    Attack("window", "SELECT lag(ssn) OVER (ORDER BY id), id FROM customers", "ok", (0,)),
    Attack(
        "window",
        "SELECT first_value(card_number) OVER w FROM customers WINDOW w AS (PARTITION BY country)",
        "ok",
        (0,),
    ),
    Attack("window", "SELECT id, row_number() OVER (ORDER BY ssn) FROM customers", "review"),
    Attack(
        "aggregates",
        "SELECT min(ssn), max(card_number), mode() WITHIN GROUP (ORDER BY email) FROM customers",
        "ok",
        (0, 1, 2),
    ),
    Attack("aggregates", "SELECT count(DISTINCT ssn), count(*) FROM customers", "ok", (0,)),
    # ---- CASE on the value
    Attack(
        "case",
        "SELECT CASE WHEN ssn LIKE '1%' THEN 'one' ELSE 'other' END FROM customers",
        "ok",
        (0,),
    ),
    Attack(
        "case", "SELECT id, CASE WHEN card_number > '45' THEN name END FROM customers", "ok", (1,)
    ),
    Attack(
        "case",
        "SELECT ssn LIKE '1%', email ~ '^ada', card_number = '4' FROM customers",
        "ok",
        (0, 1, 2),
    ),
    # ---- predicates as an oracle: held for review, never allowed
    Attack("predicates", "SELECT id FROM customers WHERE ssn LIKE '123-%'", "review"),
    Attack("predicates", "SELECT id FROM customers WHERE email = 'ada.10@example.com'", "review"),
    Attack("predicates", "SELECT id, name FROM customers ORDER BY card_number", "review"),
    Attack("predicates", "SELECT id FROM customers ORDER BY 1, ssn DESC", "review"),
    Attack("predicates", "SELECT count(*) FROM customers GROUP BY substr(ssn, 1, 1)", "review"),
    Attack("predicates", "SELECT DISTINCT ON (email) id FROM customers", "review"),
    Attack(
        "predicates",
        "SELECT country FROM customers GROUP BY country HAVING max(ssn) > '5'",
        "review",
    ),
    Attack(
        "predicates",
        "SELECT o.id FROM orders o JOIN customers c "
        "ON c.id = o.customer_id AND c.card_number LIKE '4%'",
        "review",
    ),
    Attack("predicates", "SELECT count(*) FILTER (WHERE ssn < '5') FROM customers", "review"),
    Attack(
        "predicates",
        "SELECT id FROM customers LIMIT (SELECT length(min(ssn)) FROM customers)",
        "review",
    ),
    Attack(
        "predicates", "SELECT id FROM (SELECT id, ssn s FROM customers) x WHERE s > '5'", "review"
    ),
    Attack(
        "predicates",
        "SELECT c.id FROM customers c, "
        "generate_series(1, CASE WHEN c.ssn LIKE '1%' THEN 1 ELSE 0 END) g",
        "review",
    ),
    Attack("predicates", "SELECT id, regexp_matches(ssn, '^1') FROM customers", "review"),
    Attack(
        "predicates", "SELECT id, generate_series(1, length(email) - 17) FROM customers", "review"
    ),
    Attack("predicates", "SELECT id, count(*) OVER (PARTITION BY ssn) FROM customers", "review"),
    Attack(
        "predicates",
        "SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 WHERE c.ssn > '5')",
        "review",
    ),
    Attack(
        "predicates",
        "SELECT id FROM customers OFFSET (SELECT count(*) FROM customers WHERE card_number < '45')",
        "review",
    ),
    Attack(
        "predicates",
        "SELECT count(*) FROM customers GROUP BY GROUPING SETS ((email), ())",
        "review",
    ),
    Attack(
        "predicates",
        "SELECT id FROM customers c WHERE jsonb_path_exists(to_jsonb(c), "
        "'$.ssn ? (@ like_regex \"^1\")')",
        "review",
    ),
    # ---- more disguises
    Attack("disguise", "SELECT/**/ssn/**/FROM/**/customers", "ok", (0,), hint=True),
    Attack("disguise", "SELECT $$card: $$ || card_number FROM customers", "ok", (0,)),
    Attack("disguise", "SELECT encode(sha224(email::bytea), 'hex') FROM customers", "ok", (0,)),
    Attack(
        "disguise",
        "SELECT to_tsvector('simple', email), pg_column_size(ssn) FROM customers",
        "ok",
        (0, 1),
    ),
    Attack(
        "disguise", "SELECT ssn::name, card_number::char(19), email::citext FROM customers", "deny"
    ),
    Attack(
        "disguise",
        "SELECT jsonb_path_query_first(to_jsonb(c), '$.card_number') FROM customers c",
        "ok",
        (0,),
    ),
    Attack(
        "disguise",
        "SELECT (SELECT string_agg(x, '') FROM regexp_split_to_table(ssn, '') AS x) FROM customers",
        "review",
    ),
    Attack("disguise", 'SELECT id, (ssn)::text COLLATE "C" FROM customers', "ok", (1,)),
    # ---- functions that run SQL from a string, read files, reach out: never passed
    Attack("dynamic", "SELECT query_to_xml('select ssn from customers', true, false, '')", "deny"),
    Attack("dynamic", "SELECT table_to_xml('customers', true, false, '')", "deny"),
    Attack("dynamic", "SELECT cursor_to_xml('c', 10, true, false, '')", "deny"),
    Attack("dynamic", "SELECT * FROM ts_stat('select to_tsvector(email) from customers')", "deny"),
    Attack("dynamic", "SELECT pg_read_file('/etc/passwd')", "deny"),
    Attack("dynamic", "SELECT lo_import('/etc/passwd')", "deny"),
    Attack("dynamic", "SELECT lo_get(16384)", "deny"),
    Attack("dynamic", "SELECT dblink('dbname=x', 'select ssn from customers')", "deny"),
    Attack(
        "dynamic",
        "SELECT * FROM dblink('dbname=x', 'select ssn from customers') AS t(s text)",
        "deny",
    ),
    Attack("dynamic", "SELECT current_setting('server_version'), current_user", "ok"),
    Attack("dynamic", "SELECT set_config('search_path', 'x', false)", "deny"),
    Attack("dynamic", "SELECT xpath('/a', query_to_xml('select 1', true, false, ''))", "deny"),
    # ---- statistics and catalogs: pg_stats holds column values (most_common_vals,
    # histogram_bounds), and the gateway cannot trace catalog views: refused for everyone
    Attack(
        "catalog",
        "SELECT attname, most_common_vals, histogram_bounds FROM pg_stats "
        "WHERE tablename = 'customers'",
        "deny",
    ),
    Attack("catalog", "SELECT * FROM pg_catalog.pg_stats", "deny"),
    Attack("catalog", "SELECT stavalues1 FROM pg_statistic", "deny"),
    Attack("catalog", "SELECT s.most_common_vals::text FROM pg_stats s", "deny"),
    Attack(
        "catalog", "SELECT * FROM information_schema.columns WHERE table_name = 'customers'", "deny"
    ),
    # ---- statements other than a read
    Attack("statements", "SELECT ssn INTO TEMP t FROM customers", "deny"),
    Attack("statements", "COPY customers TO STDOUT", "deny"),
    Attack("statements", "CREATE VIEW v AS SELECT ssn FROM customers", "deny"),
    Attack("statements", "SELECT 1; SELECT ssn FROM customers", "deny"),
    Attack("statements", "EXPLAIN ANALYZE SELECT ssn FROM customers", "deny"),
    Attack("statements", "PREPARE p AS SELECT ssn FROM customers", "deny"),
    Attack("statements", "DO $$ BEGIN PERFORM 1; END $$", "deny"),
    Attack("statements", "UPDATE customers SET name = ssn WHERE id = 1 RETURNING name", "deny"),
    Attack("statements", "DELETE FROM customers WHERE id = -1 RETURNING *", "review"),
    Attack("statements", "SELECT ssn FROM customers FOR UPDATE", "deny"),
    # ---- sql_explain: a plan holds no values, and predicates on masked columns are oracles
    Attack("explain", "SELECT ssn, email FROM customers", "ok", tool="sql_explain"),
    Attack("explain", "SELECT id FROM customers WHERE ssn < '5'", "review", tool="sql_explain"),
    Attack(
        "explain", "SELECT count(*) FROM customers GROUP BY email", "review", tool="sql_explain"
    ),
    Attack(
        "explain",
        "SELECT query_to_xml('select ssn from customers', true, false, '')",
        "deny",
        tool="sql_explain",
    ),
    Attack("explain", "EXPLAIN (VERBOSE) SELECT ssn FROM customers", "error", tool="sql_explain"),
    Attack("explain", "EXPLAIN (VERBOSE, FORMAT JSON) SELECT ssn, email FROM customers", "ok"),
    Attack("explain", "EXPLAIN SELECT id FROM customers WHERE ssn < '5'", "review"),
    Attack(
        "explain", "EXPLAIN (FORMAT YAML) SELECT 1 FROM customers ORDER BY card_number", "review"
    ),
    Attack("explain", "EXPLAIN SELECT * FROM pg_stats", "deny"),
    Attack("explain", "EXPLAIN ANALYZE SELECT id FROM customers WHERE ssn < '5'", "deny"),
    # ---- the catalog tools show names and types, never values
    Attack("describe", "customers", "ok", tool="sql_describe_table"),
    Attack("describe", "public.payments", "ok", tool="sql_describe_table"),
    Attack("describe", "pg_catalog.pg_statistic", "error", tool="sql_describe_table"),
    Attack("describe", "", "ok", tool="sql_list_tables"),
]


async def fire(demo: Demo, attack: Attack, client: Any) -> tuple[str, list[str]]:
    """Run one attack; return a description of what went wrong ('' when all is well)."""
    args: dict[str, Any] = {"sql": attack.sql}
    if attack.tool == "sql_query":
        args["max_rows"] = 50
    elif attack.tool == "sql_describe_table":
        args = {"table": attack.sql}
    elif attack.tool == "sql_list_tables":
        args = {}
    result = await client.call_tool(attack.tool, args)
    leaks = find_leaks(everything(result), demo.needles)
    got = verdict(result)
    problem = ""
    if attack.expect == "ok":
        if result.is_error or got != "allow":
            problem = f"refused ({got}): {text_of(result)[:300]}"
        elif attack.tool == "sql_query":
            content = result.structured_content
            flags = tuple(i for i, c in enumerate(content["columns"]) if c["masked"])
            if flags != attack.masked:
                problem = f"masked positions {flags}, expected {attack.masked}"
            elif not content["rows"] and "status" not in content:  # a write returns none
                problem = "no rows"
            else:
                for row in content["rows"]:
                    for i in attack.masked:
                        if row[i] is not None and not _masked_cell(row[i], attack.hint):
                            problem = f"position {i} holds {row[i]!r}"
    else:  # refused: by PostgreSQL ("error", allowed), or by the gateway ("deny", "review")
        wanted = "allow" if attack.expect == "error" else attack.expect
        if not result.is_error or got != wanted:
            problem = f"expected {attack.expect}, got {got}: {text_of(result)[:300]}"
    return problem, leaks


def _masked_cell(value: Any, hint: bool) -> bool:
    """A masked cell: `[MASKED]`, or (`hint`) a partial hint: the demo policy's `partial`
    shows an email's first letter and domain, the last 4 digits of an SSN, card or phone, an
    IBAN's country and last 4."""
    if value == MASKED:
        return True
    return hint and isinstance(value, str) and "***" in value


@pytest.mark.anyio
async def test_no_query_brings_back_an_email_ssn_or_card(demo: Demo) -> None:
    assert len(ATTACKS) >= 150, len(ATTACKS)
    token = demo.gateway.token("agent", "developers")
    problems: list[str] = []
    async with demo.gateway.client(token) as client:
        for attack in ATTACKS:
            problem, leaks = await fire(demo, attack, client)
            if leaks:
                problems.append(f"LEAK [{attack.technique}] {attack.sql}: {leaks[:3]}")
            if problem:
                problems.append(f"[{attack.technique}] {attack.sql}: {problem}")
    assert not problems, "\n".join(problems)


DBA_ATTACKS = [
    # DBAs skip the "system catalogs" review, but pg_stats still cannot be traced
    Attack("catalog", "SELECT most_common_vals, histogram_bounds FROM pg_stats "
           "WHERE tablename = 'customers'", "deny"),
    Attack("catalog", "SELECT * FROM pg_catalog.pg_stats_ext", "deny"),
    Attack("plain", "SELECT * FROM customers", "ok", (2, 3, 4, 5), hint=True),
    Attack("predicates", "SELECT id FROM customers WHERE ssn LIKE '1%'", "review"),
    # DBAs write directly: a write must not copy a masked value where a read sees it bare
    Attack("copies", "UPDATE customers SET name = reverse(ssn) WHERE id = -1", "deny"),
    Attack("copies", "UPDATE customers SET country = substr(card_number, 1, 8) WHERE id = -1",
           "deny"),
    Attack("copies", "INSERT INTO payments (id, order_id, amount, method, iban, paid_at) "
           "SELECT -id, 1, 0, email, NULL, now() FROM customers WHERE false", "deny"),
    Attack("copies", "UPDATE customers SET email = lower(email), phone = NULL WHERE id = -1",
           "ok"),
    Attack("copies", "INSERT INTO payments (id, order_id, amount, method, iban, paid_at) "
           "SELECT -id, 1, 0, 'card', card_number, now() FROM customers WHERE false", "ok"),
]  # fmt: skip


@pytest.mark.anyio
async def test_dbas_are_masked_too(demo: Demo) -> None:
    """`dba` is not `pii-readers`: its members see the same masks (and catalogs stay shut)."""
    token = demo.gateway.token("bob", "dba")
    problems: list[str] = []
    async with demo.gateway.client(token) as client:
        for attack in DBA_ATTACKS:
            problem, leaks = await fire(demo, attack, client)
            if leaks or problem:
                problems.append(f"{attack.sql}: {problem} {leaks[:3]}")
    assert not problems, "\n".join(problems)


@pytest.mark.anyio
async def test_pii_readers_are_exempt_from_the_column_rule(demo: Demo) -> None:
    """The policy's `except_groups`: the column rule spares `pii-readers`; the email detector
    still redacts the emails, and the column says so (`masked` is truthful)."""
    token = demo.gateway.token("pat", "pii-readers")
    async with demo.gateway.client(token) as client:
        result = await client.call_tool(
            "sql_query", {"sql": "SELECT id, email, phone FROM customers ORDER BY id LIMIT 3"}
        )
    assert not result.is_error, text_of(result)
    columns = result.structured_content["columns"]
    assert [c["masked"] for c in columns] == [False, True, False]
    assert [row[1] for row in result.structured_content["rows"]] == ["[MASKED]"] * 3
    phones = [row[2] for row in result.structured_content["rows"]]
    assert phones == demo.secrets["phone"][:3]  # no detector looks for phone numbers


def test_policy_test_says_why_a_computed_column_is_redacted(demo: Demo) -> None:
    """`mcp-gate policy test --config`: the demo's partial rule shows a hint of `email`, but
    `reverse(email)` is redacted, and the table says why."""
    gw = demo.gateway
    policies = gw.folder / "policies.toml"
    sql = "SELECT id, email, reverse(email) FROM customers"
    command = [*MCP_GATE, "policy", "test", str(policies), "--config", str(gw.config), "--sql", sql]
    done = subprocess.run(
        [*command, "--json"], env=gw.env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["columns"]["outputs"]
    assert [o["masked"] for o in outputs] == [None, "partial", "redact"]
    assert outputs[2]["sources"] == ["public.customers.email"]
    human = subprocess.run(
        command, env={**gw.env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=120
    )
    assert "plain column copies" in human.stdout, human.stdout
