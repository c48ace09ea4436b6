"""The approval service: the state machine over a durable store, waiting, events, expiry.

States: pending → approved (quorum of distinct approvers) | denied (any one deny) | expired
(at `expires_at`) | withdrawn (by the requester); approved → executed (once), or expired when
not executed by `expires_at` (an old approval cannot be cashed in later).

Rules enforced here: only members of one of the request's approver groups decide it, and
never the requester (same subject). Rules enforced atomically by the store: the first final
decision wins, a vote counts once, nothing is decided after expiry.

Expiry is on time without anybody looking: a background task sleeps until the earliest
`expires_at` (re-armed when a request is created, and at least every `max_sleep` seconds for
requests created by another process sharing the store), and every read expires what is due
before returning it. Pending requests survive a restart because they only live in the store.

Mutations and the events they publish run shielded from cancellation: a caller that goes
away (a closed HTTP connection) cannot leave a committed decision unannounced.

Several processes on one store (replicas sharing PostgreSQL): when the store has a change
feed (`ApprovalStore.changes()`), the service follows it and publishes the other processes'
changes to its own notifier, re-read from the store, so local waiters wake and SSE clients
see them at once; a feed that reconnected makes every waiter re-read the store. The webhook
fires only in the process that made the change (once per event, not once per replica).

Background tasks are asyncio tasks: call `start()` (or `async with service`) on the loop
that will use the service, and use the service from that loop only.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self

import anyio

from mcp_gate.calls import Principal

from .model import (
    ApprovalDecision,
    ApprovalEvent,
    ApprovalRequest,
    Conflict,
    EventKind,
    Forbidden,
    NotFound,
    Status,
    arguments_digest,
    iso,
    new_approval_id,
    normalise_groups,
)
from .notify import Notifier, Subscription, WebhookSender
from .store import ApprovalStore, ChangeFeed, DecideOutcome, StoreChange

log = logging.getLogger("mcp_gate.approvals")

MAX_REASON = 2000
MAX_JUSTIFICATION = 4000


def _clean_text(text: str | None, limit: int, what: str) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if len(text) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")
    return text or None


def parse_statuses(status: str | Status | Iterable[str] | None) -> frozenset[Status] | None:
    """`None`, a status, `"pending,approved"`, or an iterable of statuses → a set; raises
    `ValueError` naming an unknown status."""
    if status is None:
        return None
    items = status.split(",") if isinstance(status, str) else list(status)
    result: set[Status] = set()
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        try:
            result.add(Status(name))
        except ValueError:
            allowed = ", ".join(s.value for s in Status)
            raise ValueError(f"unknown status {name!r} (one of: {allowed})") from None
    return frozenset(result)


class ApprovalService:
    """Approval requests: create, decide, wait, watch (module docstring)."""

    def __init__(
        self,
        store: ApprovalStore,
        *,
        notifier: Notifier | None = None,
        webhook: WebhookSender | None = None,
        clock: Callable[[], float] = time.time,
        max_sleep: float = 30.0,
    ) -> None:
        self.store = store
        self.notifier = notifier or Notifier()
        self.webhook = webhook
        self.clock = clock
        self.max_sleep = max_sleep
        self._task: asyncio.Task[None] | None = None
        self._stop: anyio.CancelScope | None = None
        self._rearm: anyio.Event | None = None
        self._feed: ChangeFeed | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and its change feed, expire what came due while stopped, start
        the background tasks."""
        if self._task is not None:
            return
        await self.store.open()
        feed = self.store.changes()
        if feed is not None:
            try:
                await feed.open()  # listening before anything is read: nothing is missed
            except BaseException:
                await self.store.close()
                raise
        self._feed = feed
        self._rearm = anyio.Event()
        if self.webhook is not None:
            await self.webhook.start()
        await self._expire_now()
        self._stop = anyio.CancelScope()  # entered by the task; cancelling it first is fine
        self._task = asyncio.get_running_loop().create_task(
            self._background(), name="mcp-gate approval expiry"
        )

    async def aclose(self) -> None:
        """Stop the background tasks, end subscriptions, close the store."""
        task, self._task = self._task, None
        if task is not None:
            # Cancelled through its anyio scope, not task.cancel(): shielded store calls
            # finish, and a store call in flight completes before the store closes.
            assert self._stop is not None
            self._stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.aclose()
        if self.webhook is not None:
            await self.webhook.aclose()
        self.notifier.close()
        await self.store.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- requester side ---------------------------------------------------------------------

    async def request(
        self,
        *,
        principal: Principal,
        tool: str,
        target: str,
        arguments: Mapping[str, Any] | None,
        sql: str | None,
        policy_version: str,
        reasons: Iterable[str],
        approvers: Iterable[str],
        quorum: int,
        ttl_seconds: float,
        justification: str | None = None,
        estimated_rows: int | None = None,
    ) -> ApprovalRequest:
        """A pending request for this call, or the identical one already open.

        Identical means same requester subject, tool, target, argument digest and policy
        version, and still pending or approved-but-not-executed; a changed argument makes a
        new request. The returned request may therefore already be approved: check `status`.
        """
        groups = normalise_groups(approvers)
        if not groups:
            raise ValueError("an approval request needs at least one approver group")
        if quorum < 1:
            raise ValueError("quorum must be at least 1")
        if not ttl_seconds > 0:
            raise ValueError("ttl_seconds must be positive")
        now = self.clock()
        approval = ApprovalRequest(
            id=new_approval_id(),
            status=Status.PENDING,
            principal=principal,
            target=target,
            tool=tool,
            arguments_digest=arguments_digest(tool, arguments),
            policy_version=policy_version,
            approvers=groups,
            quorum=int(quorum),
            created_at=now,
            expires_at=now + float(ttl_seconds),
            sql=sql,
            reasons=tuple(dict.fromkeys(reasons)),
            justification=_clean_text(justification, MAX_JUSTIFICATION, "the justification"),
            estimated_rows=estimated_rows,
        )
        with anyio.CancelScope(shield=True):
            result = await self.store.create(approval, now)
            for expired in result.expired:
                self._emit("expired", expired)
            if result.created:
                self._emit("created", result.approval)
                if self._rearm is not None:
                    self._rearm.set()
        return result.approval

    async def withdraw(self, approval_id: str, principal: Principal) -> ApprovalRequest:
        """pending → withdrawn, by the requester only. Withdrawing a withdrawn request
        returns it; any other settled state is a `Conflict`."""
        current = await self.get(approval_id)
        if not current.is_requester(principal):
            raise Forbidden("only the requester may withdraw a request")
        if current.status == Status.WITHDRAWN:
            return current
        if current.status != Status.PENDING:
            raise Conflict(_settled(current))
        with anyio.CancelScope(shield=True):
            moved = await self.store.withdraw(approval_id, principal.subject, self.clock())
            if moved is not None:
                self._emit("withdrawn", moved)
                return moved
        current = await self.get(approval_id)
        if current.status == Status.WITHDRAWN:
            return current
        raise Conflict(_settled(current))

    async def set_justification(
        self, approval_id: str, principal: Principal, text: str | None
    ) -> ApprovalRequest:
        """The requester's justification, while pending."""
        text = _clean_text(text, MAX_JUSTIFICATION, "the justification")
        current = await self.get(approval_id)
        if not current.is_requester(principal):
            raise Forbidden("only the requester may justify a request")
        if current.status != Status.PENDING:
            raise Conflict(_settled(current))
        with anyio.CancelScope(shield=True):
            updated = await self.store.set_justification(approval_id, principal.subject, text)
            if updated is not None:
                self._emit("updated", updated)
                return updated
        raise Conflict(_settled(await self.get(approval_id)))

    async def mark_executed(self, approval_id: str) -> bool:
        """approved → executed. True for exactly one caller, ever; False if the request is
        unknown, not approved, already executed, or past its expiry (then it is expired)."""
        with anyio.CancelScope(shield=True):
            executed = await self.store.mark_executed(approval_id, self.clock())
            if executed is not None:
                self._emit("executed", executed)
            else:
                await self._expire_now()  # an approval that came due is expired, and said so
        return executed is not None

    async def wait(self, approval_id: str, timeout: float) -> ApprovalRequest:
        """The request as soon as it has left `pending`, or as it is after `timeout`
        seconds. Raises `NotFound`. Woken by the notifier, never by polling; it also wakes
        at the request's expiry to return it expired."""
        deadline = anyio.current_time() + max(0.0, timeout)
        with self.notifier.watch(approval_id) as watch:
            approval = await self.get(approval_id)
            while approval.status == Status.PENDING:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    break
                until_expiry = max(0.0, approval.expires_at - self.clock()) + 0.002
                snapshot = None
                with anyio.move_on_after(min(remaining, until_expiry)):
                    snapshot = await watch.wait()
                if snapshot is not None and snapshot.status != Status.PENDING:
                    approval = snapshot  # settled states never return to pending
                else:
                    approval = await self.get(approval_id)
        return approval

    # -- approver side ----------------------------------------------------------------------

    async def get(self, approval_id: str) -> ApprovalRequest:
        """The request (expired first if it is due). Raises `NotFound`."""
        approval = await self.store.get(approval_id)
        if approval is None:
            raise NotFound(f"no approval request {approval_id}")
        if approval.status in _EXPIRING and approval.expires_at <= self.clock():
            await self._expire_now()
            approval = await self.store.get(approval_id)
            if approval is None:
                raise NotFound(f"no approval request {approval_id}")
        return approval

    async def list(
        self,
        status: str | Status | Iterable[str] | None = None,
        limit: int = 100,
        *,
        visible_to: Principal | None = None,
    ) -> builtins.list[ApprovalRequest]:
        """Newest first; `status` as in `parse_statuses`; `visible_to` keeps the requests
        the principal could decide plus their own."""
        statuses = parse_statuses(status)
        kwargs: dict[str, Any] = {"statuses": statuses, "limit": limit, "visible_to": visible_to}
        found = await self.store.list(**kwargs)
        now = self.clock()
        if any(a.status in _EXPIRING and a.expires_at <= now for a in found):
            await self._expire_now()
            found = await self.store.list(**kwargs)
        return found

    async def decide(
        self,
        approval_id: str,
        approver: Principal,
        approve: bool,
        reason: str | None = None,
    ) -> ApprovalRequest:
        """Record `approver`'s vote and return the request after it.

        Raises `NotFound`; `Forbidden` if `approver` is the requester or in none of the
        approver groups; `Conflict` if the request has left `pending` (including expiry).
        The same approver approving twice counts once (the second call changes nothing);
        an approver who approved may still deny.
        """
        reason = _clean_text(reason, MAX_REASON, "the reason")
        current = await self.get(approval_id)
        refusal = current.refusal_for(approver)
        if refusal is not None:
            raise Forbidden(refusal)
        if current.status != Status.PENDING:
            raise Conflict(_settled(current))
        vote = ApprovalDecision(
            approver=approver.subject,
            approver_groups=approver.groups,
            decision="approve" if approve else "deny",
            reason=reason,
            at=self.clock(),
        )
        with anyio.CancelScope(shield=True):
            result = await self.store.decide(approval_id, vote)
            outcome, approval = result.outcome, result.approval
            if outcome == DecideOutcome.EXPIRED and approval is not None:
                self._emit("expired", approval)
            elif outcome in (
                DecideOutcome.RECORDED,
                DecideOutcome.APPROVED,
                DecideOutcome.DENIED,
            ):
                assert approval is not None
                self._emit("decided", approval)
        if approval is None:
            raise NotFound(f"no approval request {approval_id}")
        if outcome in (DecideOutcome.NOT_PENDING, DecideOutcome.EXPIRED):
            raise Conflict(_settled(approval))
        return approval

    # -- events -----------------------------------------------------------------------------

    def subscribe(self, maxsize: int = 256) -> Subscription:
        """Every event from now on (created, decided, expired, withdrawn, executed,
        updated). Use `async with service.subscribe() as events: async for e in events`."""
        return self.notifier.subscribe(maxsize)

    def _emit(self, kind: EventKind, approval: ApprovalRequest) -> None:
        event = ApprovalEvent(kind, approval)
        self.notifier.publish(event)
        if self.webhook is not None:
            self.webhook.submit(event)

    async def _expire_now(self) -> None:
        with anyio.CancelScope(shield=True):
            for approval in await self.store.expire_due(self.clock()):
                self._emit("expired", approval)

    async def _background(self) -> None:
        assert self._stop is not None
        with self._stop:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._expire_forever)
                if self._feed is not None:
                    tg.start_soon(self._follow, self._feed)

    async def _follow(self, feed: ChangeFeed) -> None:
        """Publish other processes' changes locally (see the module docstring)."""
        async for change in feed:
            try:
                await self._publish_change(change)
            except Exception:
                # The store failed the re-read: let the waiters re-read it themselves.
                log.exception("approval feed: cannot re-read %s", change.approval_id)
                if change.approval_id is not None:
                    self.notifier.wake(change.approval_id)

    async def _publish_change(self, change: StoreChange) -> None:
        assert self._rearm is not None
        if change.approval_id is None or change.kind is None:
            self.notifier.wake_all()
            self._rearm.set()  # expiries created meanwhile elsewhere
            return
        approval = await self.store.get(change.approval_id)
        if approval is None:
            return
        self.notifier.publish(ApprovalEvent(change.kind, approval))
        if change.kind == "created":
            self._rearm.set()  # its expiry may be the next one

    async def _expire_forever(self) -> None:
        while True:
            assert self._rearm is not None
            try:
                await self._expire_now()
                due = await self.store.next_expiry()
            except Exception:
                log.exception("approval expiry: the store failed; retrying in 1 s")
                delay = 1.0
            else:
                delay = self.max_sleep
                if due is not None:
                    delay = min(delay, max(0.0, due - self.clock()) + 0.002)
            with anyio.move_on_after(delay):
                await self._rearm.wait()
            if self._rearm.is_set():
                self._rearm = anyio.Event()


#: Statuses `expire_due` moves once `expires_at` has passed.
_EXPIRING = frozenset({Status.PENDING, Status.APPROVED})


def _settled(approval: ApprovalRequest) -> str:
    """Why a settled request cannot be acted on, for a 409."""
    if approval.status == Status.EXPIRED:
        return f"approval {approval.id} expired at {iso(approval.expires_at)}"
    if approval.status == Status.DENIED and approval.denial is not None:
        return f"approval {approval.id} was already denied by {approval.denial.approver}"
    if approval.status in (Status.APPROVED, Status.EXECUTED):
        who = ", ".join(approval.approved_by) or "unknown"
        return f"approval {approval.id} was already {approval.status} (approved by {who})"
    return f"approval {approval.id} is already {approval.status}"
