"""Classify SQL text with PostgreSQL's own parser (pglast / libpg_query), fail-closed.

`inspect_sql(text)` parses with `pglast.parser.parse_sql_json` (the JSON output: the
Python-object AST of `pglast.parse_sql` is several times slower) and walks the JSON tree once.
It never raises and never executes or regenerates SQL: the original text is kept in `text`.
Anything it cannot parse (syntax error, empty text, NUL byte, over `max_bytes`, lone
surrogates, nesting too deep, any internal error) is kind `other` with risk `unparseable`.

Statement kinds (`SqlKind`), by parse-tree root:

| kind        | statements |
|-------------|------------|
| select      | one plain read: SELECT, VALUES, TABLE, set operations, with no data-modifying |
|             | CTE, INTO, locking clause or dangerous function anywhere in it |
| insert      | INSERT (also ... ON CONFLICT DO UPDATE, noted in `details`) |
| update      | UPDATE |
| delete      | DELETE |
| merge       | MERGE |
| ddl         | CREATE/ALTER/DROP of tables, views, indexes, types, functions, schemas, sequences, |
|             | extensions, databases, ... ; TRUNCATE (target recorded as written); COMMENT ON; |
|             | RENAME; REFRESH MATERIALIZED VIEW; IMPORT FOREIGN SCHEMA; CREATE TABLE AS; |
|             | SELECT ... INTO (creates a table; also risk `select_into`) |
| privilege   | GRANT/REVOKE (objects and roles), CREATE/ALTER/DROP ROLE, ALTER ROLE ... SET, |
|             | ALTER DEFAULT PRIVILEGES, REASSIGN OWNED, DROP OWNED, SECURITY LABEL, |
|             | ALTER ... OWNER TO, CREATE/ALTER/DROP POLICY, ALTER TABLE ... ROW LEVEL SECURITY |
| session     | SET/RESET/SHOW (incl. SET ROLE, SET SESSION AUTHORIZATION, SET TRANSACTION), |
|             | DISCARD, LISTEN, UNLISTEN, NOTIFY (also dangerous: it signals other sessions), |
|             | PREPARE, EXECUTE (also dangerous: runs a statement not in this text), |
|             | DEALLOCATE, DECLARE CURSOR, FETCH/MOVE, CLOSE |
| transaction | BEGIN/START, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, PREPARE TRANSACTION, |
|             | COMMIT/ROLLBACK PREPARED, SET CONSTRAINTS |
| copy        | COPY (to/from a file or PROGRAM is also dangerous) |
| explain     | EXPLAIN; EXPLAIN ANALYZE of a plain SELECT (dangerous: it executes) |
| call        | CALL, DO (both dangerous: they run code the classifier cannot see) |
| other       | CHECKPOINT, VACUUM, ANALYZE, CLUSTER, REINDEX, LOCK (risk `locking`), |
|             | ALTER SYSTEM and LOAD (both dangerous); a SELECT with FOR UPDATE/SHARE (risk |
|             | `locking`) or calling a dangerous function; a batch of several SELECTs; |
|             | anything unrecognised or unparseable |

EXPLAIN ANALYZE executes its statement, so its kind is the stricter of `explain` and the inner
statement's kind: `EXPLAIN ANALYZE DELETE FROM t` is kind `delete`, with `public.t` written and
the inner statement's `no_where` etc. A policy allowing `explain` therefore never allows an
executed write. Plain EXPLAIN only plans: kind `explain`, the inner relations count as read, and
write-only findings (`no_where`, `write_in_cte`, `select_into`, `locking`) are not raised, but
functions are still classified. PREPARE is kind `session` (nothing runs yet), but its statement
is inspected as if executed, since EXECUTE runs it later: its writes and risks are reported.

`select` is the one kind a policy may allow without looking further, so it is only given to a
single statement that is a plain read. A SELECT that writes through a CTE takes the write's
kind; SELECT ... INTO is `ddl`; a SELECT that locks rows or calls a dangerous function is
`other` (with its risk flag); several SELECTs together are `other` (with `multi_statement`).
Unknown (user-defined) functions and system catalogs leave a SELECT `select`, with their risk.

A multi-statement text's `kind` is the strictest statement kind, by this rank (lowest first):

    select < explain < transaction < session < insert < update < merge < delete
           < copy < call < other < ddl < privilege

Reads rank lowest; then statements that change only transaction or session state; then data
writes by how much they can destroy; then COPY (files, programs, bulk loads) and CALL/DO
(arbitrary code); `other` above those because it is where unknown and server-level statements
(ALTER SYSTEM, LOAD) land; then schema changes; privilege changes rank highest. A SELECT with a
data-modifying CTE takes the CTE's kind (risk `write_in_cte`); a DML statement with a
data-modifying CTE takes the stricter of the two.

Relations are `schema.name` (`catalog.schema.name` when written so). Unqualified names resolve
as the gateway's fixed `search_path = pg_catalog, public, pg_temp` would: CTE names in scope
are not relations; names of pg_catalog relations (`pg_shadow`, `pg_stat_activity`) are
`pg_catalog.`; temporary tables being created are `pg_temp.`; the rest `public.`. Targets of
INSERT/UPDATE/DELETE/MERGE/TRUNCATE/COPY FROM/SELECT INTO and of DDL (created, altered,
dropped, granted on) are written; every other relation is read. A DML target never resolves to
a CTE (PostgreSQL does not either). Quoted names keep their case.

Inside CREATE SCHEMA s ..., created objects are `s.`.

Function knowledge (dangerous, safe, unknown, catalog) lives in `pg_functions`.

Limits: the JSON tree is decoded with orjson (several times faster than `json.loads`), which
refuses nesting deeper than 1024 levels, and the walk stops at Python's recursion limit, so a
text nested deeper than a few hundred levels is `unparseable` (fail-closed; PostgreSQL may
accept it). The time grows with the number of parse-tree nodes, which `max_bytes` bounds.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from pglast.parser import ParseError, parse_sql_json

from mcp_gate.inspect.model import Risk, SqlInspection, SqlKind
from mcp_gate.inspect.pg_functions import PG_CATALOG_RELATIONS, FunctionInfo, classify_function
from mcp_gate.inspect.row_bound import limit_bound

__all__ = ["DEFAULT_MAX_BYTES", "KIND_RANK", "inspect_sql", "strictest"]

DEFAULT_MAX_BYTES = 1_048_576 * 2

_K = SqlKind

KIND_RANK: dict[SqlKind, int] = {
    kind: i
    for i, kind in enumerate(
        (
            _K.SELECT,
            _K.EXPLAIN,
            _K.TRANSACTION,
            _K.SESSION,
            _K.INSERT,
            _K.UPDATE,
            _K.MERGE,
            _K.DELETE,
            _K.COPY,
            _K.CALL,
            _K.OTHER,
            _K.DDL,
            _K.PRIVILEGE,
        )
    )
}


def strictest(kinds: list[SqlKind] | tuple[SqlKind, ...]) -> SqlKind:
    """The strictest of some kinds by `KIND_RANK` (`other` for none)."""
    if not kinds:
        return _K.OTHER
    return max(kinds, key=KIND_RANK.__getitem__)


_DDL_NODES = (
    "AlterCollationStmt AlterDatabaseRefreshCollStmt AlterDatabaseSetStmt AlterDatabaseStmt "
    "AlterDomainStmt AlterEnumStmt AlterEventTrigStmt AlterExtensionContentsStmt "
    "AlterExtensionStmt AlterFdwStmt AlterForeignServerStmt AlterFunctionStmt "
    "AlterObjectDependsStmt AlterObjectSchemaStmt AlterOpFamilyStmt AlterOperatorStmt "
    "AlterPublicationStmt AlterSeqStmt AlterStatsStmt AlterSubscriptionStmt "
    "AlterTSConfigurationStmt AlterTSDictionaryStmt AlterTableMoveAllStmt "
    "AlterTableSpaceOptionsStmt AlterTableStmt AlterTypeStmt AlterUserMappingStmt CommentStmt "
    "CompositeTypeStmt CreateAmStmt CreateCastStmt CreateConversionStmt CreateDomainStmt "
    "CreateEnumStmt CreateEventTrigStmt CreateExtensionStmt CreateFdwStmt "
    "CreateForeignServerStmt CreateForeignTableStmt CreateFunctionStmt CreateOpClassStmt "
    "CreateOpFamilyStmt CreatePLangStmt CreatePublicationStmt CreateRangeStmt "
    "CreateSchemaStmt CreateSeqStmt CreateStatsStmt CreateStmt CreateSubscriptionStmt "
    "CreateTableAsStmt CreateTableSpaceStmt CreateTransformStmt CreateTrigStmt "
    "CreateUserMappingStmt CreatedbStmt DefineStmt DropStmt DropSubscriptionStmt "
    "DropTableSpaceStmt DropUserMappingStmt DropdbStmt ImportForeignSchemaStmt IndexStmt "
    "RefreshMatViewStmt RenameStmt RuleStmt TruncateStmt ViewStmt"
)
_PRIVILEGE_NODES = (
    "AlterDefaultPrivilegesStmt AlterOwnerStmt AlterPolicyStmt AlterRoleSetStmt AlterRoleStmt "
    "CreatePolicyStmt CreateRoleStmt DropOwnedStmt DropRoleStmt GrantRoleStmt GrantStmt "
    "ReassignOwnedStmt SecLabelStmt"
)
_SESSION_NODES = (
    "ClosePortalStmt DeallocateStmt DeclareCursorStmt DiscardStmt ExecuteStmt FetchStmt "
    "ListenStmt NotifyStmt PrepareStmt UnlistenStmt VariableSetStmt VariableShowStmt"
)
_OTHER_NODES = (
    "AlterSystemStmt CheckPointStmt ClusterStmt LoadStmt LockStmt ReindexStmt VacuumStmt "
    "PLAssignStmt ReturnStmt"
)

_STATIC_KIND: dict[str, SqlKind] = {
    **dict.fromkeys(_DDL_NODES.split(), _K.DDL),
    **dict.fromkeys(_PRIVILEGE_NODES.split(), _K.PRIVILEGE),
    **dict.fromkeys(_SESSION_NODES.split(), _K.SESSION),
    **dict.fromkeys(_OTHER_NODES.split(), _K.OTHER),
    "TransactionStmt": _K.TRANSACTION,
    "ConstraintsSetStmt": _K.TRANSACTION,
    "CopyStmt": _K.COPY,
    "ExplainStmt": _K.EXPLAIN,
    "CallStmt": _K.CALL,
    "DoStmt": _K.CALL,
    "SelectStmt": _K.SELECT,
    "InsertStmt": _K.INSERT,
    "UpdateStmt": _K.UPDATE,
    "DeleteStmt": _K.DELETE,
    "MergeStmt": _K.MERGE,
}

_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

# Statements that are dangerous in themselves, with the line a reviewer reads.
_DANGEROUS_STATEMENTS: dict[str, str] = {
    "DoStmt": "DO runs an anonymous code block that the gateway cannot inspect",
    "LoadStmt": "LOAD loads a shared library into the database server process",
    "AlterSystemStmt": "ALTER SYSTEM rewrites the server configuration (postgresql.auto.conf)",
    "NotifyStmt": "NOTIFY sends a message to every session listening on the channel",
    "ExecuteStmt": "EXECUTE runs a prepared statement whose text is not part of this SQL",
}

# Row lock strengths of SELECT ... FOR ...
_LOCK_STRENGTH = {
    "LCS_FORKEYSHARE": "FOR KEY SHARE",
    "LCS_FORSHARE": "FOR SHARE",
    "LCS_FORNOKEYUPDATE": "FOR NO KEY UPDATE",
    "LCS_FORUPDATE": "FOR UPDATE",
}

# Relation-ish DROP targets: their names are recorded as written relations.
_DROP_RELATION_TYPES = frozenset(
    {
        "OBJECT_TABLE",
        "OBJECT_VIEW",
        "OBJECT_MATVIEW",
        "OBJECT_SEQUENCE",
        "OBJECT_FOREIGN_TABLE",
        "OBJECT_INDEX",
    }
)
# ALTER TABLE subcommands that change who may see what.
_PRIVILEGE_ALTER_CMDS = frozenset(
    {
        "AT_ChangeOwner",
        "AT_EnableRowSecurity",
        "AT_DisableRowSecurity",
        "AT_ForceRowSecurity",
        "AT_NoForceRowSecurity",
    }
)

# Nodes with nothing below them worth visiting (constants, parameters, names, types).
_LEAVES = frozenset(
    {
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "A_Const",
        "A_Star",
        "ParamRef",
        "SQLValueFunction",
        "TypeName",
        "RoleSpec",
        "AccessPriv",
        "SetToDefault",
        "CurrentOfExpr",
    }
)

_TRUE_WORDS = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"f", "fa", "fal", "fals", "false", "n", "no", "off", "0"})
_NOT_CONST = object()


def _const(node: object) -> object:
    """The Python value of a literal (through casts), or `_NOT_CONST`."""
    while type(node) is dict and len(node) == 1:
        if "TypeCast" in node:
            node = node["TypeCast"].get("arg")
            continue
        c = node.get("A_Const")
        if c is None:
            return _NOT_CONST
        if c.get("isnull"):
            return None
        if "ival" in c:
            return c["ival"].get("ival", 0)
        if "fval" in c:
            try:
                return float(c["fval"].get("fval", "0"))
            except ValueError:
                return _NOT_CONST
        if "boolval" in c:
            return bool(c["boolval"].get("boolval", False))
        if "sval" in c:
            return c["sval"].get("sval", "")
        return _NOT_CONST
    return _NOT_CONST


def _as_bool(value: object) -> bool | None:
    if value is None or value is _NOT_CONST:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


def _same_column(left: object, right: object) -> bool:
    """Both sides are the same plain column reference (`x = x`)."""
    if type(left) is not dict or type(right) is not dict:
        return False
    lc, rc = left.get("ColumnRef"), right.get("ColumnRef")
    if type(lc) is not dict or type(rc) is not dict:
        return False
    fields = lc.get("fields")
    return bool(fields) and fields == rc.get("fields")  # fields carry no locations


def _compare(op: str, left: object, right: object) -> bool | None:
    if isinstance(left, str) != isinstance(right, str):
        try:  # '1' = 1: PostgreSQL coerces the unknown literal to the other type
            left, right = (
                (float(left), right) if isinstance(left, str) else (left, float(right))  # type: ignore[arg-type]
            )
        except ValueError:
            return None
    try:
        if op == "=":
            return left == right
        if op in ("<>", "!="):
            return left != right
        if op == "<":
            return left < right  # type: ignore[operator]
        if op == ">":
            return left > right  # type: ignore[operator]
        if op == "<=":
            return left <= right  # type: ignore[operator]
        if op == ">=":
            return left >= right  # type: ignore[operator]
    except TypeError:
        return None
    return None


def _truth(node: object, depth: int = 0) -> bool | None:
    """True when a WHERE condition is always true, False when always false, else None.

    Catches constant conditions (`true`, `'t'`, `1=1`, `'a'<>'b'`, `NOT false`,
    `1 IS NOT NULL`, `true IS TRUE`), AND/OR/NOT of those, and trivial self-comparisons of a
    column (`x = x`, `x IS NOT DISTINCT FROM x`).
    """
    if depth > 32 or type(node) is not dict or len(node) != 1:
        return None
    key, body = next(iter(node.items()))
    if key in ("A_Const", "TypeCast"):
        return _as_bool(_const(node))
    if key == "BoolExpr":
        op = body.get("boolop")
        vals = [_truth(a, depth + 1) for a in body.get("args") or ()]
        if op == "AND_EXPR":
            if False in vals:
                return False
            return True if vals and all(v is True for v in vals) else None
        if op == "OR_EXPR":
            if True in vals:
                return True
            return False if vals and all(v is False for v in vals) else None
        if op == "NOT_EXPR" and len(vals) == 1 and vals[0] is not None:
            return not vals[0]
        return None
    if key == "A_Expr":
        kind = body.get("kind")
        names = body.get("name") or ()
        op = names[-1].get("String", {}).get("sval", "") if names else ""
        left, right = body.get("lexpr"), body.get("rexpr")
        if kind == "AEXPR_OP":
            lc, rc = _const(left), _const(right)
            if lc is not _NOT_CONST and rc is not _NOT_CONST:
                if lc is None or rc is None:
                    return None
                return _compare(op, lc, rc)
            if op in ("=", "<=", ">=") and _same_column(left, right):
                return True
            return None
        if kind == "AEXPR_NOT_DISTINCT" and _same_column(left, right):
            return True
        return None
    if key == "NullTest":
        value = _const(body.get("arg"))
        if value is _NOT_CONST:
            return None
        is_null = value is None
        return is_null if body.get("nulltesttype") == "IS_NULL" else not is_null
    if key == "BooleanTest":
        value = _truth(body.get("arg"), depth + 1)
        if value is None:
            return None
        test = body.get("booltesttype")
        if test in ("IS_TRUE", "IS_NOT_FALSE"):
            return value
        if test in ("IS_FALSE", "IS_NOT_TRUE"):
            return not value
        return None
    return None


def _defelem_is_true(elem: dict) -> bool:
    """The boolean value of an option like EXPLAIN's `analyze`; unknown values count as true."""
    arg = elem.get("arg")
    if arg is None:
        return True
    value: object = _NOT_CONST
    if type(arg) is dict and len(arg) == 1:
        key, body = next(iter(arg.items()))
        if key == "String":
            value = body.get("sval", "")
        elif key == "Integer":
            value = body.get("ival", 0)
        elif key == "Boolean":
            value = body.get("boolval", False)
        elif key == "Float":
            value = body.get("fval", "")
        else:
            value = _const(arg)
    return _as_bool(value) is not False


