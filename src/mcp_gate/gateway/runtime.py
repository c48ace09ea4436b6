"""Assembling a gateway from its config: policy, pools, identity, pipeline."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from mcp_gate.approvals import (
    ApprovalService,
    ApprovalStore,
    PostgresApprovalStore,
    SqliteApprovalStore,
    StoreError,
    WebhookSender,
)
from mcp_gate.audit.recorder import Recorder
from mcp_gate.auth import DevIssuer, JwtVerifier
from mcp_gate.config import GateConfig, SecretError, read_secret
from mcp_gate.gateway.approval_state import KEY_FILE as STATE_KEY_FILE
from mcp_gate.gateway.approval_state import ApprovalStateCodec
from mcp_gate.gateway.hold import Approvals
from mcp_gate.gateway.keys import load_key
from mcp_gate.gateway.pipeline import Pipeline
from mcp_gate.mask.rules import MaskPlan
from mcp_gate.policy.loader import LoadedPolicy, PolicyError, load_policy
from mcp_gate.sqltools.builtin import BuiltinSql, Connection, Masking
from mcp_gate.sqltools.pool import create_pool
from mcp_gate.store_target import StartupError, StoreTarget, store_target

log = logging.getLogger("mcp_gate.runtime")

HASH_KEY_FILE = "mask-hash.key"


@dataclass
class PolicyHolder:
    """The policy in force. A reload that fails keeps the last good policy (DESIGN §4)."""

    path: Path
    current: LoadedPolicy
    _mtime: float = field(default=0.0)
    _plan: tuple[str, MaskPlan] | None = None

    @classmethod
    def load(cls, path: Path) -> PolicyHolder:
        """Load the policy now; a bad file is a StartupError listing its problems."""
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            raise StartupError(f"the policy cannot be used:\n{exc}") from None
        return cls(path, policy, _mtime=_mtime(path))

    def __call__(self) -> LoadedPolicy:
        return self.current

    def mask_plan(self) -> MaskPlan:
        """The `[[mask]]` rules of the policy in force, compiled once per policy version."""
        cached = self._plan
        if cached is None or cached[0] != self.current.version:
            cached = (self.current.version, MaskPlan(self.current.model.mask))
            self._plan = cached
        return cached[1]

    def reload_if_changed(self) -> bool:
        """Reload when the file changed; keep the current policy if the new one is bad."""
        mtime = _mtime(self.path)
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            log.error("policy reload refused, keeping version %s:\n%s", self.current.version, exc)
            return False
        if policy.version != self.current.version:
            log.info("policy reloaded: version %s → %s", self.current.version, policy.version)
            self.current = policy
        return True

    async def watch(self, interval: float = 2.0) -> None:
        """Poll the file's modification time (off the event loop) and reload on change."""
        while True:
            await anyio.sleep(interval)
            await anyio.to_thread.run_sync(self.reload_if_changed)


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


@contextlib.asynccontextmanager
async def open_connections(config: GateConfig) -> AsyncIterator[dict[str, Connection]]:
    """Open a read pool (and a write pool with `write_dsn`) per connection; close them after."""
    base = config.file.parent
    connections: dict[str, Connection] = {}
    try:
        for name, settings in config.model.connections.items():
            try:
                password = read_secret(
                    settings.password_env, settings.password_file, base, f"connection {name!r}"
                )
                write_password = read_secret(
                    settings.write_password_env or settings.password_env,
                    settings.write_password_file or settings.password_file,
                    base,
                    f"connection {name!r} (write)",
                )
            except SecretError as exc:
                raise StartupError(str(exc)) from None
            read_pool = await create_pool(
                settings.dsn, password=password, max_size=settings.pool_size, name=name
            )
            conn = Connection(name, settings, read_pool)
            connections[name] = conn
            if settings.write_dsn:
                conn.write_pool = await create_pool(
                    settings.write_dsn,
                    password=write_password,
                    max_size=max(2, settings.pool_size // 2),
                    name=f"{name} (write)",
                )
        yield connections
    finally:
        for conn in connections.values():
            for pool in (conn.read_pool, conn.write_pool):
                if pool is not None:
                    with contextlib.suppress(Exception):
                        await pool.close()


def build_pipeline(
    policy: PolicyHolder,
    connections: dict[str, Connection],
    data_dir: Path,
    approvals: ApprovalService | None = None,
    recorder: Recorder | None = None,
) -> Pipeline:
    """The pipeline over the built-in SQL tools (wrapped upstreams join later); with a
    `recorder`, every decision is recorded before its call runs."""
    masking = Masking(policy.mask_plan, load_key(data_dir, HASH_KEY_FILE))
    upstreams = [BuiltinSql(connections, masking)] if connections else []
    held = None
    if approvals is not None:
        codec = ApprovalStateCodec(load_key(data_dir, STATE_KEY_FILE))
        held = Approvals(approvals, codec, lambda: policy().model.approval)
    return Pipeline(policy, upstreams, held, recorder)


def approval_store(target: StoreTarget) -> ApprovalStore:
    """The approval store on `target` (not opened yet)."""
    if target.kind == "postgresql":
        assert target.dsn is not None
        return PostgresApprovalStore(target.dsn, password=target.password)
    assert target.path is not None
    return SqliteApprovalStore(target.path)


@contextlib.asynccontextmanager
async def open_approvals(
    config: GateConfig, webhook: str | None = None
) -> AsyncIterator[ApprovalService]:
    """The approval service on the configured store, started and closed with the gateway,
    posting to `webhook` (the policy's `[approval] webhook`, read at start) when given.
    A store that cannot be opened (unreachable, refused, newer schema) is a StartupError."""
    target = store_target(config)
    if target.path is not None:
        target.path.parent.mkdir(parents=True, exist_ok=True)
    sender = WebhookSender(webhook) if webhook else None
    service = ApprovalService(approval_store(target), webhook=sender)
    try:
        await service.start()
    except (StoreError, OSError, sqlite3.Error) as exc:
        # PostgreSQL store errors already name `user@host:port/db` (and never the password).
        where = "" if target.kind == "postgresql" else f" ({target.describe()})"
        raise StartupError(f"server.store{where}: {exc}") from None
    try:
        yield service
    finally:
        await service.aclose()


def verifier_for(config: GateConfig, dev: DevIssuer | None) -> JwtVerifier:
    """The bearer-token verifier: the dev issuer's key, or the configured OIDC issuer."""
    auth = config.model.auth
    if dev is not None:
        # Same verification path as a real issuer, with the keys taken from the file.
        return JwtVerifier(
            dev.issuer,
            config.audience,
            groups_claim=auth.groups_claim,
            leeway=auth.leeway,
            jwks=dev.jwks(),
        )
    if not config.issuer:
        raise StartupError(
            "no identity provider: set [auth] issuer (OIDC) or, for local use, "
            "[auth] dev_issuer = true"
        )
    return JwtVerifier(
        config.issuer,
        config.audience,
        groups_claim=auth.groups_claim,
        leeway=auth.leeway,
        jwks_uri=auth.jwks_uri,
    )
