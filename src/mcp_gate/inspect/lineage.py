"""Column lineage per output position, fail-closed (DESIGN §7).

`trace(sql, catalog)` says, for every output position of one statement, which base columns
(`schema.table.column`, exact catalog names) its value derives from, plus the base columns used
in predicates (`predicate_columns`: WHERE, JOIN ON/USING, GROUP BY, HAVING, ORDER BY, DISTINCT
ON, window PARTITION BY/ORDER BY, aggregate FILTER, LIMIT/OFFSET, in every scope) and every base
column the statement touches (`referenced_columns`). Anything it cannot resolve with certainty
raises `LineageUnresolved(reason)`: over-masking is acceptable, a leak is not.

Pipeline (each step refuses rather than guesses):

1. Text: `U&"…"`/`U&'…'` (Unicode escapes, which sqlglot mis-parses) are refused.
2. Classification: pglast (`inspect_sql`) must see exactly one statement of kind `select`,
   `insert`, `update` or `delete`, calling no function it does not know (a user-defined or
   extension function may read any table, so its result's lineage is unknowable). sqlglot must
   parse exactly one statement whose root type matches (a SELECT must be a Select, set
   operation or VALUES; an INSERT an Insert, ...); no `exp.Command` anywhere, no
   data-modifying statement below the root, no DDL, INTO, PIVOT, CONNECT BY or lambda.
3. `qualify()` with a `MappingSchema` of exact names (built once per catalog and kept in
   `catalog.derived`), `validate_qualify_columns=True`, `expand_stars=True`. Unqualified
   relations resolve through `catalog.search_path`; a name that is a pg_catalog relation is
   refused unless pg_catalog was loaded, and so is a relation not in the catalog, a name that
   could be both a CTE and a relation, a three-part name, and any qualify error.
4. Our resolver walks the qualified tree with explicit scopes (PostgreSQL's visibility rules:
   CTEs, FROM items, LATERAL and implicitly-lateral functions, correlated outer references),
   computing for every FROM item an ordered list of `(column name, base columns)`:
   - a base table's column derives from itself (a generated column also from the columns its
     expression reads); a view's or materialized view's from its definition, traced
     recursively (cached per catalog; nesting limited to MAX_VIEW_DEPTH; cycles refused);
   - alias column lists (`users AS u(i, e)`, `cte(a, b)`, `v(x, y)`) rename by position;
   - CTEs are evaluated in order; a recursive CTE is iterated to a fixed point over all of its
     branches, so taint that moves between columns in the recursive term is found;
   - set operations and VALUES rows take the union of their branches/rows by position;
   - table functions (`generate_series`, `unnest`, `jsonb_each`, `LATERAL f(...)`) taint every
     output column with every argument; `*` over a function whose columns are not known is
     refused.
   An expression's lineage is the union of the lineage of every column it mentions, through
   every function, operator, cast, CASE (conditions and results), aggregate ORDER BY/FILTER
   and window clause. Whole-row references (`u`, `u.*` inside an expression, `row_to_json(u)`,
   `u::text`, `json_agg(d)` for a CTE or derived table) take every column of the row; `(u).col`
   takes exactly that column; `(u).*` in a select list is expanded by position, and so is a
   `*` that qualify leaves unexpanded (over duplicate column names). A subquery inside an
   expression (scalar, ARRAY, EXISTS, IN) contributes every column it references.
5. Cross-checks against PostgreSQL's own parse tree: every column name PostgreSQL's parser
   sees in a top-level output item (in every set-operation branch and RETURNING list) must be
   resolved while resolving that very item; every column and relation name it sees anywhere
   must be resolved somewhere; every `exp.Table` must have been resolved. Otherwise the
   parsers disagree and the statement is refused (this catches sqlglot reading a column as a
   keyword, and Unicode case folding that differs from PostgreSQL's ASCII-only folding).

DML (`INSERT/UPDATE/DELETE … RETURNING`): the RETURNING list is resolved as a SELECT over the
target (never a CTE of the same name) plus `FROM`/`USING` items, which `RETURNING *` also
expands, as PostgreSQL does; a target column the statement assigns (`SET c = …`, an INSERT's
source position, `ON CONFLICT DO UPDATE SET`) derives from its old value and the assigned
expression. Without RETURNING there are no outputs, but predicates still count.

Views' own WHERE clauses are not the caller's predicates (the agent did not choose them), so
they are not in `predicate_columns`; they are in `referenced_columns`. View definitions may call
functions the classifier does not know (their arguments taint their result).

Output positions are 0-based. Output names are PostgreSQL's (computed from pglast's parse tree
like FigureColname; star expansions take the column names); the executor's RowDescription
remains authoritative, and masking goes by position.

`LineageCache` memoises `trace` (results and refusals) by `(sql text, catalog.version)`.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pglast
import sqlglot
from pglast.parser import parse_sql_json
from pglast.stream import RawStream
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.schema import MappingSchema

from mcp_gate.inspect.catalog import Catalog, Relation
from mcp_gate.inspect.model import Risk, SqlInspection, SqlKind
from mcp_gate.inspect.pg_functions import PG_CATALOG_RELATIONS
from mcp_gate.inspect.sql import inspect_sql

__all__ = [
    "MAX_VIEW_DEPTH",
    "Lineage",
    "LineageCache",
    "LineageUnresolved",
    "OutputColumn",
    "explained_statement",
    "trace",
]

MAX_VIEW_DEPTH = 16
_MAX_FIXPOINT_ROUNDS = 64

_EMPTY: frozenset[str] = frozenset()
# Carried with the sources of every value that is not a plain copy of a column (a function,
# operator, cast, literal, whole row, subquery, table function...), through relations, CTEs,
# set operations and views, and taken out before anything leaves this module: it becomes
# `OutputColumn.direct`. Not a possible `schema.table.column` name.
_COMPUTED = "\x00computed"

# pg_catalog's set-returning functions (`proretset`, PostgreSQL 18). Their arguments decide
# how many rows come back (`regexp_matches(ssn, '^1')` in a select list returns only the
# matching rows), so they count as predicates wherever the call is.
_SET_RETURNING = frozenset(
    {
        "aclexplode", "generate_series", "generate_subscripts", "json_array_elements",
        "json_array_elements_text", "json_each", "json_each_text", "json_object_keys",
        "json_populate_recordset", "json_to_recordset", "jsonb_array_elements",
        "jsonb_array_elements_text", "jsonb_each", "jsonb_each_text", "jsonb_object_keys",
        "jsonb_path_query", "jsonb_path_query_tz", "jsonb_populate_recordset",
        "jsonb_to_recordset", "pg_options_to_table", "pg_partition_ancestors",
        "pg_partition_tree", "pg_mcv_list_items", "pg_snapshot_xip", "regexp_matches",
        "regexp_split_to_table", "string_to_table", "ts_debug", "ts_parse", "ts_stat",
        "ts_token_type", "txid_snapshot_xip", "unnest", "explode",
    }
)  # fmt: skip


class LineageUnresolved(Exception):
    """The statement's lineage cannot be resolved with certainty: deny, never pass."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OutputColumn:
    """One output position (0-based) and the base columns its value derives from.

    `direct`: every value at this position is a plain copy of one of its source columns'
    values (through aliases, derived tables, CTEs, set operations and views), never computed.
    Only then may a strategy that reveals part of the value (`partial`) or lets equal values
    be compared (`hash`) apply: on `reverse(email)` or `substr(card_number, 1, 13)` a partial
    hint reveals other characters than the hint of the value, and on `coalesce(nullif(ssn,
    ssn), '123-45-6789')` a hash token is the token of a value the agent chose (a dictionary
    of tokens to compare against)."""

    position: int
    name: str
    sources: frozenset[str]
    direct: bool = False


@dataclass(frozen=True, slots=True)
class Lineage:
    """The lineage of one statement. Column names are `schema.table.column`, exact.

    `written`: for DML, each target column the statement assigns (`SET c = …`, an INSERT's
    column, `ON CONFLICT DO UPDATE SET`) with the base columns the assigned values derive
    from, sorted by target: a write can copy a masked value where a read would not mask it.
    """

    outputs: tuple[OutputColumn, ...]
    predicate_columns: frozenset[str]
    referenced_columns: frozenset[str]
    relations: frozenset[str]
    written: tuple[tuple[str, frozenset[str]], ...] = ()

    @property
    def output_columns(self) -> frozenset[str]:
        """Every base column some output position derives from."""
        out: set[str] = set()
        for o in self.outputs:
            out |= o.sources
        return frozenset(out)

    def positions_from(self, match: Callable[[str], bool]) -> tuple[int, ...]:
        """Output positions deriving from a base column for which `match` is true."""
        return tuple(o.position for o in self.outputs if any(match(s) for s in o.sources))

    def predicates_from(self, match: Callable[[str], bool]) -> frozenset[str]:
        """Predicate columns for which `match` is true."""
        return frozenset(c for c in self.predicate_columns if match(c))


# --------------------------------------------------------------------------- helpers


def _refuse(reason: str) -> LineageUnresolved:
    return LineageUnresolved(reason)


def _check_args(node: exp.Expr, allowed: frozenset[str], what: str) -> None:
    """Refuse any clause of `node` the resolver does not handle (fail closed on new syntax)."""
    for key, value in node.args.items():
        if key in allowed or value is None or value is False:
            continue
        if isinstance(value, (list, str)) and not value:
            continue
        raise _refuse(f"unsupported {what} clause {key!r}")


_GENERATED_ALIAS = re.compile(r"_col_[0-9]+")
_UNICODE_ESCAPE = re.compile(r"[uU]&['\"]")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _pg_ident(ident: exp.Expr) -> str:
    """An identifier as PostgreSQL folds it (unquoted: ASCII letters lower-cased only)."""
    if isinstance(ident, exp.Identifier):
        return ident.this if ident.quoted else ident.this.translate(_ASCII_LOWER)
    return ident.name


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    # sqlglot highlights with ANSI escapes; keep the message readable.
    first = re.sub(r"\x1b\[[0-9;]*m", "", first)
    return first[:200]


