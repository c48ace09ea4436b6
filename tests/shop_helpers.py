"""The demo's sample shop in a fresh database with its own reader and writer roles, the
repository's policy with test settings, and a gateway serving both: what most end-to-end tests
start from. Also a PostgreSQL store and two replicas of one gateway on it."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway_helpers import Gateway, running_gateway
from mcp_gate.demo.embedded import free_port
from mcp_gate.demo.sample import load_sample
from pgserver import admin_execute, dsn_with, quote_ident, run_sync, unique_name

SAMPLE_POLICY = Path(__file__).resolve().parents[1] / "policies.toml"


@dataclass(frozen=True)
class Shop:
    """The sample database: a superuser DSN, the gateway's role DSNs (no password in them)
    and the environment that carries the role passwords (`GATE_TEST_READER_PW`, …), which
    must never appear in anything the gateway says."""

    dsn: str
    reader: str
    writer: str
    reader_role: str
    writer_role: str
    env: dict[str, str]

    @property
    def secrets(self) -> tuple[str, ...]:
        """The role passwords."""
        return tuple(self.env.values())


@contextlib.contextmanager
def sample_shop(pg_dsn: str, prefix: str) -> Iterator[Shop]:
    """A new database loaded with the demo's shop (`mcp_gate.demo.sample`), dropped after."""
    name = unique_name(prefix)
    reader, writer = unique_name("reader"), unique_name("writer")
    reader_pw, writer_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    run_sync(lambda: load_sample(pg_dsn, name, reader_pw, writer_pw, reader=reader, writer=writer))
    db = dsn_with(pg_dsn, database=name)
    try:
        yield Shop(
            dsn=db,
            reader=dsn_with(db, user=reader, password=""),
            writer=dsn_with(db, user=writer, password=""),
            reader_role=reader,
            writer_role=writer,
            env={"GATE_TEST_READER_PW": reader_pw, "GATE_TEST_WRITER_PW": writer_pw},
        )
    finally:
        admin_execute(pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin_execute(pg_dsn, f'DROP ROLE IF EXISTS "{reader}"', f'DROP ROLE IF EXISTS "{writer}"')


def sample_policy(**approval: str) -> str:
    """The repository's policies.toml with `[approval]` keys set to TOML values, e.g.
    `sample_policy(wait='"15s"', quorum="2")`; a key the file lacks is added to the section."""
    text = SAMPLE_POLICY.read_text()
    for key, value in approval.items():
        text, found = re.subn(rf"(?m)^{key} = \S+", f"{key} = {value}", text, count=1)
        if not found:
            text = text.replace("[approval]\n", f"[approval]\n{key} = {value}\n", 1)
    return text


@contextlib.contextmanager
def shop_gateway(
    shop: Shop, folder: Path, policy: str | None = None, **options: Any
) -> Iterator[Gateway]:
    """`mcp-gate serve` over `shop` with `policy` (default: the repository's) written into
    `folder`; `options` go to `running_gateway` (`write_dsn=None`: no write path; `env` is
    added to the shop's)."""
    policies = folder / "policies.toml"
    policies.write_text(policy if policy is not None else SAMPLE_POLICY.read_text())
    options = {"write_dsn": shop.writer, **options}
    with running_gateway(
        folder,
        dsn=shop.reader,
        env={**shop.env, **options.pop("env", {})},
        policies=policies,
        **options,
    ) as gateway:
        gateway.db = shop.dsn
        yield gateway


@dataclass(frozen=True)
class PgStore:
    """A PostgreSQL `[server] store`: its DSN (no password in it), the role that owns it
    and that role's password, which the gateway reads from `GATE_TEST_STORE_PW` and must
    never show."""

    dsn: str
    owner: str
    password: str

    @property
    def server(self) -> str:
        """The `[server]` lines that point a gateway at this store."""
        return f'store = "{self.dsn}"\nstore_password_env = "GATE_TEST_STORE_PW"'

    @property
    def env(self) -> dict[str, str]:
        """The environment that carries the password."""
        return {"GATE_TEST_STORE_PW": self.password}


@contextlib.contextmanager
def pg_store(pg_dsn: str) -> Iterator[PgStore]:
    """A store in a database of its own, owned by a role that logs in with a password (not
    the superuser), both dropped after."""
    database, owner = unique_name("store"), unique_name("store_owner")
    password = "store-pw-" + secrets.token_hex(6)
    admin_execute(
        pg_dsn,
        f"CREATE ROLE {quote_ident(owner)} LOGIN PASSWORD '{password}'",
        f"CREATE DATABASE {quote_ident(database)} OWNER {quote_ident(owner)}",
    )
    try:
        yield PgStore(dsn_with(pg_dsn, database=database, user=owner, password=""), owner, password)
    finally:
        admin_execute(pg_dsn, f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)")
        admin_execute(pg_dsn, f"DROP ROLE IF EXISTS {quote_ident(owner)}")


@contextlib.contextmanager
def shop_replicas(
    shop: Shop, root: Path, policy: str, store: PgStore
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two replicas of one gateway over `shop`, in `root`/a and `root`/b, as behind a load
    balancer: one public URL (A's: the tokens' audience and issuer), one absolute data_dir
    (the dev issuer's and the state keys) and one `store`."""
    port_a = free_port()
    options: dict[str, Any] = {
        "server_extra": f'public_url = "http://127.0.0.1:{port_a}/mcp"\n{store.server}',
        "data_dir": (root / "state").as_posix(),
        "env": store.env,
    }
    (root / "a").mkdir()
    (root / "b").mkdir()
    with (
        shop_gateway(shop, root / "a", policy, port=port_a, **options) as a,
        shop_gateway(shop, root / "b", policy, **options) as b,
    ):
        yield a, b
