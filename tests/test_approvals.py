"""The approval service and its stores: state machine, concurrency, expiry, restart, waiting
and events. Every store test runs against both stores: a real SQLite file in tmp_path, and a
real PostgreSQL (a fresh schema per test in this module's database); real time (short TTLs).
PostgreSQL only: the cross-process change feed (LISTEN/NOTIFY) and its reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from mcp_gate.approvals import (
    ApprovalDecision,
    ApprovalEvent,
    ApprovalRequest,
    ApprovalService,
    Conflict,
    Forbidden,
    NotFound,
    PostgresApprovalStore,
    SqliteApprovalStore,
    Status,
    StoreError,
    arguments_digest,
)
from mcp_gate.approvals.model import new_approval_id
from mcp_gate.approvals.notify import Notifier
from mcp_gate.approvals.store import ApprovalStore, DecideOutcome
from mcp_gate.calls import Principal
from pgserver import TestDatabase, admin_execute, quote_ident, quote_literal, unique_name

ALICE = Principal("alice", frozenset({"developers"}))  # a requester
ERIN = Principal("erin", frozenset({"dba"}))  # a requester who is also an approver
BOB = Principal("bob", frozenset({"dba"}))
CAROL = Principal("carol", frozenset({"dba", "ops"}))
DAVE = Principal("dave", frozenset({"developers"}))  # not an approver

DELETE = "DELETE FROM orders WHERE id = 1"


Stores = Callable[[], ApprovalStore]


def pg_schema_dsn(db: TestDatabase) -> str:
    """The DSN of a fresh schema in `db` (asyncpg sends `search_path` as a server setting)."""
    schema = unique_name("approvals")
    admin_execute(db.dsn, f"CREATE SCHEMA {quote_ident(schema)}")
    return db.dsn + ("&" if "?" in db.dsn else "?") + f"search_path={schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    """New instances of one fresh store (the same SQLite file, the same PostgreSQL schema):
    each instance has its own connections, as another gateway process would."""
    if request.param == "sqlite":
        path = tmp_path / "approvals.db"
        return lambda: SqliteApprovalStore(path)
    dsn = pg_schema_dsn(request.getfixturevalue("module_db"))
    return lambda: PostgresApprovalStore(dsn)


@pytest.fixture
def pg_stores(module_db: TestDatabase) -> Stores:
    dsn = pg_schema_dsn(module_db)
    # Two pooled connections from the start: the outage tests refuse new connections for a
    # while, and a background read must not need to open one then.
    return lambda: PostgresApprovalStore(dsn, min_size=2)


@contextlib.asynccontextmanager
async def open_service(stores: Stores, **kwargs: Any) -> AsyncIterator[ApprovalService]:
    service = ApprovalService(stores(), **kwargs)
    await service.start()
    try:
        yield service
    finally:
        await service.aclose()


@pytest.fixture
async def service(stores: Stores) -> AsyncIterator[ApprovalService]:
    async with open_service(stores) as svc:
        yield svc


async def hold(
    service: ApprovalService,
    principal: Principal = ALICE,
    arguments: dict[str, Any] | None = None,
    **overrides: Any,
) -> ApprovalRequest:
    arguments = {"sql": DELETE} if arguments is None else arguments
    params: dict[str, Any] = {
        "principal": principal,
        "tool": "execute_sql",
        "target": "builtin/main",
        "arguments": arguments,
        "sql": arguments.get("sql"),
        "policy_version": "v1",
        "reasons": ["writes need a DBA", "write"],
        "approvers": ["dba"],
        "quorum": 1,
        "ttl_seconds": 60,
    }
    params.update(overrides)
    return await service.request(**params)


async def next_event(events: Any, kind: str, timeout: float = 5.0) -> ApprovalEvent:
    with anyio.fail_after(timeout):
        async for event in events:
            if event.kind == kind:
                return event
    raise AssertionError(f"the event stream ended before a {kind} event")


# -- model --------------------------------------------------------------------------------------


def test_arguments_digest_is_canonical() -> None:
    a = arguments_digest("execute_sql", {"sql": DELETE, "params": [1, "x"], "opts": {"b": 1}})
    b = arguments_digest("execute_sql", {"opts": {"b": 1}, "params": [1, "x"], "sql": DELETE})
    assert a == b and a.startswith("sha256:") and len(a) == 7 + 64
    assert arguments_digest("execute_sql", {"sql": DELETE + " "}) != arguments_digest(
        "execute_sql", {"sql": DELETE}
    )
    assert arguments_digest("query", {"sql": DELETE}) != arguments_digest(
        "execute_sql", {"sql": DELETE}
    )
    assert arguments_digest("t", {"n": 1}) != arguments_digest("t", {"n": "1"})
    assert arguments_digest("t", None) == arguments_digest("t", {})
    with pytest.raises(ValueError):
        arguments_digest("t", {"n": float("nan")})


def test_ids_are_unguessable() -> None:
    ids = {new_approval_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("ap_") and len(i) == 19 for i in ids)


@pytest.mark.anyio
async def test_json_round_trip(service: ApprovalService) -> None:
    approval = await hold(service, justification="ticket OPS-1", estimated_rows=3)
    approval = await service.decide(approval.id, BOB, True, "ok")
    data = approval.to_json()
    assert {
        "id",
        "status",
        "principal",
        "tool",
        "target",
        "sql",
        "reasons",
        "approvers",
        "quorum",
        "decisions",
        "created_at",
        "expires_at",
    } <= data.keys()
    assert data["principal"] == {"subject": "alice", "groups": ["developers"]}
    assert data["decisions"][0]["approver"] == "bob"
    assert data["created_at"].endswith("Z")
    assert "arguments" not in data
    back = ApprovalRequest.from_json(data)
    assert back.id == approval.id and back.status == Status.APPROVED
    assert back.decisions[0].reason == "ok"
    assert abs(back.expires_at - approval.expires_at) < 0.001


# -- the state machine --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_approve(service: ApprovalService) -> None:
    approval = await hold(service)
    assert approval.status == Status.PENDING and approval.id.startswith("ap_")
    assert approval.arguments_digest == arguments_digest("execute_sql", {"sql": DELETE})
    assert approval.approvers == ("dba",) and approval.reasons == ("writes need a DBA", "write")

    before = time.time()
    decided = await service.decide(approval.id, BOB, True, "looks fine")
    assert decided.status == Status.APPROVED
    assert decided.decided_at is not None and decided.decided_at >= before
    [vote] = decided.decisions
    assert (vote.approver, vote.decision, vote.reason) == ("bob", "approve", "looks fine")
    assert vote.approver_groups == frozenset({"dba"}) and vote.at >= before
    assert (await service.get(approval.id)) == decided


@pytest.mark.anyio
async def test_deny_with_reason(service: ApprovalService) -> None:
    approval = await hold(service, quorum=2)
    denied = await service.decide(approval.id, CAROL, False, "  not during business hours ")
    assert denied.status == Status.DENIED
    assert denied.denial is not None
    assert (denied.denial.approver, denied.denial.reason) == ("carol", "not during business hours")
    with pytest.raises(Conflict, match="already denied by carol"):
        await service.decide(approval.id, BOB, True, None)


@pytest.mark.anyio
async def test_quorum_counts_distinct_approvers(service: ApprovalService) -> None:
    approval = await hold(service, quorum=2)
    first = await service.decide(approval.id, BOB, True, None)
    assert first.status == Status.PENDING and first.approved_by == ("bob",)
    again = await service.decide(approval.id, BOB, True, "me again")
    assert again.status == Status.PENDING
    assert len(again.decisions) == 1  # the second approval by bob counts once, is not recorded
    done = await service.decide(approval.id, CAROL, True, None)
    assert done.status == Status.APPROVED and done.approved_by == ("bob", "carol")


@pytest.mark.anyio
async def test_an_approver_may_still_deny_after_approving(service: ApprovalService) -> None:
    approval = await hold(service, quorum=2)
    await service.decide(approval.id, BOB, True, None)
    denied = await service.decide(approval.id, BOB, False, "changed my mind")
    assert denied.status == Status.DENIED
    assert [(d.approver, d.decision) for d in denied.decisions] == [
        ("bob", "approve"),
        ("bob", "deny"),
    ]


@pytest.mark.anyio
async def test_nobody_decides_their_own_request(service: ApprovalService) -> None:
    approval = await hold(service, ERIN)  # erin is in dba, the approver group
    with pytest.raises(Forbidden, match="own request"):
        await service.decide(approval.id, ERIN, True, None)
    with pytest.raises(Forbidden, match="own request"):
        await service.decide(approval.id, ERIN, False, "no")
    assert (await service.get(approval.id)).decisions == ()


@pytest.mark.anyio
async def test_only_approver_groups_decide(service: ApprovalService) -> None:
    approval = await hold(service, approvers=["dba", "security"])
    with pytest.raises(Forbidden, match=r"approver groups \(dba, security\)"):
        await service.decide(approval.id, DAVE, True, None)
    assert (await service.decide(approval.id, CAROL, True, None)).status == Status.APPROVED


@pytest.mark.anyio
async def test_unknown_and_settled(service: ApprovalService) -> None:
    with pytest.raises(NotFound):
        await service.decide("ap_doesnotexist0000", BOB, True, None)
    with pytest.raises(NotFound):
        await service.get("ap_doesnotexist0000")
    with pytest.raises(NotFound):
        await service.wait("ap_doesnotexist0000", 0.1)
    assert await service.mark_executed("ap_doesnotexist0000") is False
    approval = await hold(service)
    await service.decide(approval.id, BOB, True, None)
    with pytest.raises(Conflict, match="already approved"):
        await service.decide(approval.id, CAROL, False, "too late")


@pytest.mark.anyio
async def test_request_validation(service: ApprovalService) -> None:
    with pytest.raises(ValueError, match="approver group"):
        await hold(service, approvers=[" ", ""])
    with pytest.raises(ValueError, match="quorum"):
        await hold(service, quorum=0)
    with pytest.raises(ValueError, match="ttl"):
        await hold(service, ttl_seconds=0)
    with pytest.raises(ValueError, match="reason"):
        await service.decide((await hold(service)).id, BOB, True, "x" * 5000)


@pytest.mark.anyio
async def test_withdraw(service: ApprovalService) -> None:
    approval = await hold(service)
    with pytest.raises(Forbidden, match="requester"):
        await service.withdraw(approval.id, BOB)
    withdrawn = await service.withdraw(approval.id, ALICE)
    assert withdrawn.status == Status.WITHDRAWN and withdrawn.decided_at is not None
    assert (await service.withdraw(approval.id, ALICE)).status == Status.WITHDRAWN  # idempotent
    with pytest.raises(Conflict, match="withdrawn"):
        await service.decide(approval.id, BOB, True, None)
    approved = await hold(service, arguments={"sql": "DELETE FROM t"})
    await service.decide(approved.id, BOB, True, None)
    with pytest.raises(Conflict, match="approved"):
        await service.withdraw(approved.id, ALICE)


@pytest.mark.anyio
async def test_justification(service: ApprovalService) -> None:
    approval = await hold(service)
    async with service.subscribe() as events:
        updated = await service.set_justification(approval.id, ALICE, "  cleanup, ticket 42 ")
        assert updated.justification == "cleanup, ticket 42"
        assert (await next_event(events, "updated")).approval.justification == updated.justification
    with pytest.raises(Forbidden):
        await service.set_justification(approval.id, BOB, "not mine")
    await service.decide(approval.id, BOB, True, None)
    with pytest.raises(Conflict):
        await service.set_justification(approval.id, ALICE, "too late")


# -- idempotency --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_identical_request_is_not_duplicated(service: ApprovalService) -> None:
    args = {"sql": DELETE, "params": [1, 2]}
    first = await hold(service, arguments=args)
    same = await hold(service, arguments={"params": [1, 2], "sql": DELETE})
    assert same.id == first.id

    assert (await hold(service, arguments={"sql": DELETE, "params": [1, 3]})).id != first.id
    assert (await hold(service, DAVE, arguments=args)).id != first.id
    assert (await hold(service, arguments=args, policy_version="v2")).id != first.id
    assert (await hold(service, arguments=args, target="builtin/other")).id != first.id

    # Approved but not executed: the identical call gets the approved request (runs once).
    await service.decide(first.id, BOB, True, None)
    again = await hold(service, arguments=args)
    assert again.id == first.id and again.status == Status.APPROVED
    assert await service.mark_executed(first.id)
    # Executed: the next identical call is a new request.
    fresh = await hold(service, arguments=args)
    assert fresh.id != first.id and fresh.status == Status.PENDING
    # Denied: likewise.
    await service.decide(fresh.id, BOB, False, "no")
    assert (await hold(service, arguments=args)).id not in (first.id, fresh.id)


@pytest.mark.anyio
async def test_identical_requests_racing_create_one(service: ApprovalService) -> None:
    ids: list[str] = []

    async def one() -> None:
        ids.append((await hold(service)).id)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert len(set(ids)) == 1


# -- concurrency --------------------------------------------------------------------------------


async def _race(services: list[ApprovalService], rounds: int) -> None:
    """Approve and deny at the same time: one of them wins, the other is a conflict, and the
    status is the winner's."""
    for n in range(rounds):
        approval = await hold(services[0], arguments={"sql": DELETE, "n": n})
        results: dict[str, Any] = {}

        async def vote(
            results: dict[str, Any], name: str, svc: ApprovalService, who: Principal
        ) -> None:
            try:
                results[name] = await svc.decide(approval.id, who, name == "approve", name)  # noqa: B023
            except Conflict as exc:
                results[name] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(vote, results, "approve", services[0], BOB)
            tg.start_soon(vote, results, "deny", services[-1], CAROL)
        winners = [k for k, v in results.items() if isinstance(v, ApprovalRequest)]
        losers = [k for k, v in results.items() if isinstance(v, Conflict)]
        assert len(winners) == 1 and len(losers) == 1, results
        final = await services[0].get(approval.id)
        assert final.status == (Status.APPROVED if winners == ["approve"] else Status.DENIED)
        assert [d.reason for d in final.decisions] == winners  # the loser left no record