class _Rel:
    """A row source visible under an alias: ordered `(name, base columns)` pairs.

    `open_sources`: a table function whose columns are not all known by name; any column name
    resolves to these (every argument's lineage). `exact`: False when the column list may be
    incomplete (so `*` over it cannot be expanded by position).
    """

    __slots__ = ("by_name", "cols", "exact", "open_sources", "whole")

    def __init__(
        self,
        cols: list[tuple[str, frozenset[str]]],
        open_sources: frozenset[str] | None = None,
        exact: bool = True,
    ) -> None:
        self.cols = cols
        by: dict[str, frozenset[str]] = {}
        whole: set[str] = set()
        for name, srcs in cols:
            prev = by.get(name)
            by[name] = srcs if prev is None else prev | srcs
            whole |= srcs
        if open_sources is not None:
            whole |= open_sources
        self.by_name = by
        self.open_sources = open_sources
        self.exact = exact
        self.whole = frozenset(whole)

    def column(self, name: str) -> frozenset[str] | None:
        srcs = self.by_name.get(name)
        if srcs is None and self.open_sources is not None:
            return self.open_sources
        return srcs

    def renamed(self, names: list[str], what: str) -> _Rel:
        if not names:
            return self
        if self.open_sources is not None and not self.exact:
            extra = [(n, self.open_sources) for n in names[len(self.cols) :]]
            cols = [(names[i] if i < len(names) else n, s) for i, (n, s) in enumerate(self.cols)]
            return _Rel(cols + extra, self.open_sources, self.exact)
        if len(names) > len(self.cols):
            raise _refuse(f"{what} has {len(self.cols)} columns but {len(names)} names")
        cols = [(names[i] if i < len(names) else n, s) for i, (n, s) in enumerate(self.cols)]
        return _Rel(cols, self.open_sources, self.exact)


class _Env:
    """One query level: its CTEs and FROM items, and the enclosing level."""

    __slots__ = ("ctes", "parent", "rels")

    def __init__(self, parent: _Env | None) -> None:
        self.parent = parent
        self.ctes: dict[str, _Rel | None] = {}  # None: being defined (not yet visible)
        self.rels: dict[str, _Rel] = {}

    def rel(self, alias: str) -> _Rel | None:
        env: _Env | None = self
        while env is not None:
            r = env.rels.get(alias)
            if r is not None:
                return r
            env = env.parent
        return None

    def cte(self, name: str) -> tuple[bool, _Rel | None]:
        env: _Env | None = self
        while env is not None:
            if name in env.ctes:
                return True, env.ctes[name]
            env = env.parent
        return False, None

    def without_rels(self) -> _Env:
        """This level's CTEs and outer levels, but not its FROM items (non-LATERAL items)."""
        env = _Env(self.parent)
        env.ctes = self.ctes
        return env


# --------------------------------------------------------------------------- per catalog


class _Prepared:
    """What one catalog version needs for lineage: the sqlglot schema and view lineages."""

    __slots__ = ("catalog", "lock", "pg_catalog_loaded", "schema", "tables", "views")

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        mapping: dict[str, object] = {}
        for rel in catalog.relations.values():
            tables = cast(dict[str, object], mapping.setdefault(rel.schema, {}))
            tables[rel.name] = dict.fromkeys(rel.columns, "text")
        self.schema = MappingSchema(mapping, dialect="postgres", normalize=False)
        self.pg_catalog_loaded = "pg_catalog" in mapping
        # view (schema, name) -> (its columns' lineage, its Lineage, how deeply views nest in
        # it), or the reason it is unresolved
        self.views: dict[
            tuple[str, str], tuple[list[tuple[str, frozenset[str]]], Lineage, int] | str
        ] = {}
        self.tables: dict[tuple[str, str], list[tuple[str, frozenset[str]]]] = {}
        self.lock = threading.RLock()


def _prepared(catalog: Catalog) -> _Prepared:
    prep = catalog.derived.get("lineage")
    if prep is None:
        prep = catalog.derived.setdefault("lineage", _Prepared(catalog))
    return prep


# --------------------------------------------------------------------------- the resolver

# Select args the resolver understands (others must be empty).
_SELECT_ARGS = frozenset(
    {
        "with_",
        "expressions",
        "distinct",
        "from_",
        "joins",
        "where",
        "group",
        "having",
        "windows",
        "order",
        "limit",
        "offset",
    }
)
_SETOP_ARGS = frozenset({"with_", "this", "expression", "distinct", "order", "limit", "offset"})
_SUBQUERY_ARGS = frozenset({"this", "alias"})
_ORDER_LIMIT = frozenset({"order", "limit", "offset"})
_GROUP_ARGS = ("expressions", "grouping_sets", "cube", "rollup")
_CTE_ARGS = frozenset({"this", "alias", "materialized"})
_TABLE_ARGS = frozenset({"this", "alias", "db", "joins", "only", "ordinality", "sample"})
_JOIN_ARGS = frozenset({"this", "on", "side", "kind", "using", "method"})
_VALUES_ARGS = frozenset({"expressions", "alias"})

# Nodes that must never appear anywhere in an analysed statement.
_FORBIDDEN = (
    exp.Command,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.Into,
    exp.Lambda,
    exp.Comprehension,
    exp.Pivot,
    exp.Connect,
    exp.Lock,
    exp.Merge,
    exp.Transaction,
    exp.Set,
)

# Table functions in FROM whose columns PostgreSQL fixes (by lower-case name). Functions
# returning a scalar name their one column after the alias (or themselves); functions with
# OUT parameters name their columns after them, whatever the alias.
_FUNC_SCALAR = frozenset(
    {
        "generate_series",
        "generate_subscripts",
        "regexp_split_to_table",
        "string_to_table",
        "regexp_matches",
        "jsonb_object_keys",
        "json_object_keys",
        "jsonb_path_query",
    }
)
_FUNC_OUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "jsonb_array_elements": ("value",),
    "jsonb_array_elements_text": ("value",),
    "json_array_elements": ("value",),
    "json_array_elements_text": ("value",),
    "jsonb_each": ("key", "value"),
    "jsonb_each_text": ("key", "value"),
    "json_each": ("key", "value"),
    "json_each_text": ("key", "value"),
}


def _function_source(item: exp.Expr) -> exp.Expr | None:
    """The function of a FROM item that is a table function (or None)."""
    if isinstance(item, exp.Unnest):
        return item
    if isinstance(item, (exp.Table, exp.Lateral)) and isinstance(item.this, exp.Func):
        return item.this
    return None


def _function_columns(func: exp.Expr, item: exp.Expr) -> list[str] | None:
    """PostgreSQL's default column names of a table function in FROM (before the alias
    column list renames them), or None when the function's columns are not known.

    For `unnest`, the WITH ORDINALITY column is not included (sqlglot keeps it apart)."""
    alias = item.args.get("alias")
    alias_name = _pg_ident(alias.this) if isinstance(alias, exp.TableAlias) and alias.this else ""
    if isinstance(func, exp.Unnest):
        n = len(func.expressions)
        if n == 0:
            return None
        return [alias_name or "unnest"] if n == 1 else ["unnest"] * n
    name = _func_name(func)
    if name in _FUNC_OUT_COLUMNS:
        base = list(_FUNC_OUT_COLUMNS[name])
    elif name in _FUNC_SCALAR:
        base = [alias_name or name]
    else:
        return None
    if item.args.get("ordinality") or func.args.get("ordinality"):
        base.append("ordinality")
    return base


def _func_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    if isinstance(node, (exp.GenerateSeries, exp.ExplodingGenerateSeries)):
        return "generate_series"
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return type(node).__name__.lower()


class _Ctx:
    """Accumulators of one trace."""

    __slots__ = (
        "collectors",
        "current",
        "depth",
        "handled",
        "pg_names",
        "predicates",
        "prep",
        "referenced",
        "relations",
        "seen",
        "view_nesting",
        "view_stack",
        "written",
    )

    def __init__(self, prep: _Prepared, depth: int, view_stack: tuple[tuple[str, str], ...]):
        self.prep = prep
        self.depth = depth
        self.view_stack = view_stack
        self.predicates: set[str] = set()
        self.referenced: set[str] = set()
        self.relations: set[str] = set()
        self.seen: set[str] = set()  # column/alias names resolved by name
        self.handled: set[int] = set()  # id() of every exp.Table resolved
        self.collectors: list[set[str]] = []  # subqueries in expressions: all they reference
        self.pg_names: list[str | None] | None = None  # top-level output names (PostgreSQL's)
        self.view_nesting = 0  # how deeply views nest below this statement
        self.current: set[str] | None = None  # names resolved in the output being evaluated
        self.written: dict[str, set[str]] = {}  # DML target column -> sources of its values

    def saw(self, name: str) -> None:
        """`name` (a column, row or relation name) was resolved."""
        self.seen.add(name)
        if self.current is not None:
            self.current.add(name)

    def touch(self, srcs: Iterable[str]) -> None:
        self.referenced.update(srcs)
        if self.collectors:
            self.collectors[-1].update(srcs)


