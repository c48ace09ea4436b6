"""The demo's sample shop in a fresh database with its own reader and writer roles, the
repository's policy with test settings, and a gateway serving both: what most end-to-end tests
start from."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway_helpers import Gateway, running_gateway
from mcp_gate.demo.sample import load_sample
from pgserver import admin_execute, dsn_with, run_sync, unique_name

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
    `folder`; `options` go to `running_gateway`."""
    policies = folder / "policies.toml"
    policies.write_text(policy if policy is not None else SAMPLE_POLICY.read_text())
    with running_gateway(
        folder,
        dsn=shop.reader,
        write_dsn=shop.writer,
        env={**shop.env, **options.pop("env", {})},
        policies=policies,
        **options,
    ) as gateway:
        gateway.db = shop.dsn
        yield gateway
