"""Built-in SQL tools: the gateway's asyncpg pool and the safe execution of agent SQL.

- `pool`: `create_pool()` (retry, reset incl. `RESET ROLE`, no secret leaks), `redact_dsn()`;
- `execute`: `run_read()` (the READ ONLY recipe), `run_write()`, `explain()`;
- `catalog_queries`: `list_tables()`, `describe_table()`;
- `results`: `structured()` and `text_table()`, the MCP tool result content;
- `model`/`errors`: `QueryResult`, `Column`; `QueryError`, `DatabaseUnavailable`, …
"""

import importlib
from typing import Any

# Names are imported from their module on first use (PEP 562), so that what needs only `dsn`
# (the config, the offline CLI commands) does not load asyncpg and anyio with the package.
_HOME = {
    "describe_table": "catalog_queries",
    "list_tables": "catalog_queries",
    "redact_dsn": "dsn",
    "DatabaseUnavailable": "errors",
    "FieldCountMismatch": "errors",
    "QueryError": "errors",
    "SqlToolError": "errors",
    "TableNotFound": "errors",
    "DEFAULT_SEARCH_PATH": "execute",
    "explain": "execute",
    "run_read": "execute",
    "run_write": "execute",
    "Column": "model",
    "QueryResult": "model",
    "GatePool": "pool",
    "create_pool": "pool",
    "json_value": "results",
    "structured": "results",
    "text_table": "results",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = sorted(_HOME)
