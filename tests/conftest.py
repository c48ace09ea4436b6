"""Shared fixtures. `tests/` is on sys.path (rootdir-relative imports, as for jwt_helpers)."""

import pytest

from pgserver import module_db, pg_dsn  # noqa: F401  (fixtures: a real PostgreSQL)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Every async test and fixture runs on asyncio (session scope: module fixtures use it)."""
    return "asyncio"
