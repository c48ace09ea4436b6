"""`sql_list_tables` / `sql_describe_table`: parameterised catalog queries on the read path.

Names from the agent are only ever bind parameters: `describe_table` resolves its argument
with `to_regclass($1)` (so `users; DROP TABLE t` is just a name that does not exist), and the
other queries take the resulting OID. Only relations the gateway's role can read (SELECT on
the table or on any of its columns) are listed or described: what the role cannot query is
reported exactly like a missing table.
"""

from __future__ import annotations

from typing import Any

from .errors import TableNotFound
from .execute import map_errors, read_transaction

CATALOG_STATEMENT_TIMEOUT_MS = 10_000
CATALOG_LOCK_TIMEOUT_MS = 2_000
CATALOG_IDLE_TIMEOUT_MS = 10_000

_KINDS = {"r": "table", "v": "view", "m": "matview", "f": "foreign", "p": "partitioned"}

_LIST_TABLES = """
SELECT n.nspname AS schema,
       c.relname AS name,
       c.relkind::text AS relkind,
       CASE WHEN c.reltuples < 0 OR c.relkind IN ('v', 'f') THEN NULL
            ELSE c.reltuples::bigint END AS estimated_rows,
       pg_catalog.obj_description(c.oid, 'pg_class') AS comment
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p')
  AND NOT c.relispartition
  AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT')
  AND CASE WHEN $1::text[] IS NULL
           THEN n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
           ELSE n.nspname = ANY ($1::text[]) END
ORDER BY n.nspname, c.relname
LIMIT $2
"""

_RESOLVE = """
SELECT c.oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS relkind,
       CASE WHEN c.reltuples < 0 OR c.relkind IN ('v', 'f') THEN NULL
            ELSE c.reltuples::bigint END AS estimated_rows,
       pg_catalog.obj_description(c.oid, 'pg_class') AS comment
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass($1)
  AND c.relkind IN ('r', 'v', 'm', 'f', 'p')
  AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT')
"""

_COLUMNS = """
SELECT a.attname AS name,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
       NOT a.attnotnull AS nullable,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS "default",
       pg_catalog.col_description(a.attrelid, a.attnum) AS comment,
       NULLIF(a.attidentity, '')::text AS identity,
       NULLIF(a.attgenerated, '')::text AS generated
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_CONSTRAINTS = """
SELECT con.conname AS name,
       con.contype::text AS contype,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_catalog.pg_attribute a
               ON a.attrelid = con.conrelid AND a.attnum = k.attnum
             ORDER BY k.ord) AS columns,
       CASE WHEN con.contype = 'f' THEN con.confrelid::pg_catalog.regclass::text END
         AS ref_table,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_catalog.pg_attribute a
               ON a.attrelid = con.confrelid AND a.attnum = k.attnum
             ORDER BY k.ord) AS ref_columns,
       pg_catalog.pg_get_constraintdef(con.oid) AS definition
FROM pg_catalog.pg_constraint con
WHERE con.conrelid = $1::oid AND con.contype IN ('p', 'f')
ORDER BY con.contype DESC, con.conname
"""

_INDEXES = """
SELECT i.relname AS name,
       x.indisunique AS is_unique,
       x.indisprimary AS is_primary,
       pg_catalog.pg_get_indexdef(x.indexrelid) AS definition
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = $1::oid
ORDER BY i.relname
"""


def _timeouts(statement_timeout_ms: int) -> dict[str, int]:
    return {
        "statement_timeout_ms": statement_timeout_ms,
        "lock_timeout_ms": CATALOG_LOCK_TIMEOUT_MS,
        "idle_timeout_ms": CATALOG_IDLE_TIMEOUT_MS,
    }


async def list_tables(
    pool: Any,
    schemas: list[str] | None = None,
    *,
    limit: int = 1000,
    statement_timeout_ms: int = CATALOG_STATEMENT_TIMEOUT_MS,
) -> list[dict[str, Any]]:
    """Tables, views, materialized views, foreign and partitioned tables the role can read.

    `schemas=None` means every schema except pg_catalog, information_schema and the
    toast/temp schemas. Partitions are left out (their parent is listed). Each item:
    `{"schema", "name", "kind", "estimated_rows", "comment"}`; `estimated_rows` is
    `pg_class.reltuples` (None for views and never-analysed tables).
    """
    with map_errors(pool):
        async with read_transaction(pool, **_timeouts(statement_timeout_ms)) as conn:
            rows = await conn.fetch(_LIST_TABLES, list(schemas) if schemas else None, limit)
    return [
        {
            "schema": r["schema"],
            "name": r["name"],
            "kind": _KINDS[r["relkind"]],
            "estimated_rows": r["estimated_rows"],
            "comment": r["comment"],
        }
        for r in rows
    ]


async def describe_table(
    pool: Any,
    qualified_name: str,
    *,
    statement_timeout_ms: int = CATALOG_STATEMENT_TIMEOUT_MS,
) -> dict[str, Any]:
    """Columns, primary key, foreign keys and indexes of one table-like relation.

    `qualified_name` is SQL name syntax (`users`, `app.users`, `"Mixed Case"`), resolved by
    `to_regclass` against the read path's search_path (`pg_catalog, public, pg_temp`).
    Unknown, malformed, or unreadable → `TableNotFound`.
    """
    if not isinstance(qualified_name, str) or not qualified_name.strip():
        raise TableNotFound(str(qualified_name))
    with map_errors(pool):
        async with read_transaction(pool, **_timeouts(statement_timeout_ms)) as conn:
            # to_regclass() raises for a schema the role may not use (42501) and, before
            # PostgreSQL 16, for malformed names (42601/42602, 0A000 cross-database
            # references): all of them are "not found" to the agent.
            try:
                rel = await conn.fetchrow(_RESOLVE, qualified_name)
            except Exception as exc:
                if getattr(exc, "sqlstate", None) in {"42501", "42601", "42602", "3F000", "0A000"}:
                    raise TableNotFound(qualified_name) from None
                raise
            if rel is None:
                raise TableNotFound(qualified_name)
            oid = rel["oid"]
            columns = await conn.fetch(_COLUMNS, oid)
            constraints = await conn.fetch(_CONSTRAINTS, oid)
            indexes = await conn.fetch(_INDEXES, oid)
    primary_key = None
    foreign_keys = []
    for con in constraints:
        if con["contype"] == "p":
            primary_key = {"name": con["name"], "columns": list(con["columns"])}
        else:
            foreign_keys.append(
                {
                    "name": con["name"],
                    "columns": list(con["columns"]),
                    "references": {
                        "table": con["ref_table"],
                        "columns": list(con["ref_columns"]),
                    },
                    "definition": con["definition"],
                }
            )
    return {
        "schema": rel["schema"],
        "name": rel["name"],
        "kind": _KINDS[rel["relkind"]],
        "estimated_rows": rel["estimated_rows"],
        "comment": rel["comment"],
        "columns": [
            {
                "name": c["name"],
                "type": c["type"],
                "nullable": c["nullable"],
                "default": c["default"],
                "comment": c["comment"],
                **({"identity": c["identity"]} if c["identity"] else {}),
                **({"generated": c["generated"]} if c["generated"] else {}),
            }
            for c in columns
        ],
        "primary_key": primary_key,
        "foreign_keys": foreign_keys,
        "indexes": [
            {
                "name": i["name"],
                "unique": i["is_unique"],
                "primary": i["is_primary"],
                "definition": i["definition"],
            }
            for i in indexes
        ],
    }