class _Resolver:
    def __init__(self, ctx: _Ctx) -> None:
        self.ctx = ctx
        # qualify leaves names inside a FROM function's arguments unqualified (and unchecked):
        # there, we resolve bare names ourselves, as PostgreSQL does.
        self.bare_names = False

    # ----------------------------------------------------------------- queries

    def query(self, node: exp.Expr, env: _Env) -> list[tuple[str, frozenset[str]]]:
        if isinstance(node, exp.Subquery):
            # `(SELECT ...) ORDER BY ... LIMIT ...`: the wrapper may order and limit.
            self._check_args(node, _SUBQUERY_ARGS | _ORDER_LIMIT, "parenthesised query")
            outputs = self.query(node.this, env)
            names = [n for n, _ in outputs]
            self.order_limit(node, env, outputs, names)
            return outputs
        if isinstance(node, exp.Select):
            return self.select(node, env)
        if isinstance(node, exp.SetOperation):
            return self.setop(node, env)
        if isinstance(node, exp.Values):
            return self.values(node, env)
        raise _refuse(f"unsupported query construct {type(node).__name__}")

    def _check_args(self, node: exp.Expr, allowed: frozenset[str], what: str) -> None:
        _check_args(node, allowed, what)

    def select(self, node: exp.Select, env: _Env) -> list[tuple[str, frozenset[str]]]:
        self._check_args(node, _SELECT_ARGS, "SELECT")
        level = _Env(env)
        with_ = node.args.get("with_")
        if with_ is not None:
            self.with_(with_, level)
        from_ = node.args.get("from_")
        if from_ is not None:
            self.from_item(from_.this, level)
        for join in node.args.get("joins") or ():
            self.join(join, level)
        self._star_check(node, level)

        named_windows: dict[str, frozenset[str]] = {}
        for win in node.args.get("windows") or ():
            srcs = self.window_clause(win, level, named_windows)
            named_windows[win.name] = srcs

        outputs: list[tuple[str, frozenset[str]]] = []
        aliases: list[str] = []  # qualified alias names, for ORDER BY / GROUP BY references
        for proj in node.expressions:
            expanded = self._expand_star(node, proj, level)
            if expanded is not None:
                outputs.extend(expanded)
                aliases.extend(n for n, _ in expanded)
                continue
            name, alias = self._output_name(proj)
            srcs = self.output_expr(proj, level, named_windows)
            outputs.append((name, srcs))
            aliases.append(alias)
            if proj.meta.get("lineage_user_alias"):
                # GROUP BY/ORDER BY may name it; qualify then inlines the aliased expression.
                self.ctx.seen.add(alias)

        where = node.args.get("where")
        if where is not None:
            self.predicate(where.this, level, named_windows)
        group = node.args.get("group")
        if group is not None:
            _check_args(group, frozenset(_GROUP_ARGS), "GROUP BY")
            for key in _GROUP_ARGS:
                for item in group.args.get(key) or ():
                    self.output_ref_predicate(item, level, outputs, aliases, named_windows)
        having = node.args.get("having")
        if having is not None:
            self.predicate(having.this, level, named_windows)
        distinct = node.args.get("distinct")
        if distinct is not None:
            _check_args(distinct, frozenset({"expressions", "on"}), "DISTINCT")
            on = distinct.args.get("on")
            if on is not None:
                items = on.expressions if isinstance(on, exp.Tuple) else [on]
                for item in items:
                    self.output_ref_predicate(item, level, outputs, aliases, named_windows)
            for item in distinct.expressions or ():
                self.output_ref_predicate(item, level, outputs, aliases, named_windows)
            if on is None and not distinct.expressions:
                # plain DISTINCT compares whole output rows (how many come back is an oracle)
                for _, srcs in outputs:
                    self.ctx.predicates.update(srcs)
        self.order_limit(node, level, outputs, aliases, named_windows)
        return outputs

    def order_limit(
        self,
        node: exp.Expr,
        level: _Env,
        outputs: list[tuple[str, frozenset[str]]],
        aliases: list[str],
        named_windows: dict[str, frozenset[str]] | None = None,
    ) -> None:
        order = node.args.get("order")
        if order is not None:
            _check_args(order, frozenset({"expressions"}), "ORDER BY")
            for item in order.expressions:
                target = item.this if isinstance(item, exp.Ordered) else item
                self.output_ref_predicate(target, level, outputs, aliases, named_windows)
        for key in ("limit", "offset"):
            clause = node.args.get(key)
            if clause is not None:
                self.predicate(clause, level, named_windows)

    def setop(self, node: exp.SetOperation, env: _Env) -> list[tuple[str, frozenset[str]]]:
        self._check_args(node, _SETOP_ARGS, type(node).__name__.upper())
        level = _Env(env)
        with_ = node.args.get("with_")
        if with_ is not None:
            self.with_(with_, level)
        left = self.query(node.this, level)
        right = self.query(node.expression, level)
        if len(left) != len(right):
            raise _refuse("set operation branches have different column counts")
        outputs = [(ln, ls | rs) for (ln, ls), (_, rs) in zip(left, right, strict=True)]
        if not isinstance(node, exp.Union) or node.args.get("distinct"):
            # UNION (without ALL), INTERSECT and EXCEPT compare the rows of both branches:
            # whether a row comes back says whether a value equals one the agent chose
            for _, srcs in outputs:
                self.ctx.predicates.update(srcs)
        aliases = [n for n, _ in outputs]
        self.order_limit(node, level, outputs, aliases)
        return outputs

    def values(self, node: exp.Values, env: _Env) -> list[tuple[str, frozenset[str]]]:
        self._check_args(node, _VALUES_ARGS, "VALUES")
        width = -1
        cols: list[set[str]] = []
        for row in node.expressions:
            items = row.expressions if isinstance(row, exp.Tuple) else [row]
            if width < 0:
                width = len(items)
                cols = [set() for _ in range(width)]
            elif len(items) != width:
                raise _refuse("VALUES rows have different lengths")
            for i, item in enumerate(items):
                cols[i] |= self.expr(item, env)
        if width < 0:
            raise _refuse("empty VALUES")
        return [(f"column{i + 1}", frozenset(c)) for i, c in enumerate(cols)]

    def with_(self, with_: exp.With, level: _Env) -> None:
        _check_args(with_, frozenset({"expressions", "recursive"}), "WITH")
        recursive = bool(with_.args.get("recursive"))
        for cte in with_.expressions:
            self._check_args(cte, _CTE_ARGS, "WITH")
            name = cte.alias
            if not name:
                raise _refuse("CTE without a name")
            if name in level.ctes:
                raise _refuse(f"CTE name {name!r} used twice")
            col_names = [_pg_ident(c) for c in cte.args["alias"].columns or ()]
            if recursive and self._refers_to(cte.this, name):
                rel = self.recursive_cte(cte, name, col_names, level)
            else:
                level.ctes[name] = None  # a non-recursive CTE cannot see itself
                rel = _Rel(self.query(cte.this, level)).renamed(col_names, f"CTE {name}")
            level.ctes[name] = rel

    @staticmethod
    def _refers_to(node: exp.Expr, name: str) -> bool:
        for table in node.find_all(exp.Table):
            if not table.args.get("db") and table.name == name:
                return True
        return False

    def recursive_cte(self, cte: exp.CTE, name: str, col_names: list[str], level: _Env) -> _Rel:
        body = cte.this
        if not isinstance(body, exp.Union):
            raise _refuse(f"recursive CTE {name} is not a UNION")
        # Start from nothing, then re-evaluate the whole UNION with the current lineage of the
        # CTE until nothing changes: taint can move between columns in the recursive term.
        level.ctes[name] = None
        anchor = _Rel(self.query(body.this, level)).renamed(col_names, f"CTE {name}")
        current = anchor
        for _ in range(_MAX_FIXPOINT_ROUNDS):
            level.ctes[name] = current
            nxt = _Rel(self.query(body, level)).renamed(col_names, f"CTE {name}")
            if len(nxt.cols) != len(current.cols):
                raise _refuse(f"recursive CTE {name} changes its column count")
            merged = _Rel(
                [(n, s | cs) for (n, s), (_, cs) in zip(nxt.cols, current.cols, strict=True)]
            )
            if merged.cols == current.cols:
                return merged
            current = merged
        raise _refuse(f"recursive CTE {name} did not reach a fixed point")

    # ----------------------------------------------------------------- FROM

    def from_item(self, item: exp.Expr, level: _Env) -> None:
        if isinstance(item, exp.Table):
            self._check_args(item, _TABLE_ARGS, "table reference")
            rel = self.table(item, level)
            self._add(level, item, rel)
            for join in item.args.get("joins") or ():
                self.join(join, level)
            return
        if isinstance(item, exp.Subquery):
            inner = item.this
            alias = item.args.get("alias")
            if alias is None and isinstance(inner, (exp.Table, exp.Subquery)):
                # A parenthesised join tree without alias: its items join this level.
                self._check_args(item, frozenset({"this", "joins"}), "joined tables")
                self.from_item(inner, level)
                for join in item.args.get("joins") or ():
                    self.join(join, level)
                return
            self._check_args(item, frozenset({"this", "alias", "joins"}), "derived table")
            if not isinstance(inner, exp.Query):
                raise _refuse(f"unsupported derived table {type(inner).__name__}")
            rel = _Rel(self.query(inner, level.without_rels()))
            self._add(level, item, rel)
            for join in item.args.get("joins") or ():
                self.join(join, level)
            return
        if isinstance(item, exp.Lateral):
            self._check_args(item, frozenset({"this", "alias", "ordinality"}), "LATERAL")
            inner = item.this
            if isinstance(inner, exp.Subquery):
                self._check_args(inner, _SUBQUERY_ARGS, "LATERAL subquery")
                rel = _Rel(self.query(inner.this, level))
            elif isinstance(inner, exp.Func):
                rel = self.function_rel(inner, item, level)
            else:
                raise _refuse(f"unsupported LATERAL {type(inner).__name__}")
            self._add(level, item, rel)
            return
        if isinstance(item, exp.Unnest):
            rel = self.function_rel(item, item, level)
            self._add(level, item, rel)
            return
        if isinstance(item, exp.Values):
            rel = _Rel(self.values(item, level.without_rels()))
            self._add(level, item, rel)
            return
        raise _refuse(f"unsupported FROM item {type(item).__name__}")

    def _add(self, level: _Env, item: exp.Expr, rel: _Rel) -> None:
        alias = item.args.get("alias")
        if isinstance(alias, exp.TableAlias) and _function_source(item) is None:
            # (table functions apply their alias column list themselves)
            names = [_pg_ident(c) for c in alias.columns or ()]
            if names:
                rel = rel.renamed(names, f"alias {alias.name}")
        key = item.alias_or_name if isinstance(item, exp.Table) else item.alias
        if not key:
            raise _refuse(f"FROM item without a name: {type(item).__name__}")
        if key in level.rels:
            raise _refuse(f"table name {key!r} specified more than once")
        level.rels[key] = rel
        self.ctx.saw(key)

    def table(self, table: exp.Table, level: _Env) -> _Rel:
        ctx = self.ctx
        ctx.handled.add(id(table))
        this = table.this
        if isinstance(this, exp.Func):
            return self.function_rel(this, table, level)
        if not isinstance(this, exp.Identifier):
            raise _refuse(f"unsupported table reference {type(this).__name__}")
        if table.args.get("catalog"):
            raise _refuse("three-part relation names are not supported")
        name = this.this
        db = table.args.get("db")
        if db is None:
            found, rel = level.cte(name)
            if not found:
                raise _refuse(f"relation {name!r} is not in the catalog")
            if rel is None:
                raise _refuse(f"CTE {name!r} referenced before it is defined")
            ctx.saw(name)
            return rel
        schema = db.name
        relation = ctx.prep.catalog.get(schema, name)
        if relation is None:
            raise _refuse(f"relation {schema}.{name} is not in the catalog")
        ctx.relations.add(relation.qualified)
        ctx.saw(name)
        if relation.is_view:
            return _Rel(_view_columns(relation, ctx))
        return _Rel(_table_columns(relation, ctx.prep))

    def function_rel(self, func: exp.Expr, item: exp.Expr, level: _Env) -> _Rel:
        """A table function: every output column derives from every argument."""
        if isinstance(func, exp.Unnest):
            args: list[exp.Expr] = list(func.expressions)
        else:
            args = list(func.iter_expressions())
        srcs: set[str] = {_COMPUTED}
        saved, self.bare_names = self.bare_names, True
        try:
            for arg in args:
                # the arguments decide how many rows the function returns: predicates
                srcs |= self.predicate(arg, level)
        finally:
            self.bare_names = saved
        taint = frozenset(srcs)
        alias = item.args.get("alias")
        names = [_pg_ident(c) for c in alias.columns] if isinstance(alias, exp.TableAlias) else []
        known = _function_columns(func, item)
        if known is not None:
            if len(names) > len(known):
                raise _refuse("table function has more column names than columns")
            cols = [(names[i] if i < len(names) else n, taint) for i, n in enumerate(known)]
            offset = func.args.get("offset") if isinstance(func, exp.Unnest) else None
            if offset:
                name = _pg_ident(offset) if isinstance(offset, exp.Identifier) else "ordinality"
                cols.append((name, taint))
            return _Rel(cols)
        # Unknown function: columns beyond the alias list are unknown, so `*` over it is
        # refused, and any column name resolves to all of its arguments.
        return _Rel([(n, taint) for n in names], open_sources=taint, exact=False)

    def join(self, join: exp.Join, level: _Env) -> None:
        self._check_args(join, _JOIN_ARGS, "JOIN")
        method = (join.args.get("method") or "").upper()
        before = dict(level.rels)
        self.from_item(join.this, level)
        if method == "NATURAL":
            right = {k: v for k, v in level.rels.items() if k not in before}
            right_names = {n for r in right.values() for n, _ in r.cols}
            for rel in before.values():
                for n, s in rel.cols:
                    if n in right_names:
                        self.ctx.predicates.update(s)
                        for r in right.values():
                            self.ctx.predicates.update(r.by_name.get(n, _EMPTY))
        elif method:
            raise _refuse(f"unsupported join method {method}")
        on = join.args.get("on")
        if on is not None:
            self.predicate(on, level)
        for ident in join.args.get("using") or ():
            name = _pg_ident(ident)
            self.ctx.saw(name)
            for rel in level.rels.values():
                srcs = rel.by_name.get(name)
                if srcs:
                    self.ctx.predicates.update(srcs)
                    self.ctx.touch(srcs)

    def _star_check(self, node: exp.Select, level: _Env) -> None:
        stars = node.meta.get("lineage_stars")
        if not stars:
            return
        for qualifier in stars:
            rels = level.rels.values() if qualifier is None else [level.rel(qualifier)]
            for rel in rels:
                if rel is None or not rel.exact:
                    raise _refuse("'*' over a table function whose columns are not known")

    # ----------------------------------------------------------------- projections

    def _expand_star(
        self, select: exp.Select, proj: exp.Expr, level: _Env
    ) -> list[tuple[str, frozenset[str]]] | None:
        """Select-list items that become several outputs: `(u).*` (one output per column of
        the row `u`), and a `*`/`t.*` that qualify left unexpanded (it does so over duplicate
        column names, which PostgreSQL allows)."""
        node = proj.this if isinstance(proj, exp.Alias) else proj
        rels: list[_Rel | None]
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Star):
            rels = [self._row_rel(node.this, level)]
            what = "'(x).*' of something other than a known row"
        elif isinstance(node, exp.Star):
            if select.meta.get("lineage_using"):
                raise _refuse("'*' over a USING or NATURAL join was left unexpanded")
            if node.args.get("except_") or node.args.get("replace") or node.args.get("rename"):
                raise _refuse("unsupported '*' modifiers")
            rels = list(level.rels.values())
            what = "'*' over a relation whose columns are not known"
        elif isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
            rels = [level.rels.get(node.table)]
            what = f"'{node.table}.*' over a relation whose columns are not known"
        else:
            return None
        out: list[tuple[str, frozenset[str]]] = []
        for rel in rels:
            if rel is None or not rel.exact or rel.open_sources is not None:
                raise _refuse(what)
            for col in rel.cols:
                self.ctx.touch(col[1])
                out.append(col)
        return out

    def _row_rel(self, node: exp.Expr, level: _Env) -> _Rel | None:
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.TableColumn):
            rel = level.rel(node.name)
            if rel is None:
                raise _refuse(f"unknown row reference {node.name!r}")
            self.ctx.saw(node.name)
            return rel
        return None

    def _output_name(self, proj: exp.Expr) -> tuple[str, str]:
        """(PostgreSQL's output name, the alias qualify gave it)."""
        pg_names = self.ctx.pg_names
        if pg_names is not None:
            pos = proj.meta.get("lineage_pos")
            if pos is None and isinstance(proj, exp.Alias):
                pos = proj.this.meta.get("lineage_pos")
            if pos is not None and pos < len(pg_names) and pg_names[pos] is not None:
                return pg_names[pos], proj.alias_or_name
        if isinstance(proj, exp.Alias):
            alias = proj.alias
            if proj.meta.get("lineage_user_alias") or not _GENERATED_ALIAS.fullmatch(alias):
                return alias, alias
            return _figure_colname(proj.this), alias
        return _figure_colname(proj), proj.alias_or_name

    # ----------------------------------------------------------------- expressions

    def output_expr(
        self, proj: exp.Expr, env: _Env, named_windows: dict[str, frozenset[str]] | None = None
    ) -> frozenset[str]:
        """An output item. When PostgreSQL's parser listed the column names it references
        (top-level outputs), every one of them must be resolved here, in this very item."""
        expected = proj.meta.get("lineage_check")
        if expected is None and isinstance(proj, exp.Alias):
            expected = proj.this.meta.get("lineage_check")
        if expected is None:
            return self.expr(proj, env, named_windows)
        ctx = self.ctx
        saved, ctx.current = ctx.current, set()
        try:
            srcs = self.expr(proj, env, named_windows)
            missing = expected - ctx.current
        finally:
            ctx.current = saved
        if missing:
            raise _refuse(f"parsers disagree on output column references ({sorted(missing)[0]!r})")
        return srcs

    def predicate(
        self, node: exp.Expr, env: _Env, named_windows: dict[str, frozenset[str]] | None = None
    ) -> frozenset[str]:
        srcs = self.expr(node, env, named_windows)
        self.ctx.predicates.update(srcs)
        return srcs

    def output_ref_predicate(
        self,
        node: exp.Expr,
        env: _Env,
        outputs: list[tuple[str, frozenset[str]]],
        aliases: list[str],
        named_windows: dict[str, frozenset[str]] | None = None,
    ) -> None:
        """ORDER BY / GROUP BY / DISTINCT ON item: an output position, an output name, or an
        expression over the inputs."""
        if isinstance(node, exp.Literal) and not node.is_string:
            try:
                pos = int(node.this)
            except ValueError:
                pos = 0
            if 1 <= pos <= len(outputs):
                self.ctx.predicates.update(outputs[pos - 1][1])
                return
            raise _refuse(f"position {node.this} is not in the select list")
        if (
            isinstance(node, exp.Column)
            and not node.table
            and isinstance(node.this, exp.Identifier)
        ):
            name = node.name
            hits = [
                outputs[i][1]
                for i in range(len(outputs))
                if aliases[i] == name or outputs[i][0] == name
            ]
            if hits:
                self.ctx.saw(name)
                for srcs in hits:
                    self.ctx.predicates.update(srcs)
                return
        self.predicate(node, env, named_windows)

    def window_clause(
        self, win: exp.Window, env: _Env, named: dict[str, frozenset[str]]
    ) -> frozenset[str]:
        srcs: set[str] = set()
        for key, value in win.args.items():
            if key in ("this", "over", "first") or value is None:
                continue
            if key == "alias":
                srcs |= named.get(value.name, _EMPTY)
                continue
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, exp.Expr):
                    srcs |= self.predicate(v, env, named)
        return frozenset(srcs)

    def expr(
        self, node: exp.Expr, env: _Env, named_windows: dict[str, frozenset[str]] | None = None
    ) -> frozenset[str]:
        out: set[str] = set() if _is_copy(node) else {_COMPUTED}
        ctx = self.ctx
        stack = [node]
        while stack:
            n = stack.pop()
            t = type(n)
            if isinstance(n, exp.Column):
                out |= self.column(n, env)
                continue
            if isinstance(n, exp.Func) and _func_name(n) in _SET_RETURNING:
                # how many rows come back depends on the arguments: a predicate
                for arg in n.iter_expressions():
                    out |= self.predicate(arg, env, named_windows)
                continue
            if isinstance(n, exp.TableColumn):
                rel = env.rel(n.name)
                if rel is None:
                    raise _refuse(f"unknown row reference {n.name!r}")
                ctx.saw(n.name)
                ctx.touch(rel.whole)
                out |= rel.whole
                continue
            if isinstance(n, exp.Dot):
                out |= self.dot(n, env)
                continue
            if isinstance(n, (exp.Subquery, exp.Query)):
                out |= self.subquery(n, env)
                continue
            if isinstance(n, exp.Window):
                named = named_windows or {}
                win_srcs = self.window_clause(n, env, named)
                out |= win_srcs
                if n.this is not None:
                    stack.append(n.this)
                continue
            if isinstance(n, exp.Filter):
                stack.append(n.this)
                cond = n.expression
                out |= self.predicate(cond.this if isinstance(cond, exp.Where) else cond, env)
                continue
            if isinstance(n, exp.Star):
                if isinstance(n.parent, exp.Count):
                    continue
                raise _refuse("'*' in an unsupported position")
            if isinstance(n, exp.Table):
                raise _refuse("a table reference inside an expression")
            if isinstance(n, (*_FORBIDDEN, exp.DML)):
                raise _refuse(f"unsupported construct {t.__name__}")
            for value in n.args.values():
                if isinstance(value, exp.Expr):
                    stack.append(value)
                elif isinstance(value, list):
                    for v in value:
                        if isinstance(v, exp.Expr):
                            stack.append(v)
        return frozenset(out)

    def column(self, col: exp.Column, env: _Env) -> frozenset[str]:
        this = col.this
        if col.args.get("db") or col.args.get("catalog"):
            raise _refuse(f"unsupported column reference {col.sql('postgres')}")
        table = col.table
        if isinstance(this, exp.Star):
            if not table:
                raise _refuse("'*' in an unsupported position")
            rel = env.rel(table)
            if rel is None:
                raise _refuse(f"unknown row reference {table!r}")
            self.ctx.saw(table)
            self.ctx.touch(rel.whole)
            return rel.whole
        if not table:
            if self.bare_names and isinstance(this, exp.Identifier):
                return self.bare_name(this.this, env)
            raise _refuse(f"column {col.name!r} could not be resolved")
        rel = env.rel(table)
        if rel is None:
            raise _refuse(f"unknown table reference {table!r}")
        name = col.name
        srcs = rel.column(name)
        if srcs is None:
            raise _refuse(f"column {table}.{name} does not exist")
        self.ctx.saw(name)
        self.ctx.touch(srcs)
        return srcs

    def bare_name(self, name: str, env: _Env) -> frozenset[str]:
        """An unqualified name: a column of exactly one FROM item at the innermost level that
        has one, else a whole-row reference to a FROM item of that name (PostgreSQL's order)."""
        level: _Env | None = env
        while level is not None:
            hits = [r for r in level.rels.values() if name in r.by_name]
            if len(hits) > 1:
                raise _refuse(f"column reference {name!r} is ambiguous")
            if hits:
                srcs = hits[0].by_name[name]
                break
            if any(r.open_sources is not None for r in level.rels.values()):
                raise _refuse(f"column reference {name!r} could be a table function column")
            level = level.parent
        else:
            rel = env.rel(name)
            if rel is None:
                raise _refuse(f"column {name!r} could not be resolved")
            srcs = rel.whole
        self.ctx.saw(name)
        self.ctx.touch(srcs)
        return srcs

    def dot(self, node: exp.Dot, env: _Env) -> frozenset[str]:
        field = node.expression
        rel = self._row_rel(node.this, env)
        if rel is not None:
            if isinstance(field, exp.Star):
                self.ctx.touch(rel.whole)
                return rel.whole
            if isinstance(field, exp.Identifier):
                name = _pg_ident(field)
                srcs = rel.column(name)
                if srcs is None:
                    raise _refuse(f"row {node.this.sql('postgres')} has no column {name!r}")
                self.ctx.saw(name)
                self.ctx.touch(srcs)
                return srcs
            raise _refuse("unsupported field selection")
        # A field of a composite value, `.*` of an expression: everything the value derives from.
        srcs = self.expr(node.this, env) | {_COMPUTED}
        if isinstance(field, exp.Expr) and not isinstance(field, (exp.Identifier, exp.Star)):
            srcs |= self.expr(field, env)
        return srcs

    def subquery(self, node: exp.Expr, env: _Env) -> frozenset[str]:
        """A subquery inside an expression contributes every column it references."""
        collector: set[str] = set()
        self.ctx.collectors.append(collector)
        try:
            outputs = self.query(node, env)
        finally:
            self.ctx.collectors.pop()
        for _, srcs in outputs:
            collector |= srcs
        if self.ctx.collectors:
            self.ctx.collectors[-1].update(collector)
        return frozenset(collector)