def _names(items: object) -> list[str]:
    """The String values of a name list (`[{"String": {"sval": "a"}}, ...]`)."""
    out = []
    if type(items) is list:
        for item in items:
            if type(item) is dict and "String" in item:
                out.append(item["String"].get("sval", ""))
    return out


# A handler processes one node's fields; it may return children for the walk loop to visit
# (cheaper than recursing), or walk them itself (needed when it changes scope around them).
_Handler = Callable[["_Walker", dict], "list[object] | None"]
_CONTAINERS = (dict, list)


class _Walker:
    """One pass over a parse tree, collecting relations, columns, functions and findings."""

    __slots__ = (
        "columns",
        "create_schema",
        "ctes",
        "details",
        "dml",
        "executed",
        "functions",
        "impure",
        "in_cte",
        "into_seen",
        "read",
        "risks",
        "written",
    )

    def __init__(self) -> None:
        self.read: set[str] = set()
        self.written: set[str] = set()
        self.columns: set[str] = set()
        self.functions: dict[str, FunctionInfo] = {}
        self.risks: set[Risk] = set()
        self.details: dict[str, None] = {}
        self.ctes: dict[str, int] = {}
        self.in_cte = 0
        self.executed = True
        self.dml: list[SqlKind] = []
        self.into_seen = False
        self.impure: str | None = None  # why this SELECT is not a plain read
        self.create_schema: str | None = None  # inside CREATE SCHEMA s <elements>

    # -- findings -------------------------------------------------------------------------

    def flag(self, risk: Risk, detail: str | None = None) -> None:
        self.risks.add(risk)
        if detail is not None:
            self.details[detail] = None

    def note(self, detail: str) -> None:
        self.details[detail] = None

    # -- statements -----------------------------------------------------------------------

    def statement(self, node: dict) -> SqlKind:
        """Walk one statement node (`{"SelectStmt": {...}}`) and return its kind."""
        if type(node) is not dict or len(node) != 1:
            self.walk(node)
            return _K.OTHER
        ntype, body = next(iter(node.items()))
        if type(body) is not dict:
            return _K.OTHER
        saved = self.dml, self.into_seen, self.impure
        self.dml, self.into_seen, self.impure = [], False, None
        try:
            if ntype == "ExplainStmt":
                return self._explain(body)
            self.walk(node)
            return self._kind_of(ntype, body)
        finally:
            self.dml, self.into_seen, self.impure = saved

    def _kind_of(self, ntype: str, body: dict) -> SqlKind:
        if ntype == "SelectStmt":
            if self.dml or self.into_seen:
                return strictest([_K.DDL if self.into_seen else _K.SELECT, *self.dml])
            if self.impure is not None:
                if self.executed:
                    self.note(f"{self.impure}: not a plain read, classified as other")
                return _K.OTHER
            return _K.SELECT
        kind = _STATIC_KIND.get(ntype, _K.OTHER)
        if kind in (_K.INSERT, _K.UPDATE, _K.DELETE, _K.MERGE):
            return strictest(self.dml) if self.dml else kind
        if ntype == "DropStmt" and body.get("removeType") == "OBJECT_POLICY":
            return _K.PRIVILEGE
        if ntype == "AlterTableStmt":
            for cmd in body.get("cmds") or ():
                sub = cmd.get("AlterTableCmd", {}).get("subtype") if type(cmd) is dict else None
                if sub in _PRIVILEGE_ALTER_CMDS:
                    return _K.PRIVILEGE
        return kind

    def _explain(self, body: dict) -> SqlKind:
        analyze = any(
            type(opt) is dict
            and opt.get("DefElem", {}).get("defname") == "analyze"
            and _defelem_is_true(opt["DefElem"])
            for opt in body.get("options") or ()
        )
        query = body.get("query")
        if type(query) is not dict:
            return _K.EXPLAIN
        if analyze:
            self.flag(
                Risk.DANGEROUS_FUNCTION,
                "EXPLAIN ANALYZE executes the statement it explains",
            )
            inner = self.statement(query)
            if inner is not _K.SELECT:
                self.note(
                    f"EXPLAIN ANALYZE runs the explained statement (kind {inner}), "
                    f"so the text is classified as {strictest([_K.EXPLAIN, inner])}"
                )
            return strictest([_K.EXPLAIN, inner])
        saved = self.executed
        self.executed = False
        try:
            inner = self.statement(query)
        finally:
            self.executed = saved
        if inner is not _K.SELECT:
            self.note(f"EXPLAIN without ANALYZE only plans the explained statement (kind {inner})")
        return _K.EXPLAIN

    # -- the walk -------------------------------------------------------------------------

    def walk(self, obj: object) -> None:
        """Visit a node (`{"Type": {...}}`), a bare struct (`{"relname": ...}`) or a list.

        Iterative over an explicit stack (children pushed in reverse, so nodes are visited
        in source order); only nodes with a handler recurse, and those nest no deeper than
        the statement structure does.
        """
        stack = [obj]
        pop = stack.pop
        push = stack.append
        extend = stack.extend
        handlers = _HANDLERS
        leaves = _LEAVES
        while stack:
            obj = pop()
            if type(obj) is not dict:
                if type(obj) is list:
                    extend(reversed(obj))
                continue
            if len(obj) == 1:
                (key,) = obj
                if key in leaves:
                    continue
                body = obj[key]
                handler = handlers.get(key)
                if handler is not None:
                    if type(body) is dict:
                        rest = handler(self, body)
                        if rest:  # children the handler leaves to this loop
                            extend(reversed(rest))
                    continue
                if key[:1] < "a":  # a node type (upper case), not a field name
                    if type(body) is dict:
                        for value in reversed(body.values()):
                            if type(value) is dict:
                                push(value)
                            elif type(value) is list:
                                extend(reversed(value))
                    continue
            if "relname" in obj:
                self.relation(obj, False)
            elif "limitOption" in obj:  # a bare SelectStmt (set-operation branch)
                self._select(obj)
            else:
                for value in reversed(obj.values()):
                    if type(value) is dict:
                        push(value)
                    elif type(value) is list:
                        extend(reversed(value))

    def _fields(self, body: dict, skip: tuple[str, ...] = ()) -> None:
        for key, value in body.items():
            t = type(value)
            if (t is dict or t is list) and key not in skip:
                self.walk(value)

    # -- relations ------------------------------------------------------------------------

    def relation(self, rv: dict, written: bool) -> str | None:
        """Record a RangeVar (bare fields) as read or written; return its qualified name."""
        name = rv.get("relname")
        if not isinstance(name, str):
            return None
        schema = rv.get("schemaname")
        if schema is None:
            if not written and name in self.ctes:
                return None  # a CTE reference, not a relation
            if rv.get("relpersistence") == "t":
                schema = "pg_temp"
            elif written and self.create_schema is not None:
                schema = self.create_schema
            elif name in PG_CATALOG_RELATIONS:
                schema = "pg_catalog"
            else:
                schema = "public"
        return self._record_relation(rv.get("catalogname"), schema, name, written)

    def _record_relation(self, catalog: str | None, schema: str, name: str, written: bool) -> str:
        qualified = f"{schema}.{name}" if catalog is None else f"{catalog}.{schema}.{name}"
        if written and self.executed:
            self.written.add(qualified)
        else:
            self.read.add(qualified)
        if schema in _SYSTEM_SCHEMAS or schema.startswith("pg_toast"):
            self.flag(Risk.SYSTEM_CATALOG, f"{qualified}: system catalog relation")
        return qualified

    def _name_list_relation(self, parts: list[str], written: bool) -> None:
        """Record a relation given as a name list (DROP TABLE a.b)."""
        if not parts or len(parts) > 3:
            return
        name = parts[-1]
        if len(parts) == 1:
            schema = "pg_catalog" if name in PG_CATALOG_RELATIONS else "public"
            self._record_relation(None, schema, name, written)
        else:
            catalog = parts[0] if len(parts) == 3 else None
            self._record_relation(catalog, parts[-2], name, written)

    def target(self, value: object) -> None:
        """Record a written target: a bare or wrapped RangeVar, or a list of them."""
        if type(value) is list:
            for item in value:
                self.target(item)
        elif type(value) is dict:
            if "RangeVar" in value and len(value) == 1:
                value = value["RangeVar"]
            if type(value) is dict and "relname" in value:
                self.relation(value, True)
            else:
                self.walk(value)

    def _with(self, with_clause: dict) -> list[str]:
        """Walk a WITH clause; return the CTE names it put in scope (caller pops them)."""
        ctes = [
            c["CommonTableExpr"]
            for c in with_clause.get("ctes") or ()
            if type(c) is dict and type(c.get("CommonTableExpr")) is dict
        ]
        scope = self.ctes
        pushed: list[str] = []

        def push(name: object) -> None:
            if isinstance(name, str):
                scope[name] = scope.get(name, 0) + 1
                pushed.append(name)

        recursive = bool(with_clause.get("recursive"))
        if recursive:
            for cte in ctes:
                push(cte.get("ctename"))
        for cte in ctes:
            query = cte.get("ctequery")
            if query is not None:
                self.in_cte += 1
                try:
                    self.walk(query)
                finally:
                    self.in_cte -= 1
            if not recursive:
                push(cte.get("ctename"))
        return pushed

    def _pop(self, pushed: list[str]) -> None:
        scope = self.ctes
        for name in pushed:
            n = scope[name] - 1
            if n:
                scope[name] = n
            else:
                del scope[name]

    # -- node handlers --------------------------------------------------------------------

    def _select(self, body: dict) -> None:
        wc = body.get("withClause")
        pushed = self._with(wc) if type(wc) is dict else None
        try:
            into = body.get("intoClause")
            if type(into) is dict:
                self.into_seen = True
                rel = into.get("rel")
                target = self.relation(rel, True) if type(rel) is dict else None
                if self.executed:
                    what = target or "a new table"
                    self.flag(Risk.SELECT_INTO, f"SELECT ... INTO creates and fills {what}")
            locking = body.get("lockingClause")
            if locking:
                for item in locking:
                    lc = item.get("LockingClause", {}) if type(item) is dict else {}
                    how = _LOCK_STRENGTH.get(lc.get("strength", ""), "FOR UPDATE/SHARE")
                    self.impure = f"SELECT ... {how}"
                    if self.executed:
                        self.flag(Risk.LOCKING, f"SELECT ... {how} locks the rows it reads")
            for key in ("larg", "rarg"):
                branch = body.get(key)
                if type(branch) is dict:
                    self._select(branch)
            self._fields(body, ("withClause", "intoClause", "lockingClause", "larg", "rarg"))
        finally:
            if pushed:
                self._pop(pushed)

    def _dml(self, body: dict, kind: SqlKind) -> None:
        self.dml.append(kind)
        executed = self.executed
        rel = body.get("relation")
        label = (self.relation(rel, True) if type(rel) is dict else None) or "a table"
        if self.in_cte and executed:
            self.flag(
                Risk.WRITE_IN_CTE,
                f"WITH ... AS ({kind.upper()} ...) on {label}: a data-modifying CTE writes",
            )
        wc = body.get("withClause")
        pushed = self._with(wc) if type(wc) is dict else None
        try:
            if executed and kind in (_K.UPDATE, _K.DELETE):
                where = body.get("whereClause")
                verb = kind.upper()
                if where is None:
                    self.flag(Risk.NO_WHERE, f"{verb} on {label} has no WHERE: every row")
                elif _truth(where) is True:
                    self.flag(
                        Risk.NO_WHERE, f"{verb} on {label} has an always-true WHERE: every row"
                    )
            if kind is _K.INSERT:
                occ = body.get("onConflictClause")
                if type(occ) is dict and occ.get("action") == "ONCONFLICT_UPDATE":
                    self.note(f"INSERT ... ON CONFLICT DO UPDATE also updates rows of {label}")
            if kind is _K.MERGE:
                commands = {
                    c.get("MergeWhenClause", {}).get("commandType", "")
                    for c in body.get("mergeWhenClauses") or ()
                    if type(c) is dict
                }
                done = sorted(c[4:].lower() for c in commands if c.startswith("CMD_"))
                if done:
                    self.note(f"MERGE into {label} may {', '.join(done)} rows")
            self._fields(body, ("relation", "withClause"))
        finally:
            if pushed:
                self._pop(pushed)

    def _insert(self, body: dict) -> None:
        self._dml(body, _K.INSERT)

    def _update(self, body: dict) -> None:
        self._dml(body, _K.UPDATE)

    def _delete(self, body: dict) -> None:
        self._dml(body, _K.DELETE)

    def _merge(self, body: dict) -> None:
        self._dml(body, _K.MERGE)

    def _range_var(self, body: dict) -> None:
        self.relation(body, False)

    def _column_ref(self, body: dict) -> None:
        try:
            fields = body["fields"]
            if len(fields) == 1:
                self.columns.add(fields[0]["String"]["sval"])
            else:
                self.columns.add(".".join([f["String"]["sval"] for f in fields]))
        except (KeyError, TypeError, IndexError):
            return  # `*`, `t.*`: not a plain column

    def _func_call(self, body: dict) -> list[object]:
        parts = _names(body.get("funcname"))
        if parts:
            info = classify_function(parts[-2] if len(parts) > 1 else None, parts[-1])
            if info.status == "dangerous":
                self.impure = f"SELECT calling {info.qualified}"
            if info.qualified not in self.functions:
                self.functions[info.qualified] = info
                if info.status == "dangerous":
                    self.flag(Risk.DANGEROUS_FUNCTION, f"{info.qualified}: {info.reason}")
                elif info.status == "unknown":
                    self.flag(Risk.UNKNOWN_FUNCTION, f"{info.qualified}: {info.reason}")
                if info.catalog:
                    self.flag(
                        Risk.SYSTEM_CATALOG,
                        f"{info.qualified}: reads server activity or configuration",
                    )
        return [v for k, v in body.items() if k != "funcname" and type(v) in _CONTAINERS]

    def _copy(self, body: dict) -> None:
        is_from = bool(body.get("is_from"))
        rel = body.get("relation")
        if type(rel) is dict:
            self.relation(rel, is_from)
        filename = body.get("filename")
        if body.get("is_program"):
            self.flag(
                Risk.DANGEROUS_FUNCTION,
                f"COPY ... PROGRAM runs a shell command on the database server: {filename!r}",
            )
        elif filename is not None:
            verb = "reads" if is_from else "writes"
            self.flag(
                Risk.DANGEROUS_FUNCTION,
                f"COPY {'FROM' if is_from else 'TO'} a file {verb} the database server's "
                f"file system: {filename!r}",
            )
        self._fields(body, ("relation", "attlist", "options"))

    def _call(self, body: dict) -> None:
        self.flag(Risk.DANGEROUS_FUNCTION, "CALL runs a procedure, which may do anything")
        call = body.get("funccall")
        if type(call) is dict:
            self.walk(self._func_call(call))

    def _prepare(self, body: dict) -> None:
        query = body.get("query")
        if type(query) is dict:
            inner = self.statement(query)
            self.note(
                f"PREPARE {body.get('name', '')}: a {inner} statement that EXECUTE runs later"
            )

    def _variable_set(self, body: dict) -> None:
        name = str(body.get("name", "")).lower()
        resetting = str(body.get("kind", "")).startswith("VAR_RESET")
        if name in ("role", "session_authorization") and not resetting:
            what = "ROLE" if name == "role" else "SESSION AUTHORIZATION"
            self.note(f"SET {what} changes the role the rest of the session runs as")
        elif name == "search_path":
            self.note(
                "SET search_path changes how unqualified names resolve "
                "(the gateway assumes pg_catalog, public, pg_temp)"
            )
        elif name in (
            "transaction",
            "session characteristics",
            "transaction_read_only",
            "default_transaction_read_only",
        ):
            self.note("SET changes transaction modes (READ WRITE lifts a READ ONLY transaction)")

    def _lock(self, body: dict) -> None:
        self.flag(Risk.LOCKING, "LOCK TABLE takes a table lock until the transaction ends")
        self._fields(body)

    def _truncate(self, body: dict) -> None:
        self.target(body.get("relations"))
        self.note("TRUNCATE removes every row")
        self._fields(body, ("relations",))

    def _drop(self, body: dict) -> None:
        if body.get("removeType") in _DROP_RELATION_TYPES:
            for obj in body.get("objects") or ():
                if type(obj) is dict and "List" in obj:
                    self._name_list_relation(_names(obj["List"].get("items")), True)
        self._fields(body, ("objects",))

    def _create_table_as(self, body: dict) -> None:
        into = body.get("into")
        if type(into) is dict and type(into.get("rel")) is dict:
            self.relation(into["rel"], True)
        self._fields(body, ("into",))

    def _create_foreign_table(self, body: dict) -> None:
        base = body.get("base")
        if type(base) is dict:
            self.target(base.get("relation"))
            self._fields(base, ("relation",))
        self._fields(body, ("base",))

    def _create_schema(self, body: dict) -> None:
        # CREATE SCHEMA s CREATE TABLE t ...: the elements are created in s.
        name = body.get("schemaname")
        if not isinstance(name, str):
            role = body.get("authrole")
            name = role.get("rolename") if type(role) is dict else None
        saved = self.create_schema
        self.create_schema = name if isinstance(name, str) else saved
        try:
            self._fields(body)
        finally:
            self.create_schema = saved

    def _grant(self, body: dict) -> None:
        if body.get("targtype") == "ACL_TARGET_OBJECT" and body.get("objtype") == "OBJECT_TABLE":
            self.target(body.get("objects"))
            self._fields(body, ("objects",))
        else:
            self._fields(body)


