"""The database catalog that column lineage resolves names against.

`load_catalog(conn_or_pool)` reads every relation (tables, views, materialized views, foreign
and partitioned tables) with its columns, in attnum order and with exact names, plus view and
materialized-view definitions and generated columns' expressions, in one catalog query inside
`BEGIN READ ONLY … ROLLBACK`.
System schemas (`pg_catalog`, `information_schema`, `pg_toast*`, `pg_temp*`) are left out
unless named in `schemas`. Schemas are not filtered by privilege: pg_class is readable by every
role, and a view's lineage needs the base tables behind it even when the gateway's role may
only read the view.

View definitions come from `pg_get_viewdef` run with `search_path = pg_catalog`, so every
relation in them is schema-qualified (`public.users`) and reads the same whatever search_path
the agent's statement later runs under.

`Catalog` is immutable. Its `version` is unique in the process (a global counter, incremented
on every load or construction), so caches keyed by `(text, catalog.version)` can never confuse
two databases' catalogs. `CatalogCache` holds the current catalog for one connection or pool:
`get()` reloads lazily when the catalog is older than `stale_after` seconds or was
`invalidate()`d (after DDL the gateway ran, or when a result's field count disagreed with the
analysis); `refresh()` reloads now, and concurrent callers share one load (single flight).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import anyio

__all__ = [
    "DEFAULT_SEARCH_PATH",
    "SYSTEM_SCHEMAS",
    "Catalog",
    "CatalogCache",
    "CatalogError",
    "Relation",
    "RelationKind",
    "load_catalog",
    "next_catalog_version",
]

RelationKind = Literal["table", "view", "matview", "foreign", "partitioned"]

DEFAULT_SEARCH_PATH: tuple[str, ...] = ("pg_catalog", "public")
SYSTEM_SCHEMAS: frozenset[str] = frozenset({"pg_catalog", "information_schema", "pg_toast"})
DEFAULT_STATEMENT_TIMEOUT_MS = 10_000

_RELKIND: dict[str, RelationKind] = {
    "r": "table",
    "v": "view",
    "m": "matview",
    "f": "foreign",
    "p": "partitioned",
}

_versions = itertools.count(1)


def next_catalog_version() -> int:
    """A catalog version never handed out before in this process."""
    return next(_versions)


class CatalogError(Exception):
    """The catalog could not be loaded."""


@dataclass(frozen=True, slots=True)
class Relation:
    """One relation: exact (case-preserved) names, columns in attnum order (dropped excluded)."""

    schema: str
    name: str
    kind: RelationKind
    columns: tuple[str, ...]
    definition: str | None = None  # pg_get_viewdef text, for views and materialized views
    # Generated columns (`GENERATED ALWAYS AS (expr) STORED`): (column, expression) pairs.
    # Their values derive from the columns the expression reads.
    generated: tuple[tuple[str, str], ...] = ()

    @property
    def qualified(self) -> str:
        """`schema.name`, exact names unquoted (the form lineage sources use)."""
        return f"{self.schema}.{self.name}"

    @property
    def is_view(self) -> bool:
        """A view or materialized view: its columns derive from its definition."""
        return self.kind in ("view", "matview")


@dataclass(frozen=True, eq=False)
class Catalog:
    """Every relation the gateway can resolve names against, keyed by `(schema, name)`.

    Immutable (compared by identity). `derived` is scratch space for analyses built from this
    catalog (lineage keeps its sqlglot schema and view lineages there), valid for its lifetime.
    """

    relations: Mapping[tuple[str, str], Relation]
    version: int
    search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.relations, MappingProxyType):
            object.__setattr__(self, "relations", MappingProxyType(dict(self.relations)))
        object.__setattr__(self, "search_path", tuple(self.search_path))

    @classmethod
    def from_relations(
        cls,
        relations: Iterable[Relation],
        *,
        version: int | None = None,
        search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
    ) -> Catalog:
        """A catalog of `relations` (a fresh unique version unless one is given)."""
        return cls(
            relations={(r.schema, r.name): r for r in relations},
            version=next_catalog_version() if version is None else version,
            search_path=tuple(search_path),
        )

    def get(self, schema: str, name: str) -> Relation | None:
        """The relation `schema.name` (exact names), or None."""
        return self.relations.get((schema, name))

    def resolve(self, name: str, schema: str | None = None) -> Relation | None:
        """`schema.name`, or an unqualified `name` through `search_path` (first match wins)."""
        if schema is not None:
            return self.relations.get((schema, name))
        for s in self.search_path:
            rel = self.relations.get((s, name))
            if rel is not None:
                return rel
        return None

    def columns_of(self, schema: str, name: str) -> tuple[str, ...] | None:
        """The columns of `schema.name`, or None when it is not in the catalog."""
        rel = self.relations.get((schema, name))
        return rel.columns if rel is not None else None

    @property
    def schemas(self) -> frozenset[str]:
        return frozenset(s for s, _ in self.relations)

    def __contains__(self, key: object) -> bool:
        return key in self.relations

    def __iter__(self) -> Iterator[Relation]:
        return iter(self.relations.values())

    def __len__(self) -> int:
        return len(self.relations)


# --------------------------------------------------------------------------- loading

_CATALOG_SQL = """
SELECT n.nspname AS schema,
       c.relname AS name,
       c.relkind::text AS relkind,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END AS definition,
       COALESCE(
           (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
           '{}'::text[]) AS columns,
       (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attgenerated <> '') AS generated_columns,
       (SELECT pg_catalog.array_agg(pg_catalog.pg_get_expr(d.adbin, d.adrelid) ORDER BY a.attnum)
          FROM pg_catalog.pg_attribute a
          JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attgenerated <> '') AS generated_exprs
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p')
   AND CASE WHEN $1::text[] IS NULL
            THEN n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND n.nspname NOT LIKE 'pg\\_toast%'
                 AND n.nspname NOT LIKE 'pg\\_temp\\_%'
            ELSE n.nspname = ANY ($1::text[])
       END
 ORDER BY n.nspname, c.relname
"""

# One round trip: this transaction's timeouts, and a search_path under which pg_get_viewdef
# schema-qualifies every relation outside pg_catalog.
_SETUP_SQL = (
    "SELECT pg_catalog.set_config('statement_timeout', $1::text, true), "
    "pg_catalog.set_config('lock_timeout', $1::text, true), "
    "pg_catalog.set_config('search_path', 'pg_catalog', true)"
)


async def _load_on(conn: Any, schemas: list[str] | None, statement_timeout_ms: int) -> list[Any]:
    tr = conn.transaction(readonly=True)
    await tr.start()
    try:
        await conn.fetchrow(_SETUP_SQL, str(statement_timeout_ms))
        return list(await conn.fetch(_CATALOG_SQL, schemas))
    finally:
        await tr.rollback()


async def load_catalog(
    conn_or_pool: Any,
    schemas: Sequence[str] | None = None,
    *,
    search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
) -> Catalog:
    """Load the catalog through an asyncpg connection or pool (read-only, rolled back).

    `schemas` None: every schema except the system ones; otherwise exactly those schemas
    (system schemas included when named).
    """
    if isinstance(schemas, str):
        raise TypeError("schemas must be a sequence of schema names, not a string")
    if isinstance(statement_timeout_ms, bool) or not isinstance(statement_timeout_ms, int):
        raise TypeError("statement_timeout_ms must be an int")
    wanted = list(schemas) if schemas is not None else None
    if hasattr(conn_or_pool, "acquire"):
        async with conn_or_pool.acquire() as conn:
            rows = await _load_on(conn, wanted, statement_timeout_ms)
    else:
        rows = await _load_on(conn_or_pool, wanted, statement_timeout_ms)
    relations = []
    for row in rows:
        kind = _RELKIND.get(row["relkind"])
        if kind is None:  # not selected by the query; defensive
            continue
        gen_names = list(row["generated_columns"] or ())
        gen_exprs = list(row["generated_exprs"] or ())
        if len(gen_names) != len(gen_exprs):  # defensive: a generated column without attrdef
            gen_exprs = [""] * len(gen_names)
        relations.append(
            Relation(
                schema=row["schema"],
                name=row["name"],
                kind=kind,
                columns=tuple(row["columns"] or ()),
                definition=row["definition"],
                generated=tuple(zip(gen_names, gen_exprs, strict=True)),
            )
        )
    return Catalog.from_relations(relations, search_path=search_path)


# --------------------------------------------------------------------------- cache


class _Flight:
    """One catalog load in progress, which concurrent callers wait on."""

    __slots__ = ("catalog", "done", "epoch", "error")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.done = anyio.Event()
        self.catalog: Catalog | None = None
        self.error: BaseException | None = None

    async def wait(self) -> Catalog:
        await self.done.wait()
        if self.catalog is None:
            err = self.error
            raise CatalogError(f"catalog load failed: {type(err).__name__}: {err}") from err
        return self.catalog


class CatalogCache:
    """The current `Catalog` of one connection or pool, reloaded lazily.

    `get()` returns the cached catalog unless it is missing, older than `stale_after` seconds
    (None: never stale by age) or invalidated, in which case it reloads. `refresh()` reloads;
    callers arriving while a load is in flight share that load, unless `invalidate()` was
    called after it started (then a new load starts, and the newest finished load wins).
    Each load yields a catalog with a new, higher `version`.
    """

    def __init__(
        self,
        conn_or_pool: Any,
        *,
        schemas: Sequence[str] | None = None,
        stale_after: float | None = 300.0,
        search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
        statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
        loader: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stale_after is not None and stale_after < 0:
            raise ValueError("stale_after must be >= 0 seconds (or None)")
        self._source = conn_or_pool
        self._schemas = list(schemas) if schemas is not None else None
        self.stale_after = stale_after
        self._search_path = tuple(search_path)
        self._timeout_ms = statement_timeout_ms
        self._loader = loader or load_catalog
        self._clock = clock
        self._catalog: Catalog | None = None
        self._loaded_at = 0.0
        self._loaded_epoch = -1  # epoch of the load that produced _catalog
        self._loaded_seq = -1
        self._epoch = 0  # bumped by invalidate()
        self._seq = 0  # loads started
        self._flight: _Flight | None = None
        self.loads = 0  # completed loads (for tests and metrics)

    @property
    def current(self) -> Catalog | None:
        """The cached catalog, without loading or checking its age."""
        return self._catalog

    def is_fresh(self) -> bool:
        if self._catalog is None or self._loaded_epoch != self._epoch:
            return False
        return self.stale_after is None or self._clock() - self._loaded_at < self.stale_after

    async def get(self) -> Catalog:
        """The current catalog, loading it first when missing, stale or invalidated."""
        catalog = self._catalog
        if catalog is not None and self.is_fresh():
            return catalog
        return await self.refresh()

    def invalidate(self) -> None:
        """Mark the catalog stale: the next `get()` reloads (e.g. after DDL)."""
        self._epoch += 1

    async def refresh(self) -> Catalog:
        """Reload now (or join a load that started after the last `invalidate()`)."""
        flight = self._flight
        if flight is not None and flight.epoch == self._epoch:
            return await flight.wait()
        flight = _Flight(self._epoch)
        self._flight = flight
        seq = self._seq = self._seq + 1
        started = self._clock()
        try:
            catalog = await self._loader(
                self._source,
                self._schemas,
                search_path=self._search_path,
                statement_timeout_ms=self._timeout_ms,
            )
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            flight.catalog = catalog
            if seq > self._loaded_seq:  # an older load finishing late never wins
                self._catalog = catalog
                self._loaded_at = started
                self._loaded_epoch = flight.epoch
                self._loaded_seq = seq
            self.loads += 1
            return catalog
        finally:
            if self._flight is flight:
                self._flight = None
            flight.done.set()