# --------------------------------------------------------------------------- output names

_FUNC_OUTPUT_NAMES: dict[type, str] = {
    exp.Coalesce: "coalesce",
    exp.Nullif: "nullif",
    exp.Greatest: "greatest",
    exp.Least: "least",
    exp.Array: "array",
    exp.Exists: "exists",
    exp.Case: "case",
    exp.CurrentDate: "current_date",
    exp.CurrentTimestamp: "current_timestamp",
}


def _figure_colname(node: exp.Expr) -> str:
    """PostgreSQL's name for an unaliased output (FigureColname), best effort."""
    for _ in range(64):
        if isinstance(node, exp.Column):
            return node.name
        if isinstance(node, exp.TableColumn):
            return node.name
        if isinstance(node, exp.Dot):
            field = node.expression
            return field.name if isinstance(field, exp.Identifier) else "?column?"
        if isinstance(node, (exp.Cast, exp.TryCast)):
            inner = _figure_colname(node.this)
            if inner != "?column?":
                return inner
            to = node.args.get("to")
            return to.sql("postgres").lower().split("(")[0] if to is not None else "?column?"
        if isinstance(node, (exp.Paren, exp.Collate)):
            node = node.this
            continue
        if isinstance(node, exp.Subquery):
            inner = node.this
            if isinstance(inner, exp.Select) and inner.expressions:
                first = inner.expressions[0]
                if isinstance(first, exp.Alias) and first.meta.get("lineage_user_alias"):
                    return first.alias
                return _figure_colname(first.this if isinstance(first, exp.Alias) else first)
            return "?column?"
        for cls, name in _FUNC_OUTPUT_NAMES.items():
            if isinstance(node, cls):
                return name
        if isinstance(node, exp.Window):
            node = node.this
            continue
        if isinstance(node, exp.Anonymous):
            return str(node.this).lower()
        if isinstance(node, exp.Func):
            original = node.meta.get("lineage_fname")
            return original or node.sql_name().lower()
        return "?column?"
    return "?column?"


