"""Two gateway replicas on one PostgreSQL store: a call held on A is decided through B's
admin API and completes on A at once (LISTEN/NOTIFY), A's SSE stream shows the decision,
racing decisions on A and B end with exactly one; a store that cannot be reached stops
`mcp-gate serve` with a clear message. Real processes, real PostgreSQL, real tokens."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from approval_helpers import db_value
from gateway_helpers import MCP_GATE, Gateway, text_of, write_config
from mcp_gate.auth.dev_issuer import dev_issuer_for
from mcp_gate.config import load_config
from mcp_gate.demo.embedded import free_port
from shop_helpers import pg_store, sample_policy, sample_shop, shop_replicas

pytestmark = pytest.mark.slow


@dataclass
class Replicas:
    a: Gateway
    b: Gateway
    db: str  # superuser DSN of the sample database
    tokens: dict[str, str]  # subject → bearer token (valid on both: one key, one audience)


@pytest.fixture(scope="module")
def replicas(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    with (
        sample_shop(pg_dsn, "test_replicas") as shop,
        pg_store(pg_dsn) as store,
        shop_replicas(shop, root, sample_policy(wait='"20s"'), store) as (a, b),
    ):
        # The agent's token through `mcp-gate token` on B's config, used on A; the
        # approvers' minted in-process with the same dev issuer (a subprocess each is slow).
        issuer = dev_issuer_for(load_config(a.config))
        assert issuer is not None
        tokens = {
            "agent": b.token("agent", "developers"),
            **{who: issuer.mint(who, ["dba"]) for who in ("alice", "carol", "sse-watcher")},
        }
        yield Replicas(a, b, shop.dsn, tokens)
        for gateway in (a, b):
            assert store.password not in gateway.stderr()


def base(gateway: Gateway) -> str:
    return gateway.url.rsplit("/mcp", 1)[0] + "/admin/v1"


async def admin(gateway: Gateway, token: str, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.request(
            method, base(gateway) + path, headers={"Authorization": f"Bearer {token}"}, **kw
        )


async def pending_on(gateway: Gateway, token: str, sql: str) -> dict[str, Any]:
    """The pending request for `sql`, as `gateway` lists it."""
    with anyio.fail_after(15):
        while True:
            listed = await admin(gateway, token, "GET", "/approvals?status=pending")
            for approval in listed.json()["approvals"]:
                if approval["sql"] == sql:
                    return approval
            await anyio.sleep(0.05)


@dataclass
class Sse:
    events: list[dict[str, Any]]
    ready: anyio.Event


@pytest.fixture
async def sse_on_a(replicas: Replicas) -> AsyncIterator[Sse]:
    """A's `GET /admin/v1/events`, read in the background as an approver."""
    token = replicas.tokens["sse-watcher"]
    sse = Sse([], anyio.Event())

    async def read() -> None:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        async with (
            httpx.AsyncClient(timeout=None) as http,
            http.stream("GET", base(replicas.a) + "/events", headers=headers) as response,
        ):
            assert response.status_code == 200
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    kind = line.partition(":")[2].strip()
                elif line.startswith("data:") and kind == "ready":
                    sse.ready.set()
                elif line.startswith("data:") and kind == "approval":
                    sse.events.append(json.loads(line.partition(":")[2]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        with anyio.fail_after(10):
            await sse.ready.wait()
        yield sse
        tg.cancel_scope.cancel()


def count_rows(db: str, where: str) -> int:
    return db_value(db, f"SELECT count(*) FROM orders WHERE {where}")


@pytest.mark.anyio
async def test_held_on_a_approved_on_b_completes_on_a(replicas: Replicas, sse_on_a: Sse) -> None:
    a, b = replicas.a, replicas.b
    agent, alice = replicas.tokens["agent"], replicas.tokens["alice"]
    where = "status = 'cancelled' AND id % 5 = 1"
    sql = f"DELETE FROM orders WHERE {where}"
    assert count_rows(replicas.db, where) > 0
    got: dict[str, Any] = {}
    async with a.client(agent, "legacy") as client, anyio.create_task_group() as tg:

        async def call() -> None:
            got["result"] = await client.call_tool("sql_query", {"sql": sql})
            got["at"] = time.perf_counter()

        tg.start_soon(call)
        held = await pending_on(b, alice, sql)  # B lists what A holds
        approved = await admin(b, alice, "POST", f"/approvals/{held['id']}/approve",
                               json={"reason": "approved on B"})  # fmt: skip
        done = time.perf_counter()
        assert approved.status_code == 200, approved.text
    result = got["result"]
    assert not result.is_error, text_of(result)
    assert result.structured_content["affected_rows"] > 0
    assert result.meta["io.mcp-gate/decision"]["approval_id"] == held["id"]
    latency = got["at"] - done
    print(f"\napprove on B → result on A: {latency * 1000:.0f} ms")
    assert latency < 2.0, latency
    assert count_rows(replicas.db, where) == 0
    # A's SSE stream saw the request arrive and B's decision, with who and why.
    with anyio.fail_after(5):
        while not any(
            e["event"] == "decided" and e["approval"]["id"] == held["id"] for e in sse_on_a.events
        ):
            await anyio.sleep(0.02)
    kinds = [e["event"] for e in sse_on_a.events if e["approval"]["id"] == held["id"]]
    assert kinds[0] == "created" and "decided" in kinds
    decided = next(e["approval"] for e in sse_on_a.events if e["event"] == "decided")
    assert decided["status"] in ("approved", "executed")
    assert decided["decisions"][0]["approver"] == "alice"
    assert decided["decisions"][0]["reason"] == "approved on B"
    # Both replicas agree: executed once.
    for gateway in (a, b):
        final = await admin(gateway, alice, "GET", f"/approvals/{held['id']}")
        assert final.json()["status"] == "executed"


async def race_once(replicas: Replicas, n: int) -> None:
    """Hold a DELETE on A; approve it on A and deny it on B at the same moment."""
    a, b = replicas.a, replicas.b
    agent, alice, carol = (replicas.tokens[who] for who in ("agent", "alice", "carol"))
    where = f"status = 'cancelled' AND id % 5 = {2 + n}"
    sql = f"DELETE FROM orders WHERE {where}"
    before = count_rows(replicas.db, where)
    got: dict[str, Any] = {}
    responses: dict[str, httpx.Response] = {}
    start = anyio.Event()

    async def call(client: Any) -> None:
        got["result"] = await client.call_tool("sql_query", {"sql": sql})

    async def vote(name: str, gateway: Gateway, token: str, approval_id: str) -> None:
        await start.wait()
        responses[name] = await admin(
            gateway, token, "POST", f"/approvals/{approval_id}/{name}", json={"reason": name}
        )

    async with a.client(agent, "legacy") as client, anyio.create_task_group() as tg:
        tg.start_soon(call, client)
        held = await pending_on(a, alice, sql)
        await pending_on(b, carol, sql)
        async with anyio.create_task_group() as voters:
            voters.start_soon(vote, "approve", a, alice, held["id"])
            voters.start_soon(vote, "deny", b, carol, held["id"])
            await anyio.sleep(0.05)
            start.set()
    codes = sorted(r.status_code for r in responses.values())
    assert codes == [200, 409], {k: (r.status_code, r.text) for k, r in responses.items()}
    winner = next(k for k, r in responses.items() if r.status_code == 200)
    final = [(await admin(g, alice, "GET", f"/approvals/{held['id']}")).json() for g in (a, b)]
    assert final[0] == final[1]
    assert [d["reason"] for d in final[0]["decisions"]] == [winner]  # the loser: no record
    result = got["result"]
    if winner == "approve":
        assert final[0]["status"] == "executed" and not result.is_error, text_of(result)
        assert count_rows(replicas.db, where) == 0 < before
    else:
        assert final[0]["status"] == "denied" and result.is_error
        assert "denied by carol" in text_of(result)
        assert count_rows(replicas.db, where) == before


@pytest.mark.anyio
async def test_approve_on_a_and_deny_on_b_at_once_one_decision(replicas: Replicas) -> None:
    for n in range(3):
        await race_once(replicas, n)


def serve_on_store(folder: Path, store: str, env: dict[str, str]) -> tuple[int, str]:
    """`mcp-gate serve` with `store` (its `[server]` lines) and no connections, which are
    opened before the store, so the store is what fails: its exit code and output."""
    config = write_config(
        folder,
        port=free_port(),
        dsn="postgresql://reader@127.0.0.1:1/none",
        write_dsn=None,
        server_extra=store,
    )
    config.write_text(config.read_text().split("[connections.demo]")[0])
    run = subprocess.run(
        [*MCP_GATE, "serve", "--config", str(config)],
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "400", **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return run.returncode, run.stdout + run.stderr


def test_an_unreachable_store_stops_serve_with_a_clear_message(tmp_path: Path) -> None:
    secret = "never-shown-" + secrets.token_hex(4)
    closed = free_port()
    code, output = serve_on_store(
        tmp_path,
        f'store = "postgresql://gate@127.0.0.1:{closed}/gate"\n'
        'store_password_env = "GATE_TEST_STORE_PW"',
        {"GATE_TEST_STORE_PW": secret},
    )
    assert code == 1, output
    assert "mcp-gate cannot start" in output and "server.store" in output
    assert f"gate@127.0.0.1:{closed}/gate" in output and "unavailable" in output
    assert secret not in output and "Traceback" not in output


def test_a_missing_store_password_variable_is_named(tmp_path: Path) -> None:
    code, output = serve_on_store(
        tmp_path,
        'store = "postgresql://gate@127.0.0.1:1/gate"\nstore_password_env = "GATE_NO_SUCH_PW"',
        {},
    )
    assert code == 1, output
    assert "GATE_NO_SUCH_PW is not set" in output and "Traceback" not in output
