"""The gateway's read pool on a test database, and what PostgreSQL shows of it: for the tests
that drive `mcp_gate.sqltools` in process and watch its backends from a superuser connection."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from mcp_gate.sqltools import create_pool
from mcp_gate.sqltools.pool import APPLICATION_NAME, GatePool


@contextlib.asynccontextmanager
async def reader_pool(dsn: str, password: str, size: int = 1) -> AsyncIterator[GatePool]:
    """The pool `serve` makes for a reader role (application_name mcp-gate), of `size`
    connections from the start, closed afterwards."""
    pool = await create_pool(dsn, password=password, min_size=size, max_size=size)
    try:
        yield pool
    finally:
        await pool.close()


async def pool_backends(observer: asyncpg.Connection) -> list[asyncpg.Record]:
    """The gateway pools' server backends in the observer's database, by pid: pid, state,
    last query, wait_event_type."""
    return await observer.fetch(
        "SELECT pid, state, query, wait_event_type FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = $1 ORDER BY pid",
        APPLICATION_NAME,
    )