# --------------------------------------------------------------------------- pipeline

_SELECT_ROOTS = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery)
_ROOT_FOR_KIND: dict[SqlKind, tuple[type, ...]] = {
    SqlKind.SELECT: _SELECT_ROOTS,
    SqlKind.INSERT: (exp.Insert,),
    SqlKind.UPDATE: (exp.Update,),
    SqlKind.DELETE: (exp.Delete,),
}


def _prepass(tree: exp.Expr, root: exp.Expr) -> set[str]:
    """Refuse forbidden nodes; tag user aliases and stars; give VALUES/unnest PG's column
    names. Returns every CTE name in the tree."""
    cte_names: set[str] = set()
    # `schema.f(x)` parses as Dot(schema, f(x)), which qualify does not look into: analyse the
    # call itself (the classifier, not lineage, judges which function it is).
    qualified_calls = [
        n
        for n in tree.find_all(exp.Dot)
        if isinstance(n.expression, exp.Func) and _is_name_path(n.this)
    ]
    for dot in qualified_calls:
        dot.replace(dot.expression)
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN):
            raise _refuse(f"unsupported construct {type(node).__name__}")
        if isinstance(node, exp.DML) and node is not root:
            raise _refuse("a data-modifying statement inside the query")
        if isinstance(node, exp.CTE):
            cte_names.add(node.alias)
        elif isinstance(node, exp.Select):
            stars: list[str | None] = []
            for proj in node.expressions:
                if isinstance(proj, exp.Alias):
                    proj.meta["lineage_user_alias"] = True
                elif isinstance(proj, exp.Star):
                    stars.append(None)
                elif isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star):
                    stars.append(_pg_ident(proj.args["table"]))
            if stars:
                node.meta["lineage_stars"] = stars
        elif isinstance(node, exp.Values) and isinstance(node.parent, (exp.From, exp.Join)):
            alias = node.args.get("alias")
            first = node.expressions[0] if node.expressions else None
            width = len(first.expressions) if isinstance(first, exp.Tuple) else 1
            if alias is not None and not alias.columns:
                alias.set("columns", [exp.to_identifier(f"column{i + 1}") for i in range(width)])
        elif isinstance(node, exp.Join) and (node.args.get("using") or node.args.get("method")):
            select = node.find_ancestor(exp.Select)
            if select is not None:
                select.meta["lineage_using"] = True
        if isinstance(node, (exp.Table, exp.Unnest, exp.Lateral)):
            func = _function_source(node)
            if func is not None:
                _complete_function_alias(func, node)
    return cte_names


def _is_name_path(node: exp.Expr) -> bool:
    while isinstance(node, exp.Dot):
        if not isinstance(node.expression, exp.Identifier):
            return False
        node = node.this
    return isinstance(node, (exp.Identifier, exp.Var)) or (
        isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier)
    )


def _complete_function_alias(func: exp.Expr, item: exp.Expr) -> None:
    """Give a known table function's alias its full column list (so qualify knows them)."""
    known = _function_columns(func, item)
    if known is None:
        return
    alias = item.args.get("alias")
    given = list(alias.columns) if isinstance(alias, exp.TableAlias) else []
    if len(given) > len(known):
        raise _refuse("table function has more column names than columns")
    if alias is None:
        alias = exp.TableAlias(this=exp.to_identifier(_func_name(func)))
        item.set("alias", alias)
    cols = given + [exp.to_identifier(n) for n in known[len(given) :]]
    alias.set("columns", cols)


def _qualify(tree: exp.Expr, root: exp.Expr, ctx: _Ctx) -> exp.Expr:
    cte_names = _prepass(tree, root)
    prep = ctx.prep

    def on_qualify(table: exp.Table) -> None:
        if table.args.get("catalog"):
            raise _refuse("three-part relation names are not supported")
        if not isinstance(table.this, exp.Identifier):
            return
        db = table.args.get("db")
        name = table.this.this
        if db is not None:
            return
        if name in cte_names:
            raise _refuse(f"{name!r} could be a CTE or a relation")
        table.set("db", exp.to_identifier(_search(prep, name).schema, quoted=True))

    return qualify(
        tree,
        dialect="postgres",
        schema=prep.schema,
        expand_stars=True,
        validate_qualify_columns=True,
        quote_identifiers=False,
        on_qualify=on_qualify,
    )


def _check_tables(tree: exp.Expr, ctx: _Ctx) -> None:
    for table in tree.find_all(exp.Table):
        if id(table) not in ctx.handled:
            raise _refuse(f"relation reference {table.sql('postgres')} was not resolved")


def _outputs(cols: list[tuple[str, frozenset[str]]]) -> tuple[OutputColumn, ...]:
    return tuple(
        OutputColumn(i, n, s - {_COMPUTED}, _COMPUTED not in s) for i, (n, s) in enumerate(cols)
    )


def _is_copy(node: exp.Expr) -> bool:
    """A plain column reference (`c.email`, `(c).email`, aliased or parenthesised): its value
    is a copy of the column's, unless the column itself is computed."""
    while isinstance(node, (exp.Alias, exp.Paren)):
        node = node.this
    if isinstance(node, exp.Column):
        return not isinstance(node.this, exp.Star)
    if isinstance(node, exp.Dot):
        inner = node.this
        while isinstance(inner, exp.Paren):
            inner = inner.this
        return isinstance(inner, exp.TableColumn) and isinstance(node.expression, exp.Identifier)
    return False


