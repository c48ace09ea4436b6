"""The approvals admin API over real HTTP (uvicorn on 127.0.0.1 in the test's event loop),
with real JWTs from the dev issuer, and the webhook against a real local receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from mcp_gate.approvals import (
    ApprovalRequest,
    ApprovalService,
    SqliteApprovalStore,
    Status,
    WebhookSender,
)
from mcp_gate.approvals.api import admin_routes, bearer_authenticator
from mcp_gate.auth import DevIssuer
from mcp_gate.calls import Principal

ISSUER = "http://127.0.0.1:1/issuer"
AUDIENCE = "mcp-gate-admin"
DELETE = "DELETE FROM orders WHERE id = 1"

ALICE = Principal("alice", frozenset({"developers"}))
ERIN = Principal("erin", frozenset({"dba"}))


class Server:
    """uvicorn serving `app` on 127.0.0.1:<free port> as a task of the current event loop
    (the app shares the loop with the service and the test)."""

    def __init__(self, app: ASGIApp) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as serve.py does
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Server:
        self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[self._sock]))
        with anyio.fail_after(10):
            while not self.server.started:
                await anyio.sleep(0.005)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
        self._sock.close()


@dataclass
class Env:
    service: ApprovalService
    client: httpx.AsyncClient
    url: str
    tokens: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def hold(self, principal: Principal = ALICE, **overrides: Any) -> ApprovalRequest:
        params: dict[str, Any] = {
            "principal": principal,
            "tool": "execute_sql",
            "target": "builtin/main",
            "arguments": {"sql": DELETE, **overrides.pop("extra_args", {})},
            "sql": DELETE,
            "policy_version": "v1",
            "reasons": ["writes need a DBA", "write"],
            "approvers": ["dba"],
            "quorum": 1,
            "ttl_seconds": 60,
        }
        params.update(overrides)
        return await self.service.request(**params)


PEOPLE = {
    "alice": ["developers"],
    "erin": ["dba"],
    "bob": ["dba"],
    "carol": ["dba", "ops"],
    "dave": ["developers"],
    "audrey": ["auditors"],
}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    issuer = DevIssuer(tmp_path / "issuer", ISSUER, AUDIENCE)
    tokens = {name: issuer.mint(name, groups) for name, groups in PEOPLE.items()}
    service = ApprovalService(SqliteApprovalStore(tmp_path / "approvals.db"))
    await service.start()
    routes = admin_routes(
        service,
        bearer_authenticator(issuer.verifier()),
        viewer_groups=["auditors"],
        ping_interval=0.5,
    )
    try:
        async with (
            Server(Starlette(routes=routes)) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            yield Env(service, client, server.url, tokens)
    finally:
        await service.aclose()


async def read_sse(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) pairs of a text/event-stream; comments are yielded as ("comment", text)."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []


async def next_sse(events: AsyncIterator[tuple[str, Any]], kind: str = "approval") -> Any:
    """The data of the next `kind` event (comments are kind "comment")."""
    with anyio.fail_after(5):
        async for event, data in events:
            if event == kind:
                return data
    raise AssertionError(f"the stream ended before a {kind} event")


# -- authentication -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unauthenticated_is_401(env: Env) -> None:
    for method, path in [
        ("GET", "/admin/v1/approvals"),
        ("GET", "/admin/v1/approvals/ap_x"),
        ("POST", "/admin/v1/approvals/ap_x/approve"),
        ("POST", "/admin/v1/approvals/ap_x/deny"),
        ("GET", "/admin/v1/events"),
    ]:
        response = await env.client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"] == "unauthorized"
        assert "Authorization: Bearer" in response.json()["message"]

    basic = await env.client.get("/admin/v1/approvals", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401

    bad = await env.client.get("/admin/v1/approvals", headers={"Authorization": "Bearer x.y.z"})
    assert bad.status_code == 401
    assert bad.json() == {"error": "invalid_token", "message": "malformed token"}
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]

    other = DevIssuer(env.service.store.path.parent / "other", ISSUER, AUDIENCE)  # type: ignore[attr-defined]
    forged = other.mint("bob", ["dba"])  # right claims, wrong key
    response = await env.client.get(
        "/admin/v1/approvals", headers={"Authorization": f"Bearer {forged}"}
    )
    assert response.status_code == 401 and response.json()["message"] == "unknown signing key"


# -- reading ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_list_and_visibility(env: Env) -> None:
    mine = await env.hold()  # alice's, approvers dba
    ops = await env.hold(extra_args={"n": 2}, approvers=["ops"])
    dave = Principal("dave", frozenset({"developers"}))
    dave_own = await env.hold(dave, extra_args={"n": 3}, approvers=["security"])

    async def ids(who: str, query: str = "") -> list[str]:
        response = await env.client.get(f"/admin/v1/approvals{query}", headers=env.auth(who))
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()["approvals"]]

    assert await ids("bob") == [mine.id]  # dba sees what dba can decide
    assert set(await ids("carol")) == {mine.id, ops.id}  # dba + ops
    assert set(await ids("alice")) == {mine.id, ops.id}  # her own requests
    assert await ids("dave") == [dave_own.id]  # only his own
    assert await ids("audrey") == [dave_own.id, ops.id, mine.id]  # viewers: all, newest first
    assert await ids("audrey", "?limit=1") == [dave_own.id]

    await env.service.decide(mine.id, Principal("bob", frozenset({"dba"})), True, None)
    assert await ids("carol", "?status=pending") == [ops.id]
    assert await ids("carol", "?status=approved") == [mine.id]
    assert set(await ids("carol", "?status=pending,approved")) == {mine.id, ops.id}

    response = await env.client.get("/admin/v1/approvals?status=maybe", headers=env.auth("bob"))
    assert response.status_code == 400 and "unknown status 'maybe'" in response.json()["message"]
    response = await env.client.get("/admin/v1/approvals?limit=0", headers=env.auth("bob"))
    assert response.status_code == 400 and "limit" in response.json()["message"]

    full = (await env.client.get("/admin/v1/approvals", headers=env.auth("bob"))).json()
    [item] = full["approvals"]
    assert item["principal"] == {"subject": "alice", "groups": ["developers"]}
    assert item["sql"] == DELETE and item["reasons"] == ["writes need a DBA", "write"]
    assert item["approvers"] == ["dba"] and item["quorum"] == 1
    assert item["decisions"][0]["approver"] == "bob"
    assert {"created_at", "expires_at", "target", "tool", "status"} <= item.keys()


@pytest.mark.anyio
async def test_get_one(env: Env) -> None:
    approval = await env.hold()
    response = await env.client.get(f"/admin/v1/approvals/{approval.id}", headers=env.auth("bob"))
    assert response.status_code == 200 and response.json()["id"] == approval.id
    assert response.json()["status"] == "pending"
    mine = await env.client.get(f"/admin/v1/approvals/{approval.id}", headers=env.auth("alice"))
    assert mine.status_code == 200
    hidden = await env.client.get(f"/admin/v1/approvals/{approval.id}", headers=env.auth("dave"))
    assert hidden.status_code == 403 and hidden.json()["error"] == "forbidden"
    missing = await env.client.get("/admin/v1/approvals/ap_nope", headers=env.auth("bob"))
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


# -- deciding -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_approve_and_then_conflict(env: Env) -> None:
    approval = await env.hold()
    url = f"/admin/v1/approvals/{approval.id}"
    response = await env.client.post(f"{url}/approve", headers=env.auth("bob"))  # no body
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "approved" and body["decisions"][0]["approver"] == "bob"
    assert body["decisions"][0]["reason"] is None and body["decided_at"]

    again = await env.client.post(
        f"{url}/approve", headers=env.auth("carol"), json={"reason": "me too"}
    )
    assert again.status_code == 409 and "already approved" in again.json()["message"]
    deny = await env.client.post(f"{url}/deny", headers=env.auth("carol"), json={"reason": "no"})
    assert deny.status_code == 409
    missing = await env.client.post("/admin/v1/approvals/ap_nope/approve", headers=env.auth("bob"))
    assert missing.status_code == 404


@pytest.mark.anyio
async def test_deny_needs_a_reason(env: Env) -> None:
    approval = await env.hold()
    url = f"/admin/v1/approvals/{approval.id}/deny"
    for body in (None, {}, {"reason": "   "}):
        response = await env.client.post(url, headers=env.auth("bob"), json=body)
        assert response.status_code == 400, body
        assert response.json()["message"] == "a reason is required to deny a request"
    response = await env.client.post(
        url, headers=env.auth("bob"), json={"reason": "use a soft delete"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "denied"
    assert body["decisions"] == [
        {
            "approver": "bob",
            "approver_groups": ["dba"],
            "decision": "deny",
            "reason": "use a soft delete",
            "at": body["decisions"][0]["at"],
        }
    ]


@pytest.mark.anyio
async def test_self_and_non_member_are_403(env: Env) -> None:
    own = await env.hold(ERIN)  # erin is in dba
    response = await env.client.post(
        f"/admin/v1/approvals/{own.id}/approve", headers=env.auth("erin")
    )
    assert response.status_code == 403 and "own request" in response.json()["message"]

    approval = await env.hold()
    for who, path in (("dave", "approve"), ("dave", "deny"), ("alice", "approve")):
        response = await env.client.post(
            f"/admin/v1/approvals/{approval.id}/{path}", headers=env.auth(who), json={"reason": "x"}
        )
        assert response.status_code == 403, (who, path)
        assert response.json()["error"] == "forbidden"
    assert (await env.service.get(approval.id)).decisions == ()


@pytest.mark.anyio
async def test_quorum_two_over_http(env: Env) -> None:
    approval = await env.hold(quorum=2)
    url = f"/admin/v1/approvals/{approval.id}/approve"
    first = await env.client.post(url, headers=env.auth("bob"))
    assert first.status_code == 200 and first.json()["status"] == "pending"
    twice = await env.client.post(url, headers=env.auth("bob"))
    assert twice.status_code == 200 and twice.json()["status"] == "pending"
    assert len(twice.json()["decisions"]) == 1
    done = await env.client.post(url, headers=env.auth("carol"))
    assert done.json()["status"] == "approved"
    assert [d["approver"] for d in done.json()["decisions"]] == ["bob", "carol"]


@pytest.mark.anyio
async def test_bad_bodies_are_400(env: Env) -> None:
    approval = await env.hold()
    url = f"/admin/v1/approvals/{approval.id}/deny"
    headers = {**env.auth("bob"), "Content-Type": "application/json"}
    cases = {
        b'{"reason": "x"': "not valid JSON",
        b"\xff\xfe": "not",
        b'["x"]': "must be a JSON object",
        b'{"reason": 5}': "reason",
        b'{"reason": "x", "approve": true}': "approve",
        json.dumps({"reason": "x" * 3000}).encode(): "reason",
    }
    for content, message in cases.items():
        response = await env.client.post(url, headers=headers, content=content)
        assert response.status_code == 400, content
        assert message in response.json()["message"], response.json()
    big = await env.client.post(url, headers=headers, content=b" " * (65 * 1024))
    assert big.status_code == 413
    assert (await env.service.get(approval.id)).status == Status.PENDING


@pytest.mark.anyio
async def test_racing_approvers_over_http(env: Env) -> None:
    for n in range(10):
        approval = await env.hold(extra_args={"n": n})
        codes: dict[str, int] = {}

        async def post(who: str, path: str) -> None:
            response = await env.client.post(
                f"/admin/v1/approvals/{approval.id}/{path}",  # noqa: B023
                headers=env.auth(who),
                json={"reason": who},
            )
            codes[path] = response.status_code  # noqa: B023

        async with anyio.create_task_group() as tg:
            tg.start_soon(post, "bob", "approve")
            tg.start_soon(post, "carol", "deny")
        assert sorted(codes.values()) == [200, 409], codes
        winner = next(path for path, code in codes.items() if code == 200)
        final = await env.service.get(approval.id)
        assert final.status == (Status.APPROVED if winner == "approve" else Status.DENIED)
        assert len(final.decisions) == 1


@pytest.mark.anyio
async def test_approve_api_to_waiting_call(env: Env) -> None:
    """From the approve API call to wait() returning in the (same-process) requester."""
    latencies = []
    for n in range(10):
        approval = await env.hold(extra_args={"n": n})
        done: list[float] = []

        async def waiter() -> None:
            result = await env.service.wait(approval.id, 10)  # noqa: B023
            assert result.status == Status.APPROVED
            done.append(time.perf_counter())  # noqa: B023

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.02)
            start = time.perf_counter()
            response = await env.client.post(
                f"/admin/v1/approvals/{approval.id}/approve", headers=env.auth("bob")
            )
            assert response.status_code == 200
        latencies.append(done[0] - start)
    print(
        f"\napprove API → wait() returns: median {statistics.median(latencies) * 1000:.2f} ms, "
        f"max {max(latencies) * 1000:.2f} ms"
    )
    assert statistics.median(latencies) < 0.1


# -- server-sent events -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sse_created_event_latency_and_filtering(env: Env) -> None:
    async with contextlib.AsyncExitStack() as stack:
        bob = await stack.enter_async_context(
            env.client.stream("GET", "/admin/v1/events", headers=env.auth("bob"))
        )
        dave = await stack.enter_async_context(
            env.client.stream("GET", "/admin/v1/events", headers=env.auth("dave"))
        )
        assert bob.status_code == 200
        assert bob.headers["content-type"].startswith("text/event-stream")
        bob_events, dave_events = read_sse(bob), read_sse(dave)
        with anyio.fail_after(5):
            assert await anext(bob_events) == ("ready", {"subject": "bob"})
            assert await anext(dave_events) == ("ready", {"subject": "dave"})

        latencies = []
        for n in range(5):
            start = time.perf_counter()
            approval = await env.hold(extra_args={"n": n})
            data = await next_sse(bob_events)
            latencies.append(time.perf_counter() - start)
            assert data["event"] == "created" and data["approval"]["id"] == approval.id
            assert data["approval"]["sql"] == DELETE

        # A decision reaches the stream too.
        await env.client.post(
            f"/admin/v1/approvals/{approval.id}/approve", headers=env.auth("carol")
        )
        data = await next_sse(bob_events)
        assert data["event"] == "decided" and data["approval"]["status"] == "approved"

        # dave may see none of those; his first event is about his own request.
        own = await env.hold(Principal("dave", frozenset({"developers"})), extra_args={"d": 1})
        assert (await next_sse(dave_events))["approval"]["id"] == own.id

        # Keep-alive comments arrive while nothing happens (ping_interval = 0.5 s here).
        assert (await next_sse(bob_events, "comment")).startswith("ping")

    print(
        f"\nSSE created-event latency: median {statistics.median(latencies) * 1000:.2f} ms, "
        f"max {max(latencies) * 1000:.2f} ms"
    )
    assert max(latencies) < 1.0


# -- webhook ------------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver: answers each POST with the next status in `script` (then 200)."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.calls: list[tuple[float, Any, dict[str, str]]] = []
        self.app = Starlette(routes=[Route("/hook/{secret}", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.calls.append((time.perf_counter(), await request.json(), dict(request.headers)))
        status = self.script.pop(0) if self.script else 200
        return JSONResponse({"ok": status == 200}, status_code=status)


@contextlib.asynccontextmanager
async def webhook_service(tmp_path: Path, script: list[int]) -> AsyncIterator[Any]:
    receiver = Receiver(script)
    async with Server(receiver.app) as server:
        webhook = WebhookSender(f"{server.url}/hook/s3cr3t-path", backoff=0.05, timeout=2)
        service = ApprovalService(SqliteApprovalStore(tmp_path / "a.db"), webhook=webhook)
        await service.start()
        try:
            yield service, receiver, webhook
        finally:
            await service.aclose()


async def _hold(service: ApprovalService, **kw: Any) -> ApprovalRequest:
    return await service.request(
        principal=ALICE,
        tool="execute_sql",
        target="builtin/main",
        arguments={"sql": DELETE, "password": "hunter2", **kw},
        sql=DELETE,
        policy_version="v1",
        reasons=["writes need a DBA"],
        approvers=["dba"],
        quorum=1,
        ttl_seconds=60,
    )


@pytest.mark.anyio
async def test_webhook_retries_after_a_failure(tmp_path: Path) -> None:
    async with webhook_service(tmp_path, [500]) as (service, receiver, webhook):
        start = time.perf_counter()
        approval = await _hold(service)
        assert time.perf_counter() - start < 0.1  # the call never waits for the webhook
        with anyio.fail_after(5):
            while webhook.delivered < 1:
                await anyio.sleep(0.01)
        assert len(receiver.calls) == 2  # one failure, then success
        (t1, first, _), (t2, second, headers) = receiver.calls
        assert t2 - t1 >= 0.04  # backed off
        assert first == second
        assert second["event"] == "created" and second["approval"]["id"] == approval.id
        assert second["approval"]["status"] == "pending"
        assert headers["content-type"] == "application/json"
        text = json.dumps(second)
        assert "hunter2" not in text and "password" not in text  # arguments are not sent
        assert "authorization" not in {h.lower() for h in headers}

        await service.decide(approval.id, Principal("bob", frozenset({"dba"})), True, "ok")
        with anyio.fail_after(5):
            while webhook.delivered < 2:
                await anyio.sleep(0.01)
        assert receiver.calls[-1][1]["event"] == "decided"
        assert receiver.calls[-1][1]["approval"]["status"] == "approved"
        assert webhook.dropped == 0


@pytest.mark.anyio
async def test_a_failing_webhook_is_dropped_after_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with webhook_service(tmp_path, [503, 503, 503, 400]) as (service, receiver, webhook):
        await _hold(service)  # 503 ×3 → dropped
        await _hold(service, n=2)  # 400 → not retried, dropped
        with anyio.fail_after(5):
            while webhook.dropped < 2:
                await anyio.sleep(0.01)
        assert len(receiver.calls) == 4 and webhook.delivered == 0
    logged = caplog.text
    assert "dropped the created event" in logged
    assert "s3cr3t-path" not in logged  # the URL is redacted in logs


def test_webhook_url_must_be_http() -> None:
    for url in ("file:///etc/passwd", "ftp://x/", "http://", "hook"):
        with pytest.raises(ValueError, match="http"):
            WebhookSender(url)
