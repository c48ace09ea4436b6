"""Built-in SQL tools: the gateway's asyncpg pool and the safe execution of agent SQL.

- `pool`: `create_pool()` (retry, reset incl. `RESET ROLE`, no secret leaks), `redact_dsn()`;
- `execute`: `run_read()` (the READ ONLY recipe), `run_write()`, `explain()`;
- `catalog_queries`: `list_tables()`, `describe_table()`;
- `results`: `structured()` and `text_table()`, the MCP tool result content;
- `model`/`errors`: `QueryResult`, `Column`; `QueryError`, `DatabaseUnavailable`, …
"""

from .catalog_queries import describe_table, list_tables
from .dsn import redact_dsn
from .errors import (
    DatabaseUnavailable,
    FieldCountMismatch,
    QueryError,
    SqlToolError,
    TableNotFound,
)
from .execute import DEFAULT_SEARCH_PATH, explain, run_read, run_write
from .model import Column, QueryResult
from .pool import GatePool, create_pool
from .results import json_value, structured, text_table

__all__ = [
    "DEFAULT_SEARCH_PATH",
    "Column",
    "DatabaseUnavailable",
    "FieldCountMismatch",
    "GatePool",
    "QueryError",
    "QueryResult",
    "SqlToolError",
    "TableNotFound",
    "create_pool",
    "describe_table",
    "explain",
    "json_value",
    "list_tables",
    "redact_dsn",
    "run_read",
    "run_write",
    "structured",
    "text_table",
]