def _values_select(values: exp.Values) -> exp.Select:
    """A top-level VALUES as `SELECT * FROM (VALUES ...) AS "*VALUES*"(column1, ...)`."""
    if values.args.get("alias"):
        raise _refuse("unsupported VALUES alias")
    wrapper = exp.Select(expressions=[exp.Star()])
    sub = values.copy()
    for key in ("order", "limit", "offset"):
        value = sub.args.get(key)
        if value is not None:
            wrapper.set(key, value)
            sub.set(key, None)
    sub.set("alias", exp.TableAlias(this=exp.to_identifier("*VALUES*")))
    wrapper.set("from_", exp.From(this=sub))
    return wrapper


def _trace_select(tree: exp.Expr, ctx: _Ctx) -> list[tuple[str, frozenset[str]]]:
    if isinstance(tree, exp.Values):
        # PostgreSQL names a top-level VALUES' columns column1, column2, ...
        tree = _values_select(tree)
    qualified = _qualify(tree, tree, ctx)
    resolver = _Resolver(ctx)
    outputs = resolver.query(qualified, _Env(None))
    _check_tables(qualified, ctx)
    return outputs


def _dml_target(node: exp.Expr) -> tuple[exp.Table, list[str] | None]:
    this = node.this
    columns: list[str] | None = None
    if isinstance(this, exp.Schema):
        columns = [_pg_ident(c) for c in this.expressions]
        this = this.this
    if not isinstance(this, exp.Table) or not isinstance(this.this, exp.Identifier):
        raise _refuse("unsupported DML target")
    return this, columns


def _search(prep: _Prepared, name: str) -> Relation:
    """An unqualified relation name through the catalog's search_path."""
    for schema in prep.catalog.search_path:
        if schema == "pg_catalog" and not prep.pg_catalog_loaded:
            if name in PG_CATALOG_RELATIONS:
                raise _refuse(f"pg_catalog.{name} is a system catalog (not loaded)")
            continue
        rel = prep.catalog.get(schema, name)
        if rel is not None:
            return rel
    raise _refuse(f"relation {name!r} is not in the catalog")


def _target_relation(table: exp.Table, ctx: _Ctx) -> Relation:
    """The relation a DML statement writes (never a CTE, as in PostgreSQL)."""
    if table.args.get("catalog"):
        raise _refuse("three-part relation names are not supported")
    name = _pg_ident(table.this)
    db = table.args.get("db")
    if db is None:
        return _search(ctx.prep, name)
    rel = ctx.prep.catalog.get(_pg_ident(db), name)
    if rel is None:
        raise _refuse(f"DML target {table.sql('postgres')} is not in the catalog")
    return rel


def _assignments(exprs: Iterable[exp.Expr]) -> list[tuple[list[str], exp.Expr]]:
    """`SET a = x, (b, c) = (y, z)` as ([names], value) pairs."""
    out: list[tuple[list[str], exp.Expr]] = []
    for item in exprs:
        if not isinstance(item, exp.EQ):
            raise _refuse(f"unsupported assignment {type(item).__name__}")
        lhs = item.this
        targets = lhs.expressions if isinstance(lhs, exp.Tuple) else [lhs]
        names = []
        for t in targets:
            if not isinstance(t, exp.Column) or t.table or not isinstance(t.this, exp.Identifier):
                raise _refuse("unsupported assignment target")
            names.append(_pg_ident(t.this))
        value = item.expression
        if _is_default(value):
            value = exp.Null()  # SET c = DEFAULT: the column's default, no other column
        out.append((names, value))
    return out


def _is_default(node: exp.Expr) -> bool:
    if isinstance(node, exp.Var):
        return node.name.upper() == "DEFAULT"
    if isinstance(node, exp.Column) and not node.table and isinstance(node.this, exp.Identifier):
        return not node.this.quoted and node.this.this.upper() == "DEFAULT"
    return False


def _returning_select(
    node: exp.Expr,
    target: exp.Table,
    relation: Relation,
    extra_from: list[exp.Expr],
    values: list[exp.Expr],
    where: exp.Expr | None,
) -> tuple[exp.Select, int]:
    """A SELECT over the DML's target (and FROM/USING items): `values`, then RETURNING items
    (which qualify may expand: `RETURNING *`). Returns it and the number of values."""
    returning = node.args.get("returning")
    ret_items = list(returning.expressions) if returning is not None else []
    if returning is not None and returning.args.get("into"):
        raise _refuse("RETURNING INTO is not supported")
    sel = exp.Select(expressions=[*(v.copy() for v in values), *(e.copy() for e in ret_items)])
    sel.set("from_", exp.From(this=_target_table(target, relation)))
    sel.set("joins", [exp.Join(this=item.copy()) for item in extra_from] or None)
    if where is not None:
        sel.set("where", exp.Where(this=where.copy()))
    with_ = node.args.get("with_")
    if with_ is not None:
        sel.set("with_", with_.copy())
    return sel, len(values)


def _target_table(target: exp.Table, relation: Relation, alias: str | None = None) -> exp.Table:
    """The DML target as a schema-qualified FROM item (so that no CTE of the same name can
    stand in for it), keeping the statement's alias."""
    table = exp.Table(
        this=exp.to_identifier(relation.name, quoted=True),
        db=exp.to_identifier(relation.schema, quoted=True),
    )
    name = alias or target.alias or relation.name
    table.set("alias", exp.TableAlias(this=exp.to_identifier(name, quoted=True)))
    return table


class _DmlResolver(_Resolver):
    """Resolves a synthesized SELECT whose first FROM item is the DML target, where the target's
    assigned columns also derive from their assigned values (`overrides`)."""

    def __init__(
        self,
        ctx: _Ctx,
        n_values: int,
        assigned: list[list[str]],
        base: dict[str, frozenset[str]] | None = None,
        excluded: _Rel | None = None,
    ) -> None:
        super().__init__(ctx)
        self.n_values = n_values
        self.assigned = assigned
        self.base = base or {}
        self.excluded = excluded
        self.value_sources: list[frozenset[str]] = []

    def select(self, node: exp.Select, env: _Env) -> list[tuple[str, frozenset[str]]]:
        if node.meta.get("lineage_dml") is None:
            return super().select(node, env)
        self._check_args(node, _SELECT_ARGS, "DML")
        level = _Env(env)
        with_ = node.args.get("with_")
        if with_ is not None:
            self.with_(with_, level)
        target_item = node.args["from_"].this
        self.from_item(target_item, level)
        target_key = target_item.alias_or_name
        for join in node.args.get("joins") or ():
            self.join(join, level)
        if self.excluded is not None:
            level.rels["excluded"] = self.excluded
            self.ctx.saw("excluded")
        self._star_check(node, level)
        projs = node.expressions
        # Assigned values first (they see the old row), then RETURNING (sees the new row).
        values = [self.expr(p, level) for p in projs[: self.n_values]]
        self.value_sources = values
        extra: dict[str, set[str]] = {k: set(v) for k, v in self.base.items()}
        for names, srcs in zip(self.assigned, values, strict=True):
            for name in names:
                extra.setdefault(name, set()).update(srcs)
        if extra:
            rel = level.rels[target_key]
            unknown = set(extra) - set(rel.by_name)
            if unknown:
                raise _refuse(f"assignment to unknown column {sorted(unknown)[0]!r}")
            level.rels[target_key] = _Rel(
                [(n, s | frozenset(extra.get(n, ()))) for n, s in rel.cols]
            )
        outputs: list[tuple[str, frozenset[str]]] = []
        for proj in projs[self.n_values :]:
            expanded = self._expand_star(node, proj, level)
            if expanded is not None:
                outputs.extend(expanded)
                continue
            name, _ = self._output_name(proj)
            outputs.append((name, self.output_expr(proj, level)))
        where = node.args.get("where")
        if where is not None:
            self.predicate(where.this, level)
        return outputs


