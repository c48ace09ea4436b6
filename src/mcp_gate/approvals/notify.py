"""In-process fan-out of approval events, and the optional webhook.

`Notifier` is the one place wake-ups go through: the service publishes its own events, and a
cross-replica feed (PostgreSQL LISTEN/NOTIFY, later) calls `publish` with a fresh snapshot or
just `wake(approval_id)` / `wake_all()` when it only knows an id. Two kinds of listeners:

- watches (`watch(id)`): what `ApprovalService.wait` blocks on; one `anyio.Event` each, no
  polling. A watch that is woken without a snapshot makes its waiter re-read the store;
- subscriptions (`subscribe()`): a bounded queue of every event, for SSE. A subscriber that
  falls `maxsize` events behind is cut off (its iterator ends after what it had buffered,
  `lagged` is set); it should reconnect and re-list, which is what SSE clients do anyway.

All of it lives on one event loop: call it from that loop only.

`WebhookSender` POSTs `{"event": kind, "approval": {...}}` to a URL from a background task
with a bounded queue: `submit` never blocks and never raises; a full queue drops the event
(logged), a failing receiver is retried with exponential backoff and then dropped (logged).
The payload is the approval's public JSON: no tokens, no call arguments (only their digest).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable
from typing import Self
from urllib.parse import urlsplit

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .model import ApprovalEvent, ApprovalRequest

log = logging.getLogger("mcp_gate.approvals")


class Watch:
    """Wake-ups for one approval id (see `Notifier.watch`)."""

    __slots__ = ("_event", "approval_id", "snapshot")

    def __init__(self, approval_id: str) -> None:
        self.approval_id = approval_id
        self._event = anyio.Event()
        self.snapshot: ApprovalRequest | None = None

    def _wake(self, snapshot: ApprovalRequest | None) -> None:
        self.snapshot = snapshot
        self._event.set()

    async def wait(self) -> ApprovalRequest | None:
        """Until the next wake-up (or at once if one came since the last `wait`); returns the
        snapshot it carried, None when the waker knew only the id."""
        await self._event.wait()
        self._event = anyio.Event()
        snapshot, self.snapshot = self.snapshot, None
        return snapshot


class Subscription:
    """An async iterator of `ApprovalEvent`s; close it (or use `async with`) when done."""

    def __init__(self, notifier: Notifier, maxsize: int) -> None:
        self._notifier = notifier
        send, receive = anyio.create_memory_object_stream[ApprovalEvent](maxsize)
        self._send: MemoryObjectSendStream[ApprovalEvent] = send
        self._receive: MemoryObjectReceiveStream[ApprovalEvent] = receive
        self.lagged = False

    def _offer(self, event: ApprovalEvent) -> None:
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.lagged = True
            log.warning("an approval event subscriber fell behind; disconnecting it")
            self._end()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._end()

    def _end(self) -> None:
        self._notifier._subscriptions.discard(self)
        self._send.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ApprovalEvent:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._end()
        self._receive.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Notifier:
    """Routes approval events to waiters and subscribers (module docstring)."""

    def __init__(self) -> None:
        self._watches: dict[str, set[Watch]] = {}
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    def publish(self, event: ApprovalEvent) -> None:
        """Deliver `event`: wake the waiters of its approval, queue it for subscribers."""
        self._wake(event.approval.id, event.approval)
        for subscription in list(self._subscriptions):
            subscription._offer(event)

    def wake(self, approval_id: str) -> None:
        """Make the waiters of `approval_id` re-read the store (an id-only notification)."""
        self._wake(approval_id, None)

    def wake_all(self) -> None:
        """Make every waiter re-read the store (after a feed reconnects and may have missed
        notifications)."""
        for approval_id in list(self._watches):
            self._wake(approval_id, None)

    def _wake(self, approval_id: str, snapshot: ApprovalRequest | None) -> None:
        for watch in self._watches.get(approval_id, ()):
            watch._wake(snapshot)

    @contextlib.contextmanager
    def watch(self, approval_id: str):
        """`with notifier.watch(id) as w: … await w.wait()`: register before reading the
        state, so no wake-up between the read and the wait is lost."""
        watch = Watch(approval_id)
        self._watches.setdefault(approval_id, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(approval_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[approval_id]

    def subscribe(self, maxsize: int = 256) -> Subscription:
        """A new subscription to every event published from now on."""
        subscription = Subscription(self, maxsize)
        if self._closed:
            subscription._end()
        else:
            self._subscriptions.add(subscription)
        return subscription

    @property
    def waiting(self) -> int:
        """How many watches are registered (for tests and metrics)."""
        return sum(len(w) for w in self._watches.values())

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def close(self) -> None:
        """End every subscription (their iterators finish); wake every waiter."""
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription._end()
        self.wake_all()


# -- webhook -----------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """`scheme://host[:port]/…` for logs: webhook URLs often carry a secret in their path or
    query (Slack, Teams), and may carry credentials in their userinfo."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}/…"


_RETRY_STATUS = frozenset({408, 425, 429})


class WebhookSender:
    """Delivers approval events to `url` in the background (module docstring).

    `events` selects the event kinds sent (default: new requests and decisions). Attempt
    `n` (from 0) that fails with a network error, a timeout, a 5xx, 408, 425 or 429 is
    retried after `backoff * 2**n` seconds, up to `attempts` attempts in all; any other 4xx
    is not retried. `http` is used if given (and not closed by `aclose`).
    """

    def __init__(
        self,
        url: str,
        *,
        events: Iterable[str] = ("created", "decided"),
        attempts: int = 3,
        backoff: float = 0.5,
        timeout: float = 5.0,
        queue_size: int = 1000,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the approval webhook must be an http:// or https:// URL")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if backoff < 0 or not math.isfinite(backoff):
            raise ValueError("backoff must be a non-negative number of seconds")
        self.url = url
        self.events = frozenset(events)
        self.attempts = attempts
        self.backoff = backoff
        self._queue: asyncio.Queue[ApprovalEvent] = asyncio.Queue(maxsize=queue_size)
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": "mcp-gate-approvals"},
        )
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.dropped = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="mcp-gate approval webhook"
            )

    def submit(self, event: ApprovalEvent) -> bool:
        """Queue `event` if its kind is wanted; False if it was not queued."""
        if event.kind not in self.events:
            return False
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "approval webhook queue full: dropped the %s event of %s",
                event.kind,
                event.approval.id,
            )
            return False
        return True

    async def aclose(self, drain_timeout: float = 2.0) -> None:
        """Give queued events up to `drain_timeout` seconds, then stop."""
        if self._task is not None:
            with anyio.move_on_after(drain_timeout):
                await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._own_http:
            await self._http.aclose()

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._deliver(event)
            except Exception:  # never let one event kill the sender
                log.exception("approval webhook: unexpected error")
            finally:
                self._queue.task_done()

    async def _deliver(self, event: ApprovalEvent) -> None:
        payload = event.to_json()
        where = redact_url(self.url)
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                await anyio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = await self._http.post(self.url, json=payload)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                if response.is_success:
                    self.delivered += 1
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in _RETRY_STATUS:
                    break
            log.info(
                "approval webhook %s: attempt %d/%d for %s failed (%s)",
                where,
                attempt + 1,
                self.attempts,
                event.approval.id,
                problem,
            )
        self.dropped += 1
        log.warning(
            "approval webhook %s: dropped the %s event of %s (%s)",
            where,
            event.kind,
            event.approval.id,
            problem,
        )