@pytest.mark.anyio
async def test_racing_approvers_one_service(service: ApprovalService) -> None:
    await _race([service], rounds=40)


@pytest.mark.anyio
async def test_racing_approvers_two_processes_worth_of_connections(stores: Stores) -> None:
    # Two services on the same store = two connections (pools), as two gateway processes
    # would have: BEGIN IMMEDIATE (SQLite) or the row lock (PostgreSQL) makes the first
    # decision win.
    async with open_service(stores) as one, open_service(stores) as two:
        await _race([one, two], rounds=40)


@pytest.mark.anyio
async def test_store_decide_is_atomic_across_connections(stores: Stores) -> None:
    # The store alone, without the service's pre-check: two connections, truly concurrent
    # transactions.
    async with open_service(stores) as svc:
        one, two = stores(), stores()
        await one.open()
        await two.open()
        try:
            for n in range(40):
                approval = await hold(svc, arguments={"sql": DELETE, "n": n})
                outcomes: dict[str, DecideOutcome] = {}

                async def vote(store: ApprovalStore, who: Principal, kind: str) -> None:
                    vote = ApprovalDecision(who.subject, who.groups, kind, kind, time.time())
                    result = await store.decide(approval.id, vote)  # noqa: B023
                    outcomes[kind] = result.outcome  # noqa: B023

                async with anyio.create_task_group() as tg:
                    tg.start_soon(vote, one, BOB, "approve")
                    tg.start_soon(vote, two, CAROL, "deny")
                assert sorted(outcomes.values()) in (
                    [DecideOutcome.APPROVED, DecideOutcome.NOT_PENDING],
                    [DecideOutcome.DENIED, DecideOutcome.NOT_PENDING],
                ), outcomes
                final = await svc.store.get(approval.id)
                winner = "approve" if final.status == Status.APPROVED else "deny"
                assert outcomes[winner] != DecideOutcome.NOT_PENDING
                assert [d.decision for d in final.decisions] == [winner]
        finally:
            await one.close()
            await two.close()


