"""`[approval] webhook` end to end: a real gateway posts new and decided requests to a real
HTTP receiver, without the agent's token, while the agent's call waits."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from approval_helpers import admin, decide_when_pending
from gateway_helpers import Gateway, text_of
from mcp_gate.policy.loader import PolicyError, load_policy
from shop_helpers import sample_policy, sample_shop, shop_gateway

pytestmark = pytest.mark.slow


class Receiver:
    """A webhook endpoint on loopback that keeps every POST body and its headers."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], Any]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/approvals"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [body for _, body in self.posts if body.get("event") == kind]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def gateway(
    pg_dsn: str, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    policy = sample_policy(wait='"15s"', webhook=f'"{receiver.url}"')
    with (
        sample_shop(pg_dsn, "test_webhook") as shop,
        shop_gateway(shop, tmp_path_factory.mktemp("webhook"), policy) as gw,
    ):
        yield gw


async def _wait_for(receiver: Receiver, kind: str, approval_id: str | None = None) -> dict:
    with anyio.fail_after(10):
        while True:
            for body in receiver.events(kind):
                if approval_id is None or body["approval"]["id"] == approval_id:
                    return body
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_the_webhook_hears_of_a_held_call_and_its_decision(
    gateway: Gateway, receiver: Receiver
) -> None:
    agent = gateway.token("agent", "developers")
    alice = gateway.token("alice", "dba")
    sql = "DELETE FROM orders WHERE id = 11"
    created: dict = {}

    async def approver() -> None:
        # The request reaches the webhook while the agent's call is still waiting.
        created.update(await _wait_for(receiver, "created"))
        assert admin(gateway, alice, "GET", "/approvals?status=pending").json()["approvals"]
        await decide_when_pending(gateway, alice, "deny", "not during the sale")

    async with gateway.client(agent, "legacy") as client, anyio.create_task_group() as tg:
        tg.start_soon(approver)
        result = await client.call_tool("sql_query", {"sql": sql})
    assert result.is_error and "denied by alice: not during the sale" in text_of(result)

    approval = created["approval"]
    assert approval["sql"] == sql and approval["approvers"] == ["dba"]
    assert approval["principal"]["subject"] == "agent"
    assert approval["id"] == result.meta["io.mcp-gate/decision"]["approval_id"]
    decided = await _wait_for(receiver, "decided", approval["id"])
    assert decided["approval"]["status"] == "denied"
    assert decided["approval"]["decisions"][0]["reason"] == "not during the sale"
    # Neither the agent's nor the approver's token is ever passed on.
    for headers, body in receiver.posts:
        text = json.dumps(body) + json.dumps(headers)
        assert agent not in text and alice not in text
        assert "authorization" not in {h.lower() for h in headers}


def test_a_webhook_that_is_not_http_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "policies.toml"
    path.write_text('version = 1\n[approval]\nwebhook = "file:///etc/passwd"\n')
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert "approval" in message and "webhook must be an http:// or https:// URL" in message
    assert "policies.toml:3" in message
