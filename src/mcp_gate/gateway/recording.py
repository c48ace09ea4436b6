"""Opening the audit recording with the gateway: the store, the recorder, background jobs.

`open_audit(config, approvals)` opens the store of `[server] store`, starts the recorder
(writer, idle sweep, approval events) and the maintenance job (a signed checkpoint every
`[audit] checkpoint_every`, retention `[audit] retain` with each), and at a clean stop ends
the open sessions, writes what is queued and signs a final checkpoint. With
`[audit] enabled = false` it yields None and nothing is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio

from mcp_gate.approvals import ApprovalService
from mcp_gate.audit import AuditStore, AuditUnavailable, factory
from mcp_gate.audit.chain import SigningKeyError, load_signing_key, maintain, make_checkpoint
from mcp_gate.audit.recorder import Recorder
from mcp_gate.audit.redact import MIN_SECRET_LENGTH, Redactor
from mcp_gate.config import GateConfig, SecretError, read_secret
from mcp_gate.store_target import StartupError, store_target

log = logging.getLogger("mcp_gate.audit")


def gateway_secrets(config: GateConfig) -> list[str]:
    """The secret values this gateway holds (connection and store passwords), for literal
    redaction. Unreadable secrets are skipped here: opening the connections reports them."""
    base = config.file.parent
    found: list[str] = []
    store_password = store_target(config).password
    if store_password:
        found.append(store_password)
    for name, settings in config.model.connections.items():
        refs = [
            (settings.password_env, settings.password_file),
            (
                settings.write_password_env or settings.password_env,
                settings.write_password_file or settings.password_file,
            ),
        ]
        for env, file in refs:
            try:
                secret = read_secret(env, file, base, f"connection {name!r}")
            except SecretError:
                continue
            if secret:
                found.append(secret)
    short = [s for s in found if len(s) < MIN_SECRET_LENGTH]
    if short:
        log.warning(
            "a connection password is shorter than %d characters: the audit recording cannot "
            "redact it as a literal; use a longer password",
            MIN_SECRET_LENGTH,
        )
    return found


def audit_store(config: GateConfig) -> AuditStore:
    """The audit store of `[server] store` (not opened yet)."""
    target = store_target(config)
    if target.path is not None:
        target.path.parent.mkdir(parents=True, exist_ok=True)
    return factory.audit_store(target)


@contextlib.asynccontextmanager
async def open_audit(
    config: GateConfig, approvals: ApprovalService | None = None
) -> AsyncIterator[Recorder | None]:
    """The running recorder for the gateway's lifetime (module docstring)."""
    settings = config.model.audit
    if not settings.enabled:
        log.warning("[audit] enabled = false: sessions and decisions are NOT recorded")
        yield None
        return
    store = audit_store(config)
    try:
        key = load_signing_key(config.data_dir)
        await store.open()
    except (SigningKeyError, AuditUnavailable) as exc:
        raise StartupError(f"the audit store cannot be opened: {exc}") from None
    recorder = Recorder(store, Redactor(gateway_secrets(config)))
    try:
        async with recorder.running(approvals):
            job = asyncio.get_running_loop().create_task(
                maintain(
                    store, key, checkpoint_every=settings.checkpoint_every, retain=settings.retain
                ),
                name="mcp-gate audit maintenance",
            )
            try:
                yield recorder
            finally:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
        # The recorder has written the end of every session: sign where the chain ends.
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            try:
                await make_checkpoint(store, key)
            except Exception as exc:
                log.error("audit: no final checkpoint: %s", exc)
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