@pytest.mark.anyio
async def test_mark_executed_once_under_concurrency(stores: Stores) -> None:
    async with open_service(stores) as one, open_service(stores) as two:
        approval = await hold(one)
        assert await one.mark_executed(approval.id) is False  # pending: not executable
        await one.decide(approval.id, BOB, True, None)
        outcomes: list[bool] = []

        async def execute(svc: ApprovalService) -> None:
            outcomes.append(await svc.mark_executed(approval.id))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(execute, (one, two)[i % 2])
        assert outcomes.count(True) == 1 and len(outcomes) == 20
        final = await two.get(approval.id)
        assert final.status == Status.EXECUTED and final.executed_at is not None
        assert await one.mark_executed(approval.id) is False


# -- expiry and restart -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_expires_on_time(service: ApprovalService) -> None:
    async with service.subscribe() as events:
        approval = await hold(service, ttl_seconds=0.3)
        event = await next_event(events, "expired")
        late = time.time() - approval.expires_at
    assert event.approval.id == approval.id and event.approval.status == Status.EXPIRED
    assert 0 <= late < 0.25, late
    assert event.approval.decided_at == approval.expires_at
    with pytest.raises(Conflict, match="expired"):
        await service.decide(approval.id, BOB, True, None)
    with pytest.raises(Conflict, match="expired"):
        await service.withdraw(approval.id, ALICE)


