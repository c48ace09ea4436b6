"""Acting as an approver against a real gateway's admin API, and reading PostgreSQL directly."""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg
import httpx

from gateway_helpers import Gateway
from pgserver import run_sync


def admin(gateway: Gateway, token: str, method: str, path: str, **kw: Any) -> httpx.Response:
    """One admin API request (`path` below /admin/v1) with `token` as the bearer."""
    base = gateway.url.rsplit("/mcp", 1)[0]
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.request(method, base + "/admin/v1" + path, headers=headers, timeout=30, **kw)


async def wait_pending(gateway: Gateway, token: str, timeout: float = 15) -> dict[str, Any]:
    """The first pending request `token` can see, as soon as there is one."""
    with anyio.fail_after(timeout):
        while True:
            listed = await anyio.to_thread.run_sync(
                lambda: admin(gateway, token, "GET", "/approvals?status=pending")
            )
            assert listed.status_code == 200, listed.text
            pending = listed.json()["approvals"]
            if pending:
                return pending[0]
            await anyio.sleep(0.05)


async def decide_when_pending(gateway: Gateway, token: str, verb: str, reason: str) -> dict:
    """Act as the approver: wait for the pending request, then approve or deny it."""
    pending = await wait_pending(gateway, token)
    path = f"/approvals/{pending['id']}/{verb}"
    done = await anyio.to_thread.run_sync(
        lambda: admin(gateway, token, "POST", path, json={"reason": reason})
    )
    assert done.status_code == 200, done.text
    return done.json()


def db_value(dsn: str, sql: str) -> Any:
    """One value read straight from PostgreSQL (as its superuser, not through the gateway)."""

    async def read() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return run_sync(read)
