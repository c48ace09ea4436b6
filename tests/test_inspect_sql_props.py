"""Property tests for the SQL classifier: it never raises, and `select` is never a lie.

The oracle is independent of the classifier's JSON walk: pglast's Python AST
(`pglast.parse_sql`), traversed generically over every slot of every node.
"""

from __future__ import annotations

import pglast
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mcp_gate.inspect.model import Risk, SqlInspection, SqlKind
from mcp_gate.inspect.pg_functions import dangerous_reason
from mcp_gate.inspect.sql import inspect_sql

CORPUS = [
    "SELECT 1",
    "SELECT id, email FROM users WHERE id = 42",
    "SELECT u.id, count(o.id) FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.id",
    "WITH r AS (SELECT user_id FROM orders) SELECT * FROM r",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "UPDATE t SET a = 1 WHERE id = 2",
    "UPDATE t SET a = 1",
    "DELETE FROM t WHERE id = 1",
    "DELETE FROM t",
    "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    "SELECT * INTO x FROM t",
    "SELECT * FROM t FOR UPDATE",
    "SELECT pg_read_file('/etc/passwd')",
    "select PG_CATALOG.pg_sleep(10)",
    "SELECT query_to_xml('select * from users', true, true, '')",
    "SELECT my_udf(1)",
    "SELECT * FROM pg_shadow",
    "EXPLAIN ANALYZE DELETE FROM t",
    "EXPLAIN SELECT 1",
    "COPY t TO PROGRAM 'curl http://x'",
    "COPY t FROM '/etc/passwd'",
    "DO $$BEGIN DELETE FROM t; END$$",
    "SET ROLE admin",
    "SET SESSION AUTHORIZATION x",
    "LISTEN x",
    "SAVEPOINT s",
    "CHECKPOINT",
    "DROP TABLE t",
    "TRUNCATE t",
    "GRANT SELECT ON t TO x",
    "LOCK TABLE t",
    "CALL proc()",
    "PREPARE p AS DELETE FROM t",
    "SELECT $$;DELETE FROM t;$$",
    "SELECT E'\\';DELETE FROM t;--'",
    "SELECT 'a;b' AS \"x;y\"",
    "/* DELETE */ SELECT 1 -- DROP",
    'SELECT "ünïcødé" FROM "Tåble"',
    "(SELECT 1 INTO TEMP x) UNION SELECT 2",
    "SELECT (SELECT max(id) FROM t), ARRAY(SELECT 1), EXISTS (SELECT 1 FROM u)",
    "SELECT * FROM generate_series(1, 3) g, LATERAL (SELECT g) s",
]

SEPARATORS = ["", " ", ";", "; ", "\n", " -- ", "/*", "*/", "$$", "'", '"', "(", ")", "\x00"]

TOKENS = [
    "SELECT",
    "FROM",
    "WHERE",
    "DELETE",
    "UPDATE",
    "SET",
    "INSERT",
    "INTO",
    "VALUES",
    "WITH",
    "AS",
    "(",
    ")",
    ",",
    ";",
    "*",
    "1",
    "'x'",
    "$$",
    "t",
    "users",
    "pg_sleep",
    "(1)",
    "=",
    "RETURNING",
    "FOR",
    "UPDATE",
    "EXPLAIN",
    "ANALYZE",
    "COPY",
    "TO",
    "PROGRAM",
    "DO",
    "UNION",
    "ALL",
    "--",
    "/*",
    "*/",
    "\n",
    "TRUE",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "ROLE",
]

_DML = (pglast.ast.InsertStmt, pglast.ast.UpdateStmt, pglast.ast.DeleteStmt, pglast.ast.MergeStmt)

SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("PROPS_N", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _nodes(root: object):
    """Every pglast.ast.Node under root (generic: all slots of all nodes)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list | tuple):
            stack.extend(node)
        elif isinstance(node, pglast.ast.Node):
            yield node
            for attr in node.__slots__:
                stack.append(getattr(node, attr, None))


def _check_invariants(sql: str, r: SqlInspection) -> None:
    assert isinstance(r, SqlInspection)
    assert r.text == sql
    assert r.kind in SqlKind
    assert (Risk.UNPARSEABLE in r.risks) == (r.error is not None)
    if Risk.UNPARSEABLE in r.risks:
        assert r.kind is SqlKind.OTHER
        assert r.statement_count == 0
    else:
        assert r.statement_count == len(r.kinds) >= 1
    assert (Risk.MULTI_STATEMENT in r.risks) == (r.statement_count > 1)
    assert Risk.SENSITIVE_PREDICATE not in r.risks  # a later stage sets it


def _check_against_oracle(sql: str, r: SqlInspection) -> None:
    """Compare with pglast's Python AST. `select` must mean a plain read."""
    if "\x00" in sql:
        assert Risk.UNPARSEABLE in r.risks
        return
    try:
        stmts = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        assert Risk.UNPARSEABLE in r.risks, "pglast rejects it, the classifier must too"
        return
    except (RecursionError, UnicodeError):
        assert r.kind is not SqlKind.SELECT or r.risks  # no claim, but never a plain select
        return
    if not stmts:
        assert Risk.UNPARSEABLE in r.risks
        return
    if Risk.UNPARSEABLE in r.risks:
        assert r.error and "deep" in r.error  # only nesting may stop a parseable text
        return
    assert r.statement_count == len(stmts)

    if r.kind is not SqlKind.SELECT:
        return
    # kind select => exactly one SelectStmt, no DML anywhere, no INTO ...
    assert len(stmts) == 1
    root = stmts[0].stmt
    assert isinstance(root, pglast.ast.SelectStmt)
    nodes = list(_nodes(root))
    assert not any(isinstance(n, _DML) for n in nodes)
    selects = [n for n in nodes if isinstance(n, pglast.ast.SelectStmt)]
    assert not any(s.intoClause for s in selects)
    # ... and locking clauses and dangerous functions are flagged (so "select, no risks"
    # is a plain read).
    if any(s.lockingClause for s in selects):
        assert Risk.LOCKING in r.risks
    for call in (n for n in nodes if isinstance(n, pglast.ast.FuncCall)):
        name = call.funcname[-1].sval
        if dangerous_reason(name):
            assert Risk.DANGEROUS_FUNCTION in r.risks, name


def _run(sql: str) -> SqlInspection:
    r = inspect_sql(sql)
    _check_invariants(sql, r)
    _check_against_oracle(sql, r)
    return r


@SETTINGS
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300))
def test_arbitrary_text(sql: str) -> None:
    _run(sql)


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join))
def test_token_soup(sql: str) -> None:
    _run(sql)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=3))
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(parts), max_size=len(parts)))
    sql = "".join(p + s for p, s in zip(parts, seps, strict=True))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["insert", "delete", "case", "none"]))
        pos = draw(st.integers(0, len(sql)))
        if op == "insert":
            sql = sql[:pos] + draw(st.sampled_from([*SEPARATORS, *TOKENS])) + sql[pos:]
        elif op == "delete":
            end = draw(st.integers(pos, min(len(sql), pos + 8)))
            sql = sql[:pos] + sql[end:]
        elif op == "case":
            sql = sql.upper() if draw(st.booleans()) else sql.lower()
    return sql


@SETTINGS
@given(mutated())
def test_mutated_corpus(sql: str) -> None:
    _run(sql)


@pytest.mark.parametrize("sql", CORPUS)
def test_corpus_itself(sql: str) -> None:
    r = _run(sql)
    assert Risk.UNPARSEABLE not in r.risks


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CORPUS), st.sampled_from(CORPUS))
def test_concatenation_is_never_weaker(first: str, second: str) -> None:
    """Appending a statement never makes the classification less strict."""
    from mcp_gate.inspect.sql import KIND_RANK

    one = inspect_sql(first)
    both = inspect_sql(first + "\n;\n" + second)  # newline first: `first` may end in `--`
    assume(Risk.UNPARSEABLE not in both.risks)
    assert KIND_RANK[both.kind] >= KIND_RANK[one.kind]
    assert Risk.MULTI_STATEMENT in both.risks
    assert one.risks - {Risk.MULTI_STATEMENT} <= both.risks
    assert one.relations_written <= both.relations_written
    assert both.kind is not SqlKind.SELECT or one.kind is SqlKind.SELECT


def test_oracle_rejects_a_lying_select() -> None:
    """The oracle itself catches what it should (guards against a vacuous property)."""
    lie = SqlInspection(
        text="WITH d AS (DELETE FROM t RETURNING 1) SELECT 1",
        kind=SqlKind.SELECT,
        kinds=(SqlKind.SELECT,),
        statement_count=1,
    )
    with pytest.raises(AssertionError):
        _check_against_oracle(lie.text, lie)
    lie2 = SqlInspection(
        text="SELECT pg_sleep(1)", kind=SqlKind.SELECT, kinds=(SqlKind.SELECT,), statement_count=1
    )
    with pytest.raises(AssertionError):
        _check_against_oracle(lie2.text, lie2)