@pytest.mark.anyio
async def test_lazy_expiry_on_read(stores: Stores) -> None:
    # A clock the test moves: the background task sleeps on real time and is not woken,
    # so only the read path can expire the request.
    now = [1_000_000.0]
    async with open_service(stores, clock=lambda: now[0], max_sleep=600) as svc:
        approval = await hold(svc, ttl_seconds=100)
        now[0] += 101
        assert (await svc.get(approval.id)).status == Status.EXPIRED
        other = await hold(svc, arguments={"sql": "DELETE FROM t"}, ttl_seconds=100)
        now[0] += 101
        assert [a.status for a in await svc.list(status="pending")] == []
        assert (await svc.get(other.id)).status == Status.EXPIRED
        # An expired identical request does not block a new one.
        assert (await hold(svc)).id != approval.id


@pytest.mark.anyio
async def test_restart_keeps_pending_and_expires_on_time(stores: Stores) -> None:
    async with open_service(stores) as first:
        soon = await hold(first, ttl_seconds=1.0)
        later = await hold(first, arguments={"sql": "DELETE FROM t"}, ttl_seconds=60)
        gone = await hold(first, arguments={"sql": "DELETE FROM u"}, ttl_seconds=0.2)
    await anyio.sleep(0.3)  # `gone` comes due while no gateway runs
    async with open_service(stores) as second:
        async with second.subscribe() as events:
            assert (await second.store.get(gone.id)).status == Status.EXPIRED  # at start()
            pending = {a.id for a in await second.list(status="pending")}
            assert pending == {soon.id, later.id}
            event = await next_event(events, "expired")
            late = time.time() - soon.expires_at
        assert event.approval.id == soon.id
        assert 0 <= late < 0.25, late
        assert (await second.get(later.id)).status == Status.PENDING
        assert (await second.decide(later.id, BOB, True, None)).status == Status.APPROVED
    async with open_service(stores) as third:
        assert (await third.get(later.id)).status == Status.APPROVED  # durable


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE mcp_gate_schema (component TEXT PRIMARY KEY, version INT)")
        conn.execute("INSERT INTO mcp_gate_schema VALUES ('approvals', 99)")

    async def main() -> None:
        store = SqliteApprovalStore(path)
        with pytest.raises(StoreError, match="newer"):
            await store.open()

    anyio.run(main)