def _trace_dml(node: exp.Expr, ctx: _Ctx) -> list[tuple[str, frozenset[str]]]:
    if isinstance(node, exp.Update):
        allowed = frozenset({"with_", "this", "expressions", "from_", "where", "returning"})
    elif isinstance(node, exp.Delete):
        allowed = frozenset({"with_", "this", "using", "where", "returning"})
    else:
        allowed = frozenset({"with_", "this", "expression", "conflict", "returning", "default"})
    _check_args(node, allowed, type(node).__name__.upper())
    _prepass(node, node)
    target, insert_cols = _dml_target(node)
    relation = _target_relation(target, ctx)
    ctx.relations.add(relation.qualified)
    ctx.saw(relation.name)
    where_clause = node.args.get("where")
    where = where_clause.this if isinstance(where_clause, exp.Where) else None

    if isinstance(node, exp.Update):
        assigns = _assignments(node.expressions)
        from_ = node.args.get("from_")
        extra = [from_.this] if from_ is not None else []
        values = [v for _, v in assigns]
        sel, n_vals = _returning_select(node, target, relation, extra, values, where)
        sel.meta["lineage_dml"] = True
        qualified = _qualify(sel, sel, ctx)
        resolver = _DmlResolver(ctx, n_vals, [n for n, _ in assigns])
        outputs = resolver.query(qualified, _Env(None))
        _check_tables(qualified, ctx)
        for (names, _), srcs in zip(assigns, resolver.value_sources, strict=True):
            for name in names:
                ctx.written.setdefault(f"{relation.qualified}.{name}", set()).update(srcs)
        return outputs

    if isinstance(node, exp.Delete):
        using = node.args.get("using")
        extra = list(using) if isinstance(using, list) else ([using] if using else [])
        sel, n_vals = _returning_select(node, target, relation, extra, [], where)
        sel.meta["lineage_dml"] = True
        qualified = _qualify(sel, sel, ctx)
        outputs = _DmlResolver(ctx, n_vals, []).query(qualified, _Env(None))
        _check_tables(qualified, ctx)
        return outputs

    # INSERT: the source query, then ON CONFLICT DO UPDATE, then RETURNING.
    table_cols = list(relation.columns)
    cols = insert_cols if insert_cols is not None else table_cols
    unknown = [c for c in cols if c not in table_cols]
    if unknown:
        raise _refuse(f"INSERT into unknown column {unknown[0]!r}")
    inserted: dict[str, frozenset[str]] = {}
    source = node.args.get("expression")
    if source is not None:
        # The source query, analysed on its own (with the statement's WITH, if any).
        query = source.copy()
        with_ = node.args.get("with_")
        if with_ is not None:
            if isinstance(query, exp.Values):
                query = _values_select(query)
            if query.args.get("with_") is not None:
                raise _refuse("INSERT with two WITH clauses")
            query.set("with_", with_.copy())
        src_outputs = _trace_select(query, ctx)
        if len(src_outputs) > len(cols):
            raise _refuse("INSERT has more expressions than target columns")
        for name, (_, srcs) in zip(cols, src_outputs, strict=False):
            inserted[name] = srcs
    elif not node.args.get("default"):
        raise _refuse("INSERT without a source")

    conflict = node.args.get("conflict")
    if conflict is not None:
        action = conflict.args.get("action")
        action_text = action.sql("postgres").upper() if isinstance(action, exp.Expr) else ""
        if conflict.args.get("duplicate") or action_text not in ("DO NOTHING", "DO UPDATE"):
            raise _refuse("unsupported ON CONFLICT form")
        # Conflict targets (columns, index predicate, constraint) change no value.
        if action_text == "DO UPDATE":
            if relation.is_view:
                raise _refuse("ON CONFLICT on a view is not supported")
            assigns = _assignments(conflict.expressions)
            cw = conflict.args.get("where")
            cwhere = cw.this if isinstance(cw, exp.Where) else cw
            sel, n_vals = _returning_select(
                exp.Update(), target, relation, [], [v for _, v in assigns], cwhere
            )
            excl = _target_table(target, relation, alias="excluded")
            sel.set("joins", [exp.Join(this=excl)])
            sel.meta["lineage_dml"] = True
            qualified = _qualify(sel, sel, ctx)
            prefix = relation.qualified + "."
            proposed = _Rel(
                [(c, inserted.get(c, _EMPTY) | frozenset((prefix + c,))) for c in table_cols]
            )
            dml = _DmlResolver(ctx, n_vals, [n for n, _ in assigns], excluded=proposed)
            dml.query(qualified, _Env(None))
            _check_tables(qualified, ctx)
            for (names, _), srcs in zip(assigns, dml.value_sources, strict=True):
                for name in names:
                    inserted[name] = inserted.get(name, _EMPTY) | srcs
    for name, srcs in inserted.items():
        ctx.written.setdefault(f"{relation.qualified}.{name}", set()).update(srcs)
    sel, n_vals = _returning_select(node, target, relation, [], [], None)
    sel.meta["lineage_dml"] = True
    qualified = _qualify(sel, sel, ctx)
    outputs = _DmlResolver(ctx, n_vals, [], base=inserted).query(qualified, _Env(None))
    _check_tables(qualified, ctx)
    return outputs


# --------------------------------------------------------------------------- tables and views


def _table_columns(relation: Relation, prep: _Prepared) -> list[tuple[str, frozenset[str]]]:
    """A table's columns: each derives from itself; a generated column also from the columns
    its expression reads (all of the table's, when the expression cannot be parsed)."""
    key = (relation.schema, relation.name)
    cols = prep.tables.get(key)
    if cols is None:
        prefix = relation.qualified + "."
        generated = dict(relation.generated)
        cols = []
        for c in relation.columns:
            srcs = {prefix + c}
            if c in generated:
                srcs |= {prefix + x for x in _expression_columns(generated[c], relation)}
                srcs.add(_COMPUTED)  # `reverse(email)`: a hint of it is not a hint of email
            cols.append((c, frozenset(srcs)))
        prep.tables[key] = cols
    return cols


def _expression_columns(expression: str, relation: Relation) -> tuple[str, ...]:
    """The columns of `relation` a generation expression reads (all of them if unsure)."""
    try:
        tree = sqlglot.parse_one(expression, read="postgres")
        names = {_pg_ident(col.this) for col in tree.find_all(exp.Column)}
    except Exception:
        return relation.columns
    if not expression or not names <= set(relation.columns):
        return relation.columns
    return tuple(sorted(names))


def _view_columns(relation: Relation, ctx: _Ctx) -> list[tuple[str, frozenset[str]]]:
    """A view's columns with the lineage of its definition (cached per catalog)."""
    prep = ctx.prep
    key = (relation.schema, relation.name)
    if key in ctx.view_stack:
        raise _refuse(f"view {relation.qualified} refers to itself")
    cached = prep.views.get(key)
    if cached is None:
        if ctx.depth >= MAX_VIEW_DEPTH:
            # Some view above this one nests too deeply; this one may not (not cached).
            raise _refuse(f"views nest deeper than {MAX_VIEW_DEPTH} levels")
        if not relation.definition:
            cached = f"view {relation.qualified} has no definition in the catalog"
        else:
            sub = _Ctx(prep, ctx.depth + 1, (*ctx.view_stack, key))
            try:
                lineage = _trace_in(relation.definition, None, sub)
            except LineageUnresolved as exc:
                if "refers to itself" in exc.reason or "nest deeper" in exc.reason:
                    raise  # depends on the path, not only this view: do not cache
                cached = f"view {relation.qualified}: {exc.reason}"
            else:
                nesting = sub.view_nesting + 1
                if nesting > MAX_VIEW_DEPTH:
                    cached = f"views nest deeper than {MAX_VIEW_DEPTH} levels"
                elif len(lineage.outputs) != len(relation.columns):
                    cached = f"view {relation.qualified}: definition and columns disagree"
                else:
                    cols = [
                        (name, o.sources if o.direct else o.sources | {_COMPUTED})
                        for name, o in zip(relation.columns, lineage.outputs, strict=True)
                    ]
                    cached = (cols, lineage, nesting)
        with prep.lock:
            cached = prep.views.setdefault(key, cached)
    if isinstance(cached, str):
        raise _refuse(cached)
    cols, lineage, nesting = cached
    ctx.view_nesting = max(ctx.view_nesting, nesting)
    # The view's own reads count as touched (its WHERE is not the caller's predicate).
    ctx.touch(lineage.referenced_columns)
    ctx.relations.update(lineage.relations)
    return cols


# --------------------------------------------------------------------------- PostgreSQL names

_SVF_NAMES = {
    "SVFOP_CURRENT_DATE": "current_date",
    "SVFOP_CURRENT_TIME": "current_time",
    "SVFOP_CURRENT_TIME_N": "current_time",
    "SVFOP_CURRENT_TIMESTAMP": "current_timestamp",
    "SVFOP_CURRENT_TIMESTAMP_N": "current_timestamp",
    "SVFOP_LOCALTIME": "localtime",
    "SVFOP_LOCALTIME_N": "localtime",
    "SVFOP_LOCALTIMESTAMP": "localtimestamp",
    "SVFOP_LOCALTIMESTAMP_N": "localtimestamp",
    "SVFOP_CURRENT_ROLE": "current_role",
    "SVFOP_CURRENT_USER": "current_user",
    "SVFOP_USER": "current_user",
    "SVFOP_SESSION_USER": "session_user",
    "SVFOP_CURRENT_CATALOG": "current_catalog",
    "SVFOP_CURRENT_SCHEMA": "current_schema",
}
_XML_NAMES = {
    "IS_XMLCONCAT": "xmlconcat",
    "IS_XMLELEMENT": "xmlelement",
    "IS_XMLFOREST": "xmlforest",
    "IS_XMLPARSE": "xmlparse",
    "IS_XMLPI": "xmlpi",
    "IS_XMLROOT": "xmlroot",
    "IS_XMLSERIALIZE": "xmlserialize",
}


def _last_string(items: Any) -> str | None:
    if isinstance(items, list) and items:
        last = items[-1]
        if isinstance(last, dict) and "String" in last:
            return str(last["String"].get("sval", ""))
    return None


def _pg_colname(node: Any) -> tuple[str, int]:
    """PostgreSQL's FigureColnameInternal over pglast's JSON tree: (name, strength)."""
    if not isinstance(node, dict) or len(node) != 1:
        return "?column?", 0
    ((kind, body),) = node.items()
    if kind == "ColumnRef":
        # The last field name, ignoring a trailing `*` (`u.*` is named `u`).
        names = [f["String"].get("sval", "") for f in body.get("fields") or () if "String" in f]
        return (names[-1], 2) if names else ("?column?", 0)
    if kind == "A_Indirection":
        fname = None
        for item in body.get("indirection") or ():
            if isinstance(item, dict) and "String" in item:
                fname = item["String"].get("sval")
        if fname:
            return fname, 2
        return _pg_colname(body.get("arg"))
    if kind == "FuncCall":
        name = _last_string(body.get("funcname"))
        return (name, 2) if name is not None else ("?column?", 0)
    if kind == "A_Expr" and body.get("kind") == "AEXPR_NULLIF":
        return "nullif", 2
    if kind == "TypeCast":
        name, strength = _pg_colname(body.get("arg"))
        if strength <= 1:
            tname = _last_string((body.get("typeName") or {}).get("names"))
            if tname is not None:
                return tname, 1
        return name, strength
    if kind == "CollateClause":
        return _pg_colname(body.get("arg"))
    if kind == "GroupingFunc":
        return "grouping", 2
    if kind == "SubLink":
        link = body.get("subLinkType")
        if link == "EXISTS_SUBLINK":
            return "exists", 2
        if link == "ARRAY_SUBLINK":
            return "array", 2
        if link == "EXPR_SUBLINK":
            sub = (body.get("subselect") or {}).get("SelectStmt")
            sub_names = _select_target_names(sub) if isinstance(sub, dict) else None
            if sub_names and sub_names[0] is not None and sub_names[0] != "?column?":
                return sub_names[0], 2
        return "?column?", 0
    if kind == "CaseExpr":
        name, strength = _pg_colname(body.get("defresult"))
        if strength <= 1:
            return "case", 1
        return name, strength
    if kind == "A_ArrayExpr":
        return "array", 2
    if kind == "RowExpr":
        return "row", 2
    if kind == "CoalesceExpr":
        return "coalesce", 2
    if kind == "MinMaxExpr":
        return ("greatest" if body.get("op") == "IS_GREATEST" else "least"), 2
    if kind == "SQLValueFunction":
        name = _SVF_NAMES.get(body.get("op", ""))
        return (name, 2) if name else ("?column?", 0)
    if kind == "XmlExpr":
        name = _XML_NAMES.get(body.get("op", ""))
        return (name, 2) if name else ("?column?", 0)
    if kind == "XmlSerialize":
        return "xmlserialize", 2
    return "?column?", 0