def _targets_handler(*fields: str) -> _Handler:
    """A handler for a DDL statement whose `fields` hold relations it writes."""

    def handler(walker: _Walker, body: dict) -> None:
        for f in fields:
            value = body.get(f)
            if value is not None:
                walker.target(value)
        walker._fields(body, fields)

    return handler


def _dangerous_handler(message: str) -> _Handler:
    def handler(walker: _Walker, body: dict) -> None:
        walker.flag(Risk.DANGEROUS_FUNCTION, message)
        walker._fields(body)

    return handler


_HANDLERS: dict[str, _Handler] = {
    "SelectStmt": _Walker._select,
    "InsertStmt": _Walker._insert,
    "UpdateStmt": _Walker._update,
    "DeleteStmt": _Walker._delete,
    "MergeStmt": _Walker._merge,
    "RangeVar": _Walker._range_var,
    "ColumnRef": _Walker._column_ref,
    "FuncCall": _Walker._func_call,
    "CopyStmt": _Walker._copy,
    "CallStmt": _Walker._call,
    "PrepareStmt": _Walker._prepare,
    "VariableSetStmt": _Walker._variable_set,
    "LockStmt": _Walker._lock,
    "TruncateStmt": _Walker._truncate,
    "DropStmt": _Walker._drop,
    "CreateTableAsStmt": _Walker._create_table_as,
    "CreateForeignTableStmt": _Walker._create_foreign_table,
    "GrantStmt": _Walker._grant,
    "CreateSchemaStmt": _Walker._create_schema,
    **{name: _dangerous_handler(msg) for name, msg in _DANGEROUS_STATEMENTS.items()},
    "CreateStmt": _targets_handler("relation"),
    "AlterTableStmt": _targets_handler("relation"),
    "RenameStmt": _targets_handler("relation"),
    "IndexStmt": _targets_handler("relation"),
    "ViewStmt": _targets_handler("view"),
    "CreateSeqStmt": _targets_handler("sequence"),
    "AlterSeqStmt": _targets_handler("sequence"),
    "CreateTrigStmt": _targets_handler("relation"),
    "RuleStmt": _targets_handler("relation"),
    "CreatePolicyStmt": _targets_handler("table"),
    "AlterPolicyStmt": _targets_handler("table"),
    "RefreshMatViewStmt": _targets_handler("relation"),
    "ClusterStmt": _targets_handler("relation"),
    "ReindexStmt": _targets_handler("relation"),
    "AlterObjectSchemaStmt": _targets_handler("relation"),
    "AlterObjectDependsStmt": _targets_handler("relation"),
    "AlterOwnerStmt": _targets_handler("relation"),
    "CompositeTypeStmt": _targets_handler("typevar"),
}


