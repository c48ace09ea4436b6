"""Held calls end to end: an agent's write waits for a human who answers through the admin
API; both MCP eras; a real gateway process, real PostgreSQL, real tokens."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import anyio
import pytest
from mcp import types

from approval_helpers import admin, db_value, decide_when_pending, wait_pending
from gateway_helpers import MCP_GATE, Gateway, text_of
from shop_helpers import sample_policy, sample_shop, shop_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with (
        sample_shop(pg_dsn, "test_approvals") as shop,
        shop_gateway(shop, tmp_path_factory.mktemp("approvals"), sample_policy(wait='"15s"')) as gw,
    ):
        yield gw


def count_cancelled(gateway: Gateway, where: str = "true") -> int:
    sql = f"SELECT count(*) FROM orders WHERE status = 'cancelled' AND {where}"
    return db_value(gateway.db, sql)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_approve_then_deny(gateway: Gateway, mode: str) -> None:
    """The issue's "done when", in both eras, with the repository's policies.toml: the agent's
    DELETE pauses saying who must approve, a dba approves through the admin API, the agent
    gets its result, the rows are gone, and the decision (who, when, why) is on record."""
    agent = gateway.token("agent", "developers")
    alice = gateway.token("alice", "dba")
    forms: list[str] = []
    progress: list[str | None] = []

    async def answer(ctx, params) -> types.ElicitResult:
        forms.append(params.message)
        return types.ElicitResult(action="accept", content={"justification": "cleanup ticket 7"})

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    slice_ = 3 if mode == "legacy" else 4  # each era deletes its own rows
    where = f"id % 7 = {slice_}"
    sql = f"DELETE FROM orders WHERE status = 'cancelled' AND {where}"
    before = count_cancelled(gateway, where)
    assert before > 0
    async with gateway.client(agent, mode, elicitation_callback=answer) as client:
        async with anyio.create_task_group() as tg:
            decided: dict = {}

            async def approver() -> None:
                # The approver sees the request, its SQL, and the rows the DELETE would touch.
                pending = await wait_pending(gateway, alice)
                assert pending["sql"] == sql and pending["approvers"] == ["dba"]
                assert pending["reasons"][0] == "writes need a DBA"
                assert 0 < pending["estimated_rows"] <= 5000
                decided.update(await decide_when_pending(gateway, alice, "approve", "ok"))

            tg.start_soon(approver)
            result = await client.call_tool(
                "sql_query", {"sql": sql}, progress_callback=on_progress
            )
        assert not result.is_error, text_of(result)
        assert result.structured_content["affected_rows"] == before
        assert decided["status"] == "approved" and decided["justification"] == "cleanup ticket 7"
        # The pause says who must approve, why, and the approval id.
        assert forms and "needs approval by dba" in forms[0] and "writes need a DBA" in forms[0]
        assert f"approval id {decided['id']}" in forms[0] and sql in forms[0]
        assert "waiting for approval by dba" in progress
        assert result.meta["io.mcp-gate/decision"]["approval_id"] == decided["id"]
        assert count_cancelled(gateway, where) == 0
        # On record: who decided, when, why, and that it ran (once).
        record = admin(gateway, alice, "GET", f"/approvals/{decided['id']}").json()
        assert record["status"] == "executed" and record["executed_at"]
        (vote,) = record["decisions"]
        assert (vote["approver"], vote["decision"], vote["reason"]) == ("alice", "approve", "ok")
        assert "dba" in vote["approver_groups"] and vote["at"] == record["decided_at"]
        assert record["created_at"] <= vote["at"] <= record["executed_at"]

        # Repeating the identical call after it ran is a new request (an approval runs once).
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_pending, gateway, alice, "deny", "not today")
            denied = await client.call_tool("sql_query", {"sql": sql})
        assert denied.is_error
        assert "denied by alice: not today" in text_of(denied)
        denial_id = denied.meta["io.mcp-gate/decision"]["approval_id"]
        record = admin(gateway, alice, "GET", f"/approvals/{denial_id}").json()
        assert record["status"] == "denied" and record["decisions"][0]["reason"] == "not today"


@pytest.mark.anyio
async def test_decline_withdraws_and_self_approval_is_refused(gateway: Gateway) -> None:
    dba_agent = gateway.token("bob", "developers,dba")

    async def decline(ctx, params) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    sql = "UPDATE orders SET status = 'paid' WHERE id = 1"
    agent = gateway.token("agent", "developers")
    async with gateway.client(agent, "legacy", elicitation_callback=decline) as client:
        result = await client.call_tool("sql_query", {"sql": sql})
    assert result.is_error and "withdrawn" in text_of(result)

    async def accept(ctx, params) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={})

    # A pending request of its own: its requester may not approve it.
    alice = gateway.token("alice", "dba")
    async with (
        gateway.client(agent, "legacy", elicitation_callback=accept) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.call_tool, "sql_query", {"sql": sql + " AND true"})
        for _ in range(100):
            listed = admin(gateway, alice, "GET", "/approvals?status=pending")
            if listed.json()["approvals"]:
                break
            await anyio.sleep(0.05)
        ap = listed.json()["approvals"][0]
        own = admin(gateway, agent, "POST", f"/approvals/{ap['id']}/approve", json={})
        assert own.status_code == 403
        other = admin(gateway, dba_agent, "POST", f"/approvals/{ap['id']}/deny",
                          json={"reason": "no"})  # fmt: skip
        assert other.status_code == 200


@pytest.mark.anyio
async def test_cli_lists_and_approves(gateway: Gateway) -> None:
    """`mcp-gate approvals list|approve` as an approver would script it."""
    agent = gateway.token("agent", "developers")
    alice = gateway.token("alice", "dba")
    base = ["--gateway", gateway.url, "--token", alice]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MCP_GATE, "approvals", *args, *base],
            env=gateway.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    async def approve_from_cli() -> None:
        for _ in range(100):
            listed = await anyio.to_thread.run_sync(lambda: cli("list", "--json"))
            assert listed.returncode == 0, listed.stderr
            pending = json.loads(listed.stdout)["approvals"]
            if pending:
                done = await anyio.to_thread.run_sync(
                    lambda ap=pending[0]["id"]: cli("approve", ap, "--reason", "scripted")
                )
                assert done.returncode == 0 and "approved" in done.stdout, done.stderr
                return
            await anyio.sleep(0.1)
        raise AssertionError("nothing to approve")

    async with gateway.client(agent, "legacy") as client, anyio.create_task_group() as tg:
        tg.start_soon(approve_from_cli)
        result = await client.call_tool(
            "sql_query", {"sql": "UPDATE orders SET status = 'paid' WHERE id = 2 RETURNING id"}
        )
    assert not result.is_error, text_of(result)
    assert result.structured_content["rows"] == [[2]]
    wrong = cli("deny", "ap_doesnotexist", "--reason", "x")
    assert wrong.returncode == 1 and "404" in wrong.stderr
