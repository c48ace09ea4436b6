"""The TUI's side of the admin API (approvals/api.py): list, decide, and the SSE event stream.

Everything is async on httpx, so the Textual event loop never blocks on the network. Errors
come back as values (`Refused`) or as `httpx.HTTPError`, never as a crash of the app.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from mcp_gate.approvals.model import ApprovalRequest

#: Pending requests listed at most (the queue); settled ones are listed for context only.
PENDING_LIMIT = 1000
RECENT_LIMIT = 200
#: The gateway pings every 15 s by default: a stream silent for this long is dead.
STREAM_READ_TIMEOUT = 45.0


class Refused(Exception):
    """The admin API answered with an error: `status` (401, 403, 404, 409, …) and its
    message (safe to show: the API never puts secrets in it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One server-sent event: its `event` name and its JSON `data` (None if not JSON)."""

    event: str
    data: Any


def _refusal(response: httpx.Response) -> Refused:
    try:
        body = response.json()
        message = str(body.get("message") or body.get("error") or response.reason_phrase)
    except (ValueError, AttributeError):
        message = response.reason_phrase or "error"
    return Refused(response.status_code, message)


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[ServerEvent]:
    """Server-sent events from a stream of lines (the WHATWG rules that matter here: `event:`
    and `data:` fields, comment lines starting with `:`, an empty line ends an event)."""
    event, data = "message", []
    async for line in lines:
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    value: Any = json.loads(text)
                except ValueError:
                    value = None
                yield ServerEvent(event, value)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value_text = line.partition(":")
        value_text = value_text.removeprefix(" ")
        if name == "event":
            event = value_text
        elif name == "data":
            data.append(value_text)


class AdminClient:
    """The approver's calls to one gateway's admin API with one bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=f"{self.base_url}/admin/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _get(self, path: str, **params: Any) -> Any:
        response = await self._http.get(path, params=params)
        if response.status_code != 200:
            raise _refusal(response)
        return response.json()

    async def list(self) -> list[ApprovalRequest]:
        """Every pending request the caller may see, plus the most recent settled ones."""
        pending = await self._get("/approvals", status="pending", limit=PENDING_LIMIT)
        recent = await self._get("/approvals", limit=RECENT_LIMIT)
        found: dict[str, ApprovalRequest] = {}
        for item in [*pending["approvals"], *recent["approvals"]]:
            approval = ApprovalRequest.from_json(item)
            found.setdefault(approval.id, approval)
        return list(found.values())

    async def decide(
        self, approval_id: str, approve: bool, reason: str | None = None
    ) -> ApprovalRequest:
        """Approve or deny; the request after the vote, or `Refused` (403, 404, 409, …)."""
        verb = "approve" if approve else "deny"
        body = {"reason": reason} if reason else {}
        response = await self._http.post(f"/approvals/{approval_id}/{verb}", json=body)
        if response.status_code != 200:
            raise _refusal(response)
        return ApprovalRequest.from_json(response.json())

    async def events(self) -> AsyncIterator[ServerEvent]:
        """The SSE stream of `GET /admin/v1/events` until it ends (`lagged`, the gateway
        going away) or a read times out; `Refused` if the API refuses the subscription."""
        timeout = httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT)
        async with self._http.stream("GET", "/events", timeout=timeout) as response:
            if response.status_code != 200:
                await response.aread()
                raise _refusal(response)
            async for event in parse_sse(response.aiter_lines()):
                yield event
