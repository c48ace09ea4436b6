"""The gateway's single entry point for recording (DESIGN §2.7, §8).

Sessions:

- legacy HTTP (2025-11-25): one audit session per `Mcp-Session-Id`, started when the
  initialize result goes out (principal, transport `http`, the negotiated protocol version,
  the client's `clientInfo`) and ended when the client DELETEs it, when it has been idle
  (no request in flight) as long as the SDK's session idle timeout, or at shutdown;
- modern HTTP (2026-07-28) has no sessions: a principal's requests are grouped into one
  logical session per (subject, client_id, clientInfo name and version from the request's
  `_meta`), ended after `logical_idle` seconds without a request (30 minutes) or at shutdown.
  HTTP traffic that belongs to no legacy session (a refused initialize, an unknown session
  id) goes to the same logical session;
- stdio: one session per process run, as the `[auth.local]` principal.

Transcript events (every JSON-RPC message in and out, session start and end, approval
lifecycle) are queued without waiting; one writer task takes everything queued, redacts it
(`redact.Redactor`) and appends it to the store in one group commit. Transcript-only events
linger up to `linger` (50 ms) to share a commit; a waiting decision is committed at once.
A `decision` event goes through the same queue, in order, and its caller waits for the
commit: nothing runs before its decision is durable. When the store cannot commit, waiting
callers get the refusal text (they fail closed), transcript events are kept (up to
`backlog`) and written ahead of the next decision once the store is back, so a decision is
never committed over a hole it could have filled; what overflows the backlog is counted as
lost and noted in the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from mcp_gate.approvals import ApprovalService, arguments_digest
from mcp_gate.approvals.model import ApprovalEvent
from mcp_gate.calls import Principal, ToolCall
from mcp_gate.policy.engine import Decision

from .model import AuditEvent, Direction, EventKind
from .redact import Redactor
from .rows import canonical_json, data_json
from .store import AuditStore, AuditUnavailable

log = logging.getLogger("mcp_gate.audit")

# The ASGI scope key under which the HTTP tap leaves the audit session of a request.
AUDIT_SESSION_SCOPE_KEY = "mcp_gate.audit_session"
CLIENT_INFO_META_KEY = "io.modelcontextprotocol/clientInfo"
UNAVAILABLE = "mcp-gate: the audit store is unavailable, so nothing was run: {problem}"
_EXPECTED_MAX = 10_000
_LOST_METHOD = "mcp-gate/audit-gap"  # a note in the chain where transcript events were lost


def principal_json(principal: Principal) -> dict[str, Any]:
    """The principal as the session index reads it (`rows` module of the stores)."""
    return {
        "subject": principal.subject,
        "groups": sorted(principal.groups),
        "client_id": principal.client_id,
    }


def client_info_of(info: Any) -> dict[str, Any]:
    """`{name, version}` from a `clientInfo` object (anything else: empty)."""
    if not isinstance(info, Mapping):
        return {}
    return {k: info[k] for k in ("name", "version") if isinstance(info.get(k), str)}


@dataclass
class _Session:
    id: str
    transport: str
    key: tuple[Any, ...] | None = None  # logical (modern HTTP) sessions only
    last_seen: float = field(default_factory=time.monotonic)
    inflight: int = 0
    # Requests sent by the server (elicitation) awaiting the client's answer: id → (method,
    # monotonic time sent). Client requests are paired per HTTP request by the caller.
    pending: dict[tuple[str, str], tuple[str, str | None, float]] = field(default_factory=dict)


@dataclass
class _Queued:
    event: AuditEvent
    done: asyncio.Future[None] | None = None


def _request_id(value: Any) -> str | None:
    return None if value is None or isinstance(value, bool) else str(value)


class Pairing:
    """Request/response pairing for one channel (an HTTP request, or a stdio session):
    request id → (method, tool, monotonic time), so a response gets its method and timing."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open: dict[tuple[str, str], tuple[str, str | None, float]] = {}