@pytest.mark.anyio
async def test_close_with_cancelled_calls_in_flight(tmp_path: Path) -> None:
    # Callers cancelled natively (task.cancel) while their statements run must not let
    # `close` onto the connection at the same time (that crashed the interpreter once).
    path = tmp_path / "a.db"
    async with open_service(lambda: SqliteApprovalStore(path)) as svc:
        for n in range(300):
            await hold(svc, arguments={"n": n})
    for _ in range(10):
        store = SqliteApprovalStore(path)
        await store.open()
        tasks = [asyncio.create_task(store.list(limit=1000)) for _ in range(5)]
        await asyncio.sleep(0.002)  # the first list is running in the thread
        for task in tasks:
            task.cancel()
        await store.close()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.anyio
async def test_store_is_wal_and_closed_store_refuses(tmp_path: Path) -> None:
    store = SqliteApprovalStore(tmp_path / "x" / "approvals.db")  # directory created
    await store.open()
    await store.open()  # idempotent
    assert (await store._read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])) == "wal"
    await store.close()
    await store.close()
    with pytest.raises(StoreError):
        await store.get("ap_x")


# -- waiting and events -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_wait_returns_promptly_after_the_decision(service: ApprovalService) -> None:
    latencies: list[float] = []
    for n in range(10):
        approval = await hold(service, arguments={"sql": DELETE, "n": n})
        returned: list[tuple[ApprovalRequest, float]] = []

        async def waiter() -> None:
            result = await service.wait(approval.id, 10)  # noqa: B023
            returned.append((result, time.perf_counter()))  # noqa: B023

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.02)
            assert service.notifier.waiting == 1
            start = time.perf_counter()
            await service.decide(approval.id, BOB, n % 2 == 0, "r")
        [(result, at)] = returned
        assert result.status == (Status.APPROVED if n % 2 == 0 else Status.DENIED)
        latencies.append(at - start)
    assert service.notifier.waiting == 0
    median = statistics.median(latencies)
    print(
        f"\nwait() latency after decide(): median {median * 1000:.2f} ms, "
        f"max {max(latencies) * 1000:.2f} ms"
    )
    assert max(latencies) < 0.1, latencies


@pytest.mark.anyio
async def test_wait_times_out_pending_and_wakes_at_expiry(service: ApprovalService) -> None:
    approval = await hold(service)
    start = time.perf_counter()
    result = await service.wait(approval.id, 0.2)
    elapsed = time.perf_counter() - start
    assert result.status == Status.PENDING and 0.19 <= elapsed < 0.5

    short = await hold(service, arguments={"sql": "DELETE FROM t"}, ttl_seconds=0.3)
    result = await service.wait(short.id, 5)
    assert result.status == Status.EXPIRED
    assert time.time() - short.expires_at < 0.25

    # Already settled: returns at once.
    await service.decide(approval.id, BOB, True, None)
    start = time.perf_counter()
    assert (await service.wait(approval.id, 5)).status == Status.APPROVED
    assert time.perf_counter() - start < 0.05