def _target_names(targets: Any) -> list[str | None]:
    names: list[str | None] = []
    for item in targets or ():
        res = item.get("ResTarget", {}) if isinstance(item, dict) else {}
        if res.get("name"):
            names.append(str(res["name"]))
            continue
        val = res.get("val")
        fields = (val or {}).get("ColumnRef", {}).get("fields") if isinstance(val, dict) else None
        if fields and isinstance(fields[-1], dict) and "A_Star" in fields[-1]:
            names.append(None)  # a star: expanded by position, named by its columns
            continue
        names.append(_pg_colname(val)[0])
    return names


def _select_target_names(stmt: dict[str, Any]) -> list[str | None] | None:
    for _ in range(1000):
        if stmt.get("op", "SETOP_NONE") == "SETOP_NONE":
            break
        stmt = stmt.get("larg") or {}
    if stmt.get("valuesLists"):
        return None
    return _target_names(stmt.get("targetList"))


def _ref_names(node: Any, out: set[str]) -> set[str]:
    """The names of every column reference (ColumnRef) in a pglast JSON subtree."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            ref = n.get("ColumnRef")
            if isinstance(ref, dict):
                name = _last_string(ref.get("fields"))
                if name is not None:
                    out.add(name)
                continue
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out


def _pair_branches(node: exp.Expr, stmt: dict[str, Any], out: list[tuple[exp.Expr, Any]]) -> None:
    """Pair sqlglot's set-operation branches with pglast's (same shape, else refuse)."""
    while isinstance(node, exp.Subquery):
        node = node.this
    op = stmt.get("op", "SETOP_NONE")
    if isinstance(node, exp.SetOperation):
        if op == "SETOP_NONE":
            raise _refuse("parsers disagree on the set operation")
        _pair_branches(node.this, stmt.get("larg") or {}, out)
        _pair_branches(node.expression, stmt.get("rarg") or {}, out)
        return
    if op != "SETOP_NONE":
        raise _refuse("parsers disagree on the set operation")
    if isinstance(node, exp.Select) and not stmt.get("valuesLists"):
        out.append((node, stmt.get("targetList")))


def _tag_outputs(tree: exp.Expr, sql: str, ctx: _Ctx) -> None:
    """Tag the top-level output items with PostgreSQL's view of them: the column names each
    references (checked when it is resolved) and, for the first branch, its output names."""
    try:
        stmt = orjson.loads(parse_sql_json(sql))["stmts"][0]["stmt"]
        ((kind, body),) = stmt.items()
    except Exception:
        raise _refuse("PostgreSQL's parser tree is not readable") from None
    pairs: list[tuple[exp.Expr, Any]] = []  # (sqlglot node with output items, pglast targets)
    named = True  # the first pair gives the output names
    if isinstance(tree, (exp.Insert, exp.Update, exp.Delete)):
        clause = body.get("returningClause")
        targets = clause.get("exprs") if isinstance(clause, dict) else body.get("returningList")
        returning = tree.args.get("returning")
        if returning is not None:
            pairs.append((returning, targets))
        else:
            named = False
        source = tree.args.get("expression") if isinstance(tree, exp.Insert) else None
        select = (body.get("selectStmt") or {}).get("SelectStmt")
        if source is not None and isinstance(select, dict) and not isinstance(source, exp.Values):
            # An INSERT's source query: its items map to the target columns by position.
            _pair_branches(source, select, pairs)
    elif kind == "SelectStmt" and isinstance(tree, (exp.Select, exp.SetOperation, exp.Subquery)):
        _pair_branches(tree, body, pairs)
    for i, (node, targets) in enumerate(pairs):
        items = list(node.expressions)
        targets = targets or []
        if len(items) != len(targets):
            raise _refuse("parsers disagree on the number of output items")
        for item, target in zip(items, targets, strict=True):
            val = target.get("ResTarget", {}).get("val") if isinstance(target, dict) else None
            item.meta["lineage_check"] = frozenset(_ref_names(val, set()))
        if i == 0 and named:
            names = _target_names(targets)
            for pos, item in enumerate(items):
                item.meta["lineage_pos"] = pos
            ctx.pg_names = names


# --------------------------------------------------------------------------- entry points


def _parse(sql: str, inspection: SqlInspection) -> exp.Expr:
    kind = inspection.kind
    if inspection.statement_count != 1:
        raise _refuse(
            f"expected one statement, PostgreSQL's parser found {inspection.statement_count}"
            if inspection.statement_count
            else f"PostgreSQL's parser rejected the text: {inspection.error or 'unparseable'}"
        )
    roots = _ROOT_FOR_KIND.get(kind)
    if roots is None:
        raise _refuse(f"a {kind} statement has no column lineage")
    try:
        parsed = [p for p in sqlglot.parse(sql, read="postgres") if p is not None]
    except SqlglotError as exc:
        raise _refuse(f"sqlglot cannot parse the statement: {_short(exc)}") from None
    if len(parsed) != 1:
        raise _refuse(f"parsers disagree: sqlglot found {len(parsed)} statements")
    tree = parsed[0]
    if not isinstance(tree, roots):
        raise _refuse(f"parsers disagree: {kind} statement parsed as {type(tree).__name__}")
    if isinstance(tree, exp.Subquery):
        # `(SELECT ...)`: a parenthesised query at the top.
        inner = tree
        while isinstance(inner, exp.Subquery):
            if inner.args.get("alias"):
                raise _refuse("unsupported top-level parenthesised query")
            inner = inner.this
        if not isinstance(inner, (exp.Select, exp.SetOperation)):
            raise _refuse(f"parsers disagree: select statement parsed as {type(inner).__name__}")
    return tree


def _trace(sql: str, prep: _Prepared, inspection: SqlInspection | None) -> Lineage:
    return _trace_in(sql, inspection, _Ctx(prep, 0, ()))


def _trace_in(sql: str, inspection: SqlInspection | None, ctx: _Ctx) -> Lineage:
    depth = ctx.depth
    if _UNICODE_ESCAPE.search(sql):
        raise _refuse("U& Unicode-escape identifiers and strings are not supported")
    if inspection is None or inspection.text != sql:
        inspection = inspect_sql(sql)
    if depth == 0 and Risk.UNKNOWN_FUNCTION in inspection.risks:
        # A user-defined or extension function may read any table: its result's lineage
        # is unknowable. (View definitions, which the agent cannot choose, may use them.)
        unknown = sorted(f for f in inspection.functions if not f.startswith("pg_catalog."))
        raise _refuse(
            f"calls a function the gateway does not know ({', '.join(unknown[:3])}): "
            "its result may derive from any table"
        )
    tree = _parse(sql, inspection)
    if depth == 0:
        _tag_outputs(tree, sql, ctx)
    if isinstance(tree, (exp.Insert, exp.Update, exp.Delete)):
        cols = _trace_dml(tree, ctx)
    else:
        cols = _trace_select(tree, ctx)
    # Every column PostgreSQL's parser saw must have been resolved by name here.
    missing = []
    for ref in inspection.columns:
        name = ref.rpartition(".")[2]
        if name not in ctx.seen:
            missing.append(ref)
    if missing:
        raise _refuse(f"parsers disagree on column reference {sorted(missing)[0]!r}")
    for rel in inspection.relations:
        if rel.rpartition(".")[2] not in ctx.seen:
            raise _refuse(f"parsers disagree on relation {rel!r}")
    return Lineage(
        outputs=_outputs(cols),
        predicate_columns=frozenset(ctx.predicates - {_COMPUTED}),
        referenced_columns=frozenset(ctx.referenced - {_COMPUTED}),
        relations=frozenset(ctx.relations),
        written=tuple(
            (target, frozenset(srcs - {_COMPUTED})) for target, srcs in sorted(ctx.written.items())
        ),
    )


def explained_statement(sql: str) -> str:
    """The statement one `EXPLAIN` explains, as SQL text (pglast's deparser), so that its
    predicates can be traced; `LineageUnresolved` when `sql` is not exactly one EXPLAIN."""
    try:
        stmts = pglast.parse_sql(sql)
        if len(stmts) != 1 or not isinstance(stmts[0].stmt, pglast.ast.ExplainStmt):
            raise _refuse("not a single EXPLAIN statement")
        return str(RawStream()(stmts[0].stmt.query))
    except LineageUnresolved:
        raise
    except Exception as exc:  # fail closed: a statement we cannot read back is refused
        raise _refuse(f"the explained statement cannot be read: {type(exc).__name__}") from None


def trace(sql: str, catalog: Catalog, *, inspection: SqlInspection | None = None) -> Lineage:
    """The lineage of one statement, or `LineageUnresolved` (never any other exception).

    `inspection`: the classifier's result for the same text, if the caller already has it.
    """
    try:
        return _trace(sql, _prepared(catalog), inspection)
    except LineageUnresolved:
        raise
    except RecursionError:
        raise _refuse("the statement nests too deeply to analyse") from None
    except SqlglotError as exc:
        raise _refuse(f"sqlglot: {_short(exc)}") from None
    except Exception as exc:  # fail closed: any internal error is a refusal
        raise _refuse(f"internal error while tracing lineage: {type(exc).__name__}") from None


class LineageCache:
    """An LRU of `trace` outcomes (results and refusals) keyed by `(sql, catalog.version)`.

    A hit is only used for the very catalog object it was computed with (versions are unique
    per process, and the identity check guards against hand-made catalogs reusing one).
    """

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._data: OrderedDict[tuple[str, int], tuple[Catalog, Lineage | str]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def trace(
        self, sql: str, catalog: Catalog, *, inspection: SqlInspection | None = None
    ) -> Lineage:
        key = (sql, catalog.version)
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and entry[0] is catalog:
                self._data.move_to_end(key)
                self.hits += 1
                outcome = entry[1]
            else:
                outcome = None
        if outcome is not None:
            if isinstance(outcome, str):
                raise LineageUnresolved(outcome)
            return outcome
        try:
            result: Lineage | str = trace(sql, catalog, inspection=inspection)
        except LineageUnresolved as exc:
            result = exc.reason
        with self._lock:
            self.misses += 1
            self._data[key] = (catalog, result)
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        if isinstance(result, str):
            raise LineageUnresolved(result)
        return result
