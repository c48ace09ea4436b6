"""Quorum and denial end to end: a real gateway whose policy needs two distinct approvers, a
real SDK client waiting in its call, approvers answering through the admin API."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from approval_helpers import admin, db_value, wait_pending
from gateway_helpers import Gateway, text_of
from shop_helpers import sample_policy, sample_shop, shop_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    policy = sample_policy(wait='"20s"', quorum="2")
    with (
        sample_shop(pg_dsn, "test_quorum") as shop,
        shop_gateway(shop, tmp_path_factory.mktemp("quorum"), policy) as gw,
    ):
        yield gw


def marked(gateway: Gateway, order_id: int) -> int:
    """1 once the held UPDATE has run on the order, else 0."""
    return db_value(
        gateway.db, f"SELECT count(*) FROM orders WHERE id = {order_id} AND total = 12345.67"
    )


async def vote(gateway: Gateway, token: str, approval_id: str, verb: str, reason: str) -> dict:
    path = f"/approvals/{approval_id}/{verb}"
    done = await anyio.to_thread.run_sync(
        lambda: admin(gateway, token, "POST", path, json={"reason": reason})
    )
    assert done.status_code == 200, done.text
    return done.json()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_two_distinct_approvers_release_the_call(gateway: Gateway, mode: str) -> None:
    order_id = 21 if mode == "legacy" else 22
    assert marked(gateway, order_id) == 0
    agent = gateway.token("agent", "developers")
    alice, bob = gateway.token("alice", "dba"), gateway.token("bob", "dba")
    finished = anyio.Event()
    seen: dict = {}

    async def approvers() -> None:
        pending = await wait_pending(gateway, alice)
        assert pending["quorum"] == 2
        first = await vote(gateway, alice, pending["id"], "approve", "looks right")
        # One vote of two: still pending, nothing ran, the agent is still waiting.
        assert first["status"] == "pending" and len(first["decisions"]) == 1
        # The same person again does not make a quorum: the vote counts once.
        again = await vote(gateway, alice, pending["id"], "approve", "me again")
        assert again["status"] == "pending" and len(again["decisions"]) == 1
        await anyio.sleep(0.5)
        assert not finished.is_set() and marked(gateway, order_id) == 0
        seen.update(await vote(gateway, bob, pending["id"], "approve", "agreed"))

    async with gateway.client(agent, mode) as client, anyio.create_task_group() as tg:
        tg.start_soon(approvers)
        result = await client.call_tool(
            "sql_query", {"sql": f"UPDATE orders SET total = 12345.67 WHERE id = {order_id}"}
        )
        finished.set()
    assert not result.is_error, text_of(result)
    assert result.structured_content["affected_rows"] == 1 and marked(gateway, order_id) == 1
    assert seen["status"] == "approved"
    assert [d["approver"] for d in seen["decisions"]] == ["alice", "bob"]


@pytest.mark.anyio
async def test_one_denial_refuses_and_nothing_runs(gateway: Gateway) -> None:
    order_id = 23
    agent = gateway.token("agent", "developers")
    alice = gateway.token("alice", "dba")

    async def approver() -> None:
        pending = await wait_pending(gateway, alice)
        await vote(gateway, alice, pending["id"], "deny", "customer complaint open")

    async with gateway.client(agent, "legacy") as client, anyio.create_task_group() as tg:
        tg.start_soon(approver)
        result = await client.call_tool(
            "sql_query", {"sql": f"UPDATE orders SET total = 12345.67 WHERE id = {order_id}"}
        )
    assert result.is_error
    assert "denied by alice: customer complaint open" in text_of(result)
    assert result.meta["io.mcp-gate/decision"]["decision"] == "review"
    assert marked(gateway, order_id) == 0  # the UPDATE never ran