def _unparseable(text: str, error: str) -> SqlInspection:
    return SqlInspection(
        text=text,
        kind=_K.OTHER,
        risks=frozenset({Risk.UNPARSEABLE}),
        error=error,
        details=(f"unparseable: {error}",),
    )


def _parse_error_message(exc: ParseError) -> str:
    args = exc.args
    message = str(args[0]) if args else str(exc)
    location = args[1] if len(args) > 1 else None
    if isinstance(location, int):
        # pglast gives a 0-based character offset; PostgreSQL reports 1-based positions.
        return f"{message} (at character {location + 1})"
    return message


def _inspect(text: str, max_bytes: int) -> SqlInspection:
    if "\x00" in text:
        return _unparseable(text, "SQL text contains a NUL byte")
    n = len(text)
    if n > max_bytes or (
        n * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        return _unparseable(text, f"SQL text is larger than {max_bytes} bytes")
    try:
        tree = orjson.loads(parse_sql_json(text))
    except orjson.JSONDecodeError:  # orjson refuses nesting deeper than 1024 levels
        return _unparseable(text, "SQL nests too deeply to inspect")
    except ParseError as exc:
        return _unparseable(text, _parse_error_message(exc))
    except UnicodeEncodeError:
        return _unparseable(text, "SQL text is not valid Unicode (lone surrogate)")

    stmts = (tree.get("stmts") or []) if type(tree) is dict else []
    if not stmts:
        return _unparseable(text, "no SQL statement (empty, or only comments and semicolons)")

    walker = _Walker()
    kinds = []
    stmt = None
    for raw in stmts:
        stmt = raw.get("stmt") if type(raw) is dict else None
        kinds.append(walker.statement(stmt) if type(stmt) is dict else _K.OTHER)

    risks = walker.risks
    kind = strictest(kinds)
    if len(kinds) > 1:
        risks.add(Risk.MULTI_STATEMENT)
        summary = f"{len(kinds)} statements ({', '.join(kinds)}): classified by the strictest"
        if kind is _K.SELECT:  # `select` promises one plain read; a batch is not that
            kind = _K.OTHER
            summary = f"{len(kinds)} statements ({', '.join(kinds)}): a batch is not a plain read"
        walker.details = {summary: None, **walker.details}
    bound = limit_bound(stmt) if kind is _K.SELECT and len(kinds) == 1 else None
    return SqlInspection(
        text=text,
        kind=kind,
        kinds=tuple(kinds),
        statement_count=len(kinds),
        relations_read=frozenset(walker.read),
        relations_written=frozenset(walker.written),
        columns=frozenset(walker.columns),
        functions=frozenset(walker.functions),
        risks=frozenset(risks),
        details=tuple(walker.details),
        row_bound=bound,
    )


def inspect_sql(text: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> SqlInspection:
    """Classify SQL text. Never raises: anything that goes wrong is `unparseable`."""
    if not isinstance(text, str):
        return _unparseable("", f"SQL text must be a string, not {type(text).__name__}")
    try:
        return _inspect(text, max_bytes)
    except RecursionError:
        return _unparseable(text, "SQL nests too deeply to inspect")
    except Exception as exc:  # fail closed: never let an inspection error become an allow
        return _unparseable(text, f"internal error while inspecting SQL: {type(exc).__name__}")