class Recorder:
    """Records sessions, messages, decisions and approvals into an `AuditStore`."""

    def __init__(
        self,
        store: AuditStore,
        redactor: Redactor | None = None,
        *,
        session_idle: float | None = 30 * 60,
        logical_idle: float = 30 * 60,
        backlog: int = 50_000,
        linger: float = 0.05,
        linger_events: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.redactor = redactor or Redactor()
        self.session_idle = session_idle
        self.logical_idle = logical_idle
        self.backlog = backlog
        self.linger = linger  # how long transcript-only events wait to share a commit
        self.linger_events = linger_events  # … unless this many are queued
        self.clock = clock
        self._queue: deque[_Queued] = deque()
        self._retry: deque[_Queued] = deque()  # transcript events a failed commit kept
        self._wake: asyncio.Event | None = None
        self._urgent: asyncio.Event | None = None  # set when a caller waits for a commit
        self._waiting = 0  # queued events whose caller waits for their commit
        self._sessions: dict[str, _Session] = {}
        self._logical: dict[tuple[Any, ...], _Session] = {}
        self._mcp_sessions: dict[str, str] = {}  # Mcp-Session-Id → audit session id
        self._approvals: dict[str, str] = {}  # approval id → audit session id
        # (subject, tool, arguments digest) → session of a held call whose approval request is
        # about to be announced; bounded, as a modern retry of a held call adds one each time.
        self._expected: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._committing = False
        self._commits = 0  # commit attempts finished (for `flush`)
        self.recorded = 0  # events committed
        self.failed = 0  # commits that failed
        self.lost = 0  # transcript events dropped after the backlog overflowed
        self.problem: str | None = None  # the last commit failure, None once one succeeds

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer task (on the loop that will use the recorder)."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._urgent = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._writer(), name="mcp-gate audit writer"
            )

    async def close(self) -> None:
        """End every open session (reason `shutdown`), write what is queued, stop."""
        if self._closing:
            return
        self._closing = True
        for session in list(self._sessions.values()):
            self.end_session(session.id, "shutdown")
        if self._urgent is not None:
            self._urgent.set()  # no lingering on the way out
        if self._task is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                await self.flush()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.asynccontextmanager
    async def running(self, approvals: ApprovalService | None = None) -> AsyncIterator[Recorder]:
        """`async with recorder.running(service):` the writer, the idle sweep and the
        approval-event subscription for as long as the block runs; then `close()`."""
        await self.start()
        tasks = [asyncio.get_running_loop().create_task(self._sweep_forever())]
        if approvals is not None:
            tasks.append(asyncio.get_running_loop().create_task(self._follow(approvals)))
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.close()

    # -- sessions -------------------------------------------------------------------------

    def start_session(
        self,
        principal: Principal,
        transport: str,
        era: str | None,
        client_info: Mapping[str, Any] | None = None,
        *,
        mcp_session_id: str | None = None,
        key: tuple[Any, ...] | None = None,
        at: float | None = None,
    ) -> str:
        """Open an audit session and queue its `session_start`; its id. `at`: when the
        session began, if earlier than now (the arrival of the initialize that opened it, whose
        answer is what starts the session)."""
        sid = f"ses_{uuid.uuid4().hex}"
        session = _Session(sid, transport, key)
        self._sessions[sid] = session
        if mcp_session_id is not None:
            self._mcp_sessions[mcp_session_id] = sid
        if key is not None:
            self._logical[key] = session
        data: dict[str, Any] = {
            "principal": principal_json(principal),
            "transport": transport,
            "era": era,
            "client_info": client_info_of(client_info),
        }
        if key is not None:
            data["logical"] = True  # grouped modern requests, not a protocol session
        began = self.clock() if at is None else at
        self._enqueue(AuditEvent(sid, EventKind.SESSION_START, began, data=data))
        return sid

    def end_session(self, session_id: str, reason: str) -> None:
        """Close an audit session (`deleted`, `idle`, `shutdown`, `closed`) once."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        if session.key is not None:
            self._logical.pop(session.key, None)
        for mcp_id, sid in list(self._mcp_sessions.items()):
            if sid == session_id:
                del self._mcp_sessions[mcp_id]
        self._enqueue(
            AuditEvent(session_id, EventKind.SESSION_END, self.clock(), data={"reason": reason})
        )

    def session_for_mcp(self, mcp_session_id: str) -> str | None:
        """The audit session of a legacy `Mcp-Session-Id`, if it is open."""
        return self._mcp_sessions.get(mcp_session_id)

    def logical_session(
        self,
        principal: Principal,
        era: str | None,
        client_info: Mapping[str, Any] | None,
        at: float | None = None,
    ) -> str:
        """The open logical session of (principal, client), started (at `at`, if given) if
        there is none."""
        info = client_info_of(client_info)
        key = (
            principal.subject,
            principal.client_id,
            info.get("name"),
            info.get("version"),
        )
        session = self._logical.get(key)
        if session is not None:
            session.last_seen = time.monotonic()
            return session.id
        return self.start_session(principal, "http", era, info, key=key, at=at)

    def enter(self, session_id: str) -> None:
        """An HTTP request of the session started (it is not idle while one is in flight)."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.inflight += 1
            session.last_seen = time.monotonic()

    def leave(self, session_id: str) -> None:
        """An HTTP request of the session finished."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.inflight = max(0, session.inflight - 1)
            session.last_seen = time.monotonic()

    def sweep(self, now: float | None = None) -> int:
        """End sessions idle past their timeout; how many were ended."""
        now = time.monotonic() if now is None else now
        ended = 0
        for session in list(self._sessions.values()):
            if session.transport != "http" or session.inflight:
                continue
            limit = self.logical_idle if session.key is not None else self.session_idle
            if limit is not None and now - session.last_seen >= limit:
                self.end_session(session.id, "idle")
                ended += 1
        return ended

    async def _sweep_forever(self) -> None:
        limits = [x for x in (self.session_idle, self.logical_idle) if x is not None]
        interval = max(1.0, min([60.0, *(x / 4 for x in limits)]))
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    # -- messages -------------------------------------------------------------------------

    def message(
        self,
        session_id: str,
        direction: Direction,
        message: Any,
        pairing: Pairing | None = None,
        when: tuple[float, float] | None = None,
    ) -> None:
        """Queue one JSON-RPC message as it went over the wire (`message` is its decoded
        JSON). Requests open a pairing entry (client requests in `pairing`, the caller's
        channel; server requests in the session), responses close it with a duration.
        `when` is (`clock()`, `time.monotonic()`) of its arrival if it is recorded later."""
        at, mono = when if when is not None else (self.clock(), time.monotonic())
        method: str | None = None
        request_id: str | None = None
        tool: str | None = None
        duration: float | None = None
        if isinstance(message, dict):
            request_id = _request_id(message.get("id"))
            raw_method = message.get("method")
            if isinstance(raw_method, str):
                method = raw_method
                params = message.get("params")
                if method == "tools/call" and isinstance(params, dict):
                    name = params.get("name")
                    tool = name if isinstance(name, str) else None
                if request_id is not None:
                    table = self._table(session_id, direction, pairing, request=True)
                    if table is not None:
                        table[(str(direction), request_id)] = (method, tool, mono)
            elif request_id is not None and ("result" in message or "error" in message):
                asked_by = Direction.OUT if direction is Direction.IN else Direction.IN
                table = self._table(session_id, direction, pairing, request=False)
                opened = table.pop((str(asked_by), request_id), None) if table else None
                if opened is not None:
                    method, tool, started = opened
                    duration = round((mono - started) * 1000, 3)
        else:
            message = {"unparsed": message}
        self._enqueue(
            AuditEvent(
                session_id,
                EventKind.MESSAGE,
                at,
                direction=direction,
                method=method,
                request_id=request_id,
                tool=tool,
                duration_ms=duration,
                data={"message": message},
            )
        )

    def _table(
        self, session_id: str, direction: Direction, pairing: Pairing | None, *, request: bool
    ) -> dict[tuple[str, str], tuple[str, str | None, float]] | None:
        # Client requests (in) and their responses (out) pair on the caller's channel;
        # server requests (out) and the client's answers (in) pair on the session.
        client_side = (direction is Direction.IN) == request
        if client_side and pairing is not None:
            return pairing.open
        session = self._sessions.get(session_id)
        return None if session is None else session.pending

    # -- decisions and approvals ----------------------------------------------------------

    async def decision(
        self,
        session_id: str | None,
        principal: Principal,
        call: ToolCall,
        decision: Decision,
    ) -> str | None:
        """Record a tools/call verdict and wait until it is committed: every verdict, a
        refusal too, is durable before the client sees it. Returns the refusal text to answer
        with if it could not be committed (None when it is on record)."""
        event = self._decision_event(session_id, principal, call, decision)
        if self._task is None or self._closing:
            return UNAVAILABLE.format(problem="the recorder is not running")
        done = asyncio.get_running_loop().create_future()
        self._enqueue(event, done)
        try:
            await asyncio.shield(done)
        except AuditUnavailable as exc:
            return UNAVAILABLE.format(problem=str(exc) or "commit failed")
        return None

    def _decision_event(
        self, session_id: str | None, principal: Principal, call: ToolCall, decision: Decision
    ) -> AuditEvent:
        if session_id is None or session_id not in self._sessions:
            session_id = self.logical_session(principal, None, None)
        data: dict[str, Any] = {
            "principal": principal_json(principal),
            "tool": call.tool,
            "upstream": call.upstream,
            "connection": call.connection,
            "arguments": call.arguments,
            "decision": decision.decision,
            "reasons": decision.reasons,
            "risks": list(decision.risks),
            "policy_version": decision.policy_version,
        }
        if decision.decision == "review":
            data["approvers"] = list(decision.approvers)
            data["quorum"] = decision.quorum
            digest = arguments_digest(call.tool, call.arguments)
            self._expected[(principal.subject, call.tool, digest)] = session_id
            while len(self._expected) > _EXPECTED_MAX:
                self._expected.popitem(last=False)
        return AuditEvent(
            session_id,
            EventKind.DECISION,
            self.clock(),
            tool=call.tool,
            decision=decision.decision,
            data=data,
        )

    def approval(self, event: ApprovalEvent) -> None:
        """Record an approval lifecycle event in the session of the call it holds."""
        req = event.approval
        sid = self._approvals.get(req.id)
        if sid is None and event.kind == "created":
            sid = self._expected.pop((req.principal.subject, req.tool, req.arguments_digest), None)
            if sid is not None:
                self._approvals[req.id] = sid
        if sid is None:
            # Held by another process sharing the store, or before a restart: that process
            # records it; the approval itself is durable in the approval store.
            log.debug("approval %s %s: not a call of this process", req.id, event.kind)
            return
        status = str(req.status)
        verdict = "deny" if status in ("denied", "expired", "withdrawn") else None
        if status in ("approved", "executed"):
            verdict = "allow"
        self._enqueue(
            AuditEvent(
                sid,
                EventKind.APPROVAL,
                self.clock(),
                tool=req.tool,
                decision=verdict,
                approval_id=req.id,
                data={"event": event.kind, "approval": req.to_json()},
            )
        )
        if status in ("denied", "expired", "withdrawn", "executed"):
            self._approvals.pop(req.id, None)

    async def _follow(self, service: ApprovalService) -> None:
        while True:
            async with service.subscribe(maxsize=1024) as events:
                async for event in events:
                    try:
                        self.approval(event)
                    except Exception:  # never let one event stop the feed
                        log.exception("audit: cannot record approval event")
                if not events.lagged:
                    return  # the service closed
            log.warning("audit: approval events fell behind; resubscribing")

    # -- the writer -----------------------------------------------------------------------

    def _enqueue(self, event: AuditEvent, done: asyncio.Future[None] | None = None) -> None:
        self._queue.append(_Queued(event, done))
        if done is not None:
            self._waiting += 1
            if self._urgent is not None:
                self._urgent.set()
        if self._wake is not None:
            self._wake.set()

    async def _writer(self) -> None:
        assert self._wake is not None and self._urgent is not None
        while True:
            if not self._queue and not self._retry:
                self._wake.clear()
                await self._wake.wait()
            elif not self._queue:
                # Only kept transcript events: retry them now and then, not in a hot loop.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
            if not self._waiting and not self._closing and len(self._queue) < self.linger_events:
                # Nobody waits for these: let more gather (one fsync for many messages, and a
                # decision seldom finds the disk busy with a transcript-only commit). A
                # decision cuts the wait short.
                self._urgent.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.linger)
            await self._commit_once()

    async def _commit_once(self) -> None:
        batch = list(self._retry)
        self._retry.clear()
        batch.extend(self._queue)
        self._queue.clear()
        self._waiting = 0
        if not batch:
            return
        self._committing = True
        try:
            await self._commit(batch)
        finally:
            self._committing = False
            self._commits += 1

    async def _commit(self, batch: list[_Queued]) -> None:
        try:
            prepared = [self._prepared(q.event) for q in batch]
            await self.store.append([e for e, _ in prepared], [t for _, t in prepared])
        except AuditUnavailable as exc:
            self._failed(batch, exc)
            return
        except Exception as exc:  # a bug or a driver error: same outcome, never crash
            log.exception("audit: append failed")
            self._failed(batch, AuditUnavailable(f"append failed ({type(exc).__name__})"))
            return
        self.recorded += len(batch)
        if self.problem is not None:
            log.warning("audit: the store records again")
            self.problem = None
        for q in batch:
            if q.done is not None and not q.done.done():
                q.done.set_result(None)

    def _failed(self, batch: list[_Queued], exc: AuditUnavailable) -> None:
        self.failed += 1
        if self.problem is None:
            log.error("audit: the store cannot record: %s", exc)
        self.problem = str(exc)
        kept = 0
        for q in batch:
            if q.done is not None:
                # The waiting call fails closed and does not run: its decision is not kept.
                if not q.done.done():
                    q.done.set_exception(exc)
                continue
            self._retry.append(q)
            kept += 1
        overflow = len(self._retry) - self.backlog
        if overflow > 0:
            for _ in range(overflow):
                self._retry.popleft()
            self.lost += overflow
            log.error("audit: %d transcript events lost (backlog full)", overflow)
            head = self._retry[0].event.session_id if self._retry else "gateway"
            note = AuditEvent(
                head, EventKind.MESSAGE, self.clock(), method=_LOST_METHOD,
                data={"lost": overflow},
            )  # fmt: skip
            self._retry.appendleft(_Queued(note))

    def _prepared(self, event: AuditEvent) -> tuple[AuditEvent, str]:
        """The event as written (secrets redacted) and its data's JSON text (`data_json`):
        serialised once, and walked for secrets only when a trigger occurs in that text."""
        r = self.redactor
        try:
            text = data_json(event)
            data = event.data
        except ValueError as exc:
            # Never let one event fail the commit it shares with others' decisions (nor, kept
            # for a retry, every commit after it): record that its data could not be.
            log.error("audit: event data cannot be recorded: %s", exc)
            data = {"unrecordable": f"the event's data cannot be recorded: {exc}"}
            text = canonical_json(data)
        redacted = r.value(data, text)
        if redacted is not data:
            data, text = redacted, canonical_json(redacted)
        method, request_id, tool = (
            r.optional(event.method),
            r.optional(event.request_id),
            r.optional(event.tool),
        )
        if (
            data is event.data
            and method == event.method
            and request_id == event.request_id
            and tool == event.tool
        ):
            return event, text  # nothing redacted: no copy (`replace` is slow)
        return replace(event, method=method, request_id=request_id, tool=tool, data=data), text

    async def flush(self) -> None:
        """Wait until what is queued now has been committed, or has failed once."""
        if self._task is None:
            return
        target = self._commits + 1 if (self._queue or self._committing) else self._commits
        if self._queue and self._committing:
            target += 1  # the commit in progress does not hold what was queued meanwhile
        while self._commits < target and not self._task.done():
            await asyncio.sleep(0.005)
