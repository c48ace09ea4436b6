"""Who sees every recorded session through the admin API: `[audit] viewers`, by default the
policy's approvers. Real `mcp-gate serve`, a real SDK client, real PostgreSQL, real JWTs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway_helpers import Gateway
from mcp_gate.config import AuditSettings
from shop_helpers import Shop, sample_shop, shop_gateway

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture(scope="module")
def shop(pg_dsn: str) -> Iterator[Shop]:
    with sample_shop(pg_dsn, "test_viewers") as shop:
        yield shop


def sessions(gateway: Gateway, token: str, path: str = "") -> httpx.Response:
    base = gateway.url.rsplit("/mcp", 1)[0]
    return httpx.get(
        f"{base}/admin/v1/sessions{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


async def agent_session(gateway: Gateway) -> str:
    """One agent session on record; its id."""
    async with gateway.client(gateway.token("viewed-agent", "developers")) as client:
        await client.call_tool("sql_query", {"sql": "SELECT 1 AS one"})
    me = gateway.token("viewed-agent", "developers")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = sessions(gateway, me).json()["sessions"]
        if found:
            return found[0]["id"]
        time.sleep(0.1)
    raise AssertionError("the agent's session was not recorded")


def subjects(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {s["subject"] for s in response.json()["sessions"]}


def test_viewers_default_to_nobody_extra() -> None:
    assert AuditSettings().viewers == []


async def test_audit_viewers_see_every_session_and_approvers_no_longer(
    shop: Shop, tmp_path: Path
) -> None:
    extra = '[audit]\nviewers = ["auditors", "security"]\n'
    with shop_gateway(shop, tmp_path, write_dsn=None, extra=extra) as gw:
        session = await agent_session(gw)
        auditor = gw.token("audrey", "auditors")
        assert "viewed-agent" in subjects(sessions(gw, auditor))
        assert sessions(gw, auditor, f"/{session}").status_code == 200
        assert "viewed-agent" in subjects(sessions(gw, gw.token("sec", "security")))
        # The policy's approvers (dba) are not viewers once [audit] viewers is set.
        dba = gw.token("bob", "dba")
        assert subjects(sessions(gw, dba)) <= {"bob"}
        assert sessions(gw, dba, f"/{session}").status_code == 403


async def test_without_audit_viewers_the_approvers_see_every_session(
    shop: Shop, tmp_path: Path
) -> None:
    with shop_gateway(shop, tmp_path, write_dsn=None) as gw:
        session = await agent_session(gw)
        dba = gw.token("bob", "dba")
        assert "viewed-agent" in subjects(sessions(gw, dba))
        assert sessions(gw, dba, f"/{session}").status_code == 200
        auditor = gw.token("audrey", "auditors")
        assert subjects(sessions(gw, auditor)) <= {"audrey"}
        assert sessions(gw, auditor, f"/{session}").status_code == 403