@pytest.mark.anyio
async def test_wait_wakes_on_an_external_id_only_notification(service: ApprovalService) -> None:
    # What a cross-replica feed will do: the change is in the store, the local notifier
    # only hears the id.
    approval = await hold(service)
    returned: list[ApprovalRequest] = []

    async def waiter() -> None:
        returned.append(await service.wait(approval.id, 10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.02)
        quiet = ApprovalService(service.store, notifier=Notifier())  # "another replica"
        await quiet.decide(approval.id, BOB, True, None)
        await anyio.sleep(0.05)
        assert returned == []  # nobody told us yet
        service.notifier.wake(approval.id)
    assert returned[0].status == Status.APPROVED


@pytest.mark.anyio
async def test_many_waiters_and_partial_decisions(service: ApprovalService) -> None:
    approval = await hold(service, quorum=2)
    returned: list[ApprovalRequest] = []

    async def waiter() -> None:
        returned.append(await service.wait(approval.id, 10))

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(waiter)
        await anyio.sleep(0.05)
        assert service.notifier.waiting == 100
        await service.decide(approval.id, BOB, True, None)  # quorum not reached: keep waiting
        await anyio.sleep(0.05)
        assert returned == []
        await service.decide(approval.id, CAROL, True, None)
    assert len(returned) == 100 and {r.status for r in returned} == {Status.APPROVED}


@pytest.mark.anyio
async def test_events_in_order(service: ApprovalService) -> None:
    async with service.subscribe() as events:
        approval = await hold(service, quorum=2)
        await hold(service)  # identical: no second `created`
        await service.decide(approval.id, BOB, True, None)
        await service.decide(approval.id, CAROL, True, None)
        await service.mark_executed(approval.id)
        other = await hold(service, arguments={"sql": "DELETE FROM t"})
        await service.withdraw(other.id, ALICE)
        seen = []
        with anyio.fail_after(2):
            async for event in events:
                seen.append((event.kind, event.approval.id, event.approval.status))
                if event.kind == "withdrawn":
                    break
    assert seen == [
        ("created", approval.id, Status.PENDING),
        ("decided", approval.id, Status.PENDING),
        ("decided", approval.id, Status.APPROVED),
        ("executed", approval.id, Status.EXECUTED),
        ("created", other.id, Status.PENDING),
        ("withdrawn", other.id, Status.WITHDRAWN),
    ]
    assert service.notifier.subscribers == 0


@pytest.mark.anyio
async def test_a_lagging_subscriber_is_cut_off(service: ApprovalService) -> None:
    async with service.subscribe(maxsize=2) as slow, service.subscribe() as fast:
        for n in range(5):
            await hold(service, arguments={"sql": DELETE, "n": n})
        got = [e async for e in slow]  # ends after what it had buffered
        assert len(got) == 2 and slow.lagged
        assert not fast.lagged and service.notifier.subscribers == 1


@pytest.mark.anyio
async def test_aclose_ends_subscriptions(stores: Stores) -> None:
    svc = ApprovalService(stores())
    await svc.start()
    subscription = svc.subscribe()
    await svc.aclose()
    assert [e async for e in subscription] == []


@pytest.mark.anyio
async def test_list_filters_visibility_status_order_and_limit(service: ApprovalService) -> None:
    dba = await hold(service, arguments={"sql": "DELETE FROM a"})
    sec = await hold(service, arguments={"sql": "DELETE FROM b"}, approvers=["security"])
    both = await hold(service, DAVE, arguments={"sql": "DELETE FROM c"}, approvers=["ops", "dba"])
    await service.decide(dba.id, BOB, False, "no")
    ids = [a.id for a in await service.list()]
    assert ids == [both.id, sec.id, dba.id]  # newest first
    assert [a.id for a in await service.list(limit=1)] == [both.id]
    assert [a.id for a in await service.list(status="pending,approved")] == [both.id, sec.id]
    assert [a.id for a in await service.list(status=[])] == []
    assert {a.id for a in await service.list(visible_to=BOB)} == {dba.id, both.id}
    assert {a.id for a in await service.list(visible_to=CAROL)} == {dba.id, both.id}
    assert {a.id for a in await service.list(visible_to=ALICE)} == {dba.id, sec.id}  # her own
    assert {a.id for a in await service.list(visible_to=DAVE)} == {both.id}
    nobody = Principal("eve", frozenset())
    assert await service.list(visible_to=nobody) == []
    assert [a.id for a in await service.list("denied", visible_to=BOB)] == [dba.id]


# -- approved → expired -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_approval_not_executed_by_its_expiry_expires(stores: Stores) -> None:
    now = [1_000_000.0]
    async with open_service(stores, clock=lambda: now[0], max_sleep=600) as svc:
        approval = await hold(svc, ttl_seconds=100)
        approved = await svc.decide(approval.id, BOB, True, "ok")
        assert approved.status == Status.APPROVED
        now[0] += 100  # exactly at expires_at: too late
        async with svc.subscribe() as events:
            assert await svc.mark_executed(approval.id) is False
            event = await next_event(events, "expired")
        assert event.approval.id == approval.id
        expired = await svc.get(approval.id)
        assert expired.status == Status.EXPIRED and expired.executed_at is None
        # It keeps the record of who approved it, and when.
        assert expired.decided_at == approved.decided_at and expired.approved_by == ("bob",)
        # The identical call is now a new request, not the old approval.
        again = await hold(svc, ttl_seconds=100)
        assert again.id != approval.id and again.status == Status.PENDING


@pytest.mark.anyio
async def test_the_store_refuses_to_execute_a_due_approval(stores: Stores) -> None:
    async with open_service(stores, max_sleep=600) as svc:
        approval = await hold(svc, ttl_seconds=60)
        await svc.decide(approval.id, BOB, True, None)
        # The store alone: at or after expires_at it does not execute (the service then
        # expires it); before it, it does, once.
        assert await svc.store.mark_executed(approval.id, approval.expires_at) is None
        assert (await svc.store.get(approval.id)).status == Status.APPROVED
        [moved] = await svc.store.expire_due(approval.expires_at)
        assert moved.id == approval.id and moved.status == Status.EXPIRED
        assert await svc.store.mark_executed(approval.id, approval.created_at + 1) is None
        assert await svc.store.next_expiry() is None


@pytest.mark.anyio
async def test_an_approved_request_expires_on_time(service: ApprovalService) -> None:
    async with service.subscribe() as events:
        approval = await hold(service, ttl_seconds=0.5)
        await service.decide(approval.id, BOB, True, None)
        event = await next_event(events, "expired")
        late = time.time() - approval.expires_at
    assert event.approval.id == approval.id and event.approval.status == Status.EXPIRED
    assert 0 <= late < 0.25, late
    assert await service.mark_executed(approval.id) is False
    listed = await service.list(status="approved")
    assert listed == []


@pytest.mark.anyio
async def test_identical_requests_racing_across_stores_create_one(stores: Stores) -> None:
    async with open_service(stores) as one, open_service(stores) as two:
        ids: list[str] = []

        async def create(svc: ApprovalService) -> None:
            ids.append((await hold(svc)).id)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(create, (one, two)[i % 2])
        assert len(set(ids)) == 1 and len(ids) == 20


# -- PostgreSQL: schema, errors, the change feed -----------------------------------------------


@pytest.mark.anyio
async def test_pg_newer_schema_is_refused_and_migration_is_idempotent(module_db) -> None:
    dsn = pg_schema_dsn(module_db)
    store = PostgresApprovalStore(dsn)
    await store.open()
    await store.close()
    again = PostgresApprovalStore(dsn)  # an existing schema at this version: opens as is
    await again.open()
    await again.close()
    schema = dsn.rpartition("search_path=")[2]
    admin_execute(
        module_db.dsn,
        f"UPDATE {quote_ident(schema)}.mcp_gate_schema SET version = 99 "
        "WHERE component = 'approvals'",
    )
    with pytest.raises(StoreError, match="newer"):
        await PostgresApprovalStore(dsn).open()


@pytest.mark.anyio
async def test_pg_replicas_starting_together_migrate_once(module_db) -> None:
    dsn = pg_schema_dsn(module_db)
    stores = [PostgresApprovalStore(dsn) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(store.open)
    for store in stores:
        await store.close()


@pytest.mark.anyio
async def test_pg_unreachable_store_is_a_clear_error_without_the_password() -> None:
    secret = "s3cret-store-pw"
    store = PostgresApprovalStore(
        f"postgresql://gate@127.0.0.1:{free_tcp_port()}/gate",
        password=secret,
        connect_attempts=2,
        connect_timeout=2,
    )
    with pytest.raises(StoreError) as info:
        await store.open()
    message = str(info.value)
    assert "gate@127.0.0.1:" in message and "unavailable after 2 attempt(s)" in message
    assert secret not in message and info.value.__cause__ is None


@pytest.mark.anyio
async def test_pg_wrong_password_is_not_retried_and_not_shown(module_db) -> None:
    role, secret = unique_name("approver_role"), "right-pw-123"
    admin_execute(module_db.admin_dsn, f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
    try:
        host = module_db.dsn.split("@", 1)[1]
        dsn = f"postgresql://{role}@{host}"
        with contextlib.suppress(Exception):
            await (await asyncpg.connect(dsn, password="wrong-pw-456")).close()
            pytest.skip("this PostgreSQL does not check passwords (trust authentication)")
        store = PostgresApprovalStore(dsn, password="wrong-pw-456", connect_attempts=5)
        start = time.perf_counter()
        with pytest.raises(StoreError) as info:
            await store.open()
        assert time.perf_counter() - start < 2  # refused logins are not retried
        message = str(info.value)
        assert "password authentication failed" in message, message
        assert "wrong-pw-456" not in message and secret not in message
    finally:
        admin_execute(module_db.admin_dsn, f"DROP ROLE IF EXISTS {role}")


def free_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.anyio
async def test_sqlite_has_no_change_feed(tmp_path: Path) -> None:
    assert SqliteApprovalStore(tmp_path / "a.db").changes() is None


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_pg_a_decision_in_one_process_wakes_a_waiter_in_another(pg_stores: Stores) -> None:
    async with (
        open_service(pg_stores) as a,
        open_service(pg_stores) as b,
        a.subscribe() as events_a,
    ):
        approval = await hold(a)
        assert (await next_event(events_a, "created")).approval.id == approval.id
        latencies: list[float] = []
        for n in range(5):
            held = await hold(a, arguments={"sql": DELETE, "n": n})
            returned: list[tuple[ApprovalRequest, float]] = []

            async def waiter(held: ApprovalRequest, returned: list[Any]) -> None:
                result = await a.wait(held.id, 10)
                returned.append((result, time.perf_counter()))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter, held, returned)
                await wait_for(lambda: a.notifier.waiting == 1)
                start = time.perf_counter()
                await b.decide(held.id, BOB, n % 2 == 0, "from b")
            [(result, at)] = returned
            assert result.status == (Status.APPROVED if n % 2 == 0 else Status.DENIED)
            assert result.decisions[0].reason == "from b"
            latencies.append(at - start)
        assert max(latencies) < 0.5, latencies
        print(f"\ncross-process wake-up: median {statistics.median(latencies) * 1000:.1f} ms")
        # A's subscribers (SSE) see B's decisions, with the state after them.
        event = await next_event(events_a, "decided")
        assert event.approval.decisions[0].approver == "bob"


@pytest.mark.anyio
async def test_pg_every_kind_of_change_reaches_the_other_process(pg_stores: Stores) -> None:
    async with open_service(pg_stores) as a, open_service(pg_stores) as b:
        async with a.subscribe() as events:
            approval = await hold(b, quorum=2)
            await b.set_justification(approval.id, ALICE, "ticket 9")
            await b.decide(approval.id, BOB, True, None)
            await b.decide(approval.id, CAROL, True, None)
            await b.mark_executed(approval.id)
            other = await hold(b, arguments={"sql": "DELETE FROM t"})
            await b.withdraw(other.id, ALICE)
            seen = []
            with anyio.fail_after(5):
                async for event in events:
                    seen.append((event.kind, event.approval.id))
                    if event.kind == "withdrawn":
                        break
        assert seen == [
            ("created", approval.id),
            ("updated", approval.id),
            ("decided", approval.id),
            ("decided", approval.id),
            ("executed", approval.id),
            ("created", other.id),
            ("withdrawn", other.id),
        ]


@pytest.mark.anyio
async def test_pg_expiry_by_either_process_is_seen_by_both_once(pg_stores: Stores) -> None:
    async with (
        open_service(pg_stores) as a,
        open_service(pg_stores) as b,
        a.subscribe() as events_a,
        b.subscribe() as events_b,
    ):
        approval = await hold(a, ttl_seconds=0.5)
        expired = [await next_event(e, "expired") for e in (events_a, events_b)]
        assert {e.approval.id for e in expired} == {approval.id}
        assert {e.approval.status for e in expired} == {Status.EXPIRED}
        # Exactly one expiry each: nothing else arrives.
        for events in (events_a, events_b):
            with anyio.move_on_after(0.3):
                extra = await events.__anext__()
                raise AssertionError(f"unexpected second event {extra}")


@pytest.mark.anyio
async def test_pg_feed_reconnects_and_waiters_reread_what_they_missed(
    pg_stores: Stores, module_db: TestDatabase
) -> None:
    async with open_service(pg_stores) as a, open_service(pg_stores) as b:
        approval = await hold(a)
        returned: list[ApprovalRequest] = []

        async def waiter() -> None:
            returned.append(await a.wait(approval.id, 20))

        feed = a._feed
        assert feed is not None and feed._conn is not None
        pid = feed._conn.get_server_pid()
        db = quote_ident(module_db.name)
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_for(lambda: a.notifier.waiting == 1)
            await anyio.sleep(0.2)  # past its first read of the store: blocked on its watch
            # Cut A's LISTEN connection and keep it from coming back while B decides: the
            # notification of that decision is lost for A.
            admin_execute(
                module_db.admin_dsn,
                f"ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false",
                f"SELECT pg_terminate_backend({pid})",
            )
            try:
                await wait_for(lambda: feed._conn is None or feed._conn.is_closed())
                await b.decide(approval.id, BOB, True, "while A was away")
                await anyio.sleep(0.3)
                assert returned == []
            finally:
                admin_execute(
                    module_db.admin_dsn, f"ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true"
                )
            # Reconnected, the feed tells A to re-read: the waiter returns the decision.
            with anyio.fail_after(15):
                await wait_for(lambda: bool(returned), timeout=15)
        assert returned[0].status == Status.APPROVED
        assert feed.reconnects == 1
        # And the new connection carries the next change as usual.
        async with a.subscribe() as events:
            other = await hold(b, arguments={"sql": "DELETE FROM t"})
            assert (await next_event(events, "created")).approval.id == other.id


@pytest.mark.anyio
async def test_pg_store_outage_fails_closed_and_recovers(
    pg_stores: Stores, module_db: TestDatabase
) -> None:
    async with open_service(pg_stores) as svc:
        approval = await hold(svc)
        db = quote_ident(module_db.name)
        admin_execute(
            module_db.admin_dsn,
            f"ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = {quote_literal(module_db.name)} AND pid <> pg_backend_pid()",
        )
        try:
            await anyio.sleep(0.2)  # the pool notices its connections are gone
            with pytest.raises(StoreError, match=r"the approval store \(.*\) failed"):
                await hold(svc, arguments={"sql": "DELETE FROM t"})
            with pytest.raises(StoreError):
                await svc.decide(approval.id, BOB, True, None)
        finally:
            admin_execute(module_db.admin_dsn, f"ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true")
        # Back: the pool reconnects on its own, nothing was decided meanwhile.
        assert (await svc.get(approval.id)).status == Status.PENDING
        assert (await svc.decide(approval.id, BOB, True, None)).status == Status.APPROVED
