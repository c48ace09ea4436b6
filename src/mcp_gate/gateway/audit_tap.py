"""Where the recorder sees the wire: an ASGI tap on `/mcp` and a tap on stdio's streams.

HTTP (`HttpAuditTap`, inside `BearerAuth`, so the caller is known): every request body the
client POSTs and every JSON-RPC message the gateway answers with (a JSON body, or each
`data:` frame of an SSE stream, including the legacy GET stream) is recorded as it crossed the
wire, in both eras. Headers are never recorded (the bearer token lives there). The audit
session of a request is left in the ASGI scope (`AUDIT_SESSION_SCOPE_KEY`) for the tool
handler, which records the call's decision in it.

stdio (`tap_stdio`): wrappers around the streams `stdio_server()` yields, so the SDK server
reads and writes through them; every message in and out is recorded in the process's session.

Recording never breaks the data path: anything the tap cannot decode is recorded as text,
and a failure inside the tap is logged and the traffic flows on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_gate.audit.model import Direction
from mcp_gate.audit.recorder import (
    AUDIT_SESSION_SCOPE_KEY,
    CLIENT_INFO_META_KEY,
    Pairing,
    Recorder,
)
from mcp_gate.calls import Principal
from mcp_gate.gateway.mcp_server import PRINCIPAL_SCOPE_KEY

log = logging.getLogger("mcp_gate.audit")

MAX_RECORDED_BODY = 8 * 1024 * 1024  # a response body beyond this is recorded as truncated text


def _decode(raw: bytes) -> Any:
    """The JSON of a body or frame; undecodable text is recorded as text."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"unparsed": raw[:65536].decode("utf-8", "replace")}


def _messages(decoded: Any) -> list[Any]:
    return decoded if isinstance(decoded, list) else [decoded]


class _Exchange:
    """One HTTP request/response of `/mcp` as the tap follows it."""

    __slots__ = (
        "body",
        "buffer",
        "deferred",
        "era",
        "initialize",
        "mcp_session",
        "method",
        "pairing",
        "principal",
        "recorder",
        "scope",
        "session",
        "sse",
        "status",
    )

    def __init__(self, recorder: Recorder, scope: Scope, principal: Principal) -> None:
        self.recorder = recorder
        self.scope = scope
        self.principal = principal
        self.method: str = scope.get("method", "")
        self.mcp_session: str | None = None
        self.era: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"mcp-session-id":
                self.mcp_session = value.decode("latin-1")
            elif name == b"mcp-protocol-version":
                self.era = value.decode("latin-1")
        self.session: str | None = None
        # A modern request's logical session depends on the clientInfo in its body.
        if not self.modern_request and self.mcp_session is not None:
            self.session = recorder.session_for_mcp(self.mcp_session)
        self.body = bytearray()
        self.buffer = bytearray()
        self.pairing = Pairing()
        # An initialize request (and when it came), until its session exists.
        self.deferred: list[tuple[Any, tuple[float, float]]] = []
        self.initialize: dict[str, Any] | None = None
        self.status = 0
        self.sse = False
        if self.session is not None:
            scope[AUDIT_SESSION_SCOPE_KEY] = self.session
            recorder.enter(self.session)

    @property
    def modern_request(self) -> bool:
        return self.era is not None and self.era not in HANDSHAKE_PROTOCOL_VERSIONS

    def _fallback_session(self, client_info: Any = None) -> str:
        # Traffic outside a legacy session: the principal's logical session.
        sid = self.recorder.logical_session(
            self.principal, self.era, client_info, self._deferred_since()
        )
        if self.session is None:
            self.session = sid
            self.scope[AUDIT_SESSION_SCOPE_KEY] = sid
            self.recorder.enter(sid)
        return sid

    # -- the request body ----------------------------------------------------------------

    def received(self, message: Message) -> None:
        if message["type"] != "http.request":
            return
        chunk = message.get("body", b"")
        if chunk:
            self.body += chunk
        if message.get("more_body", False) or not self.body:
            return
        raw = bytes(self.body)
        self.body = bytearray()
        messages = _messages(_decode(raw))
        first = messages[0] if messages else None
        if self.session is None:
            if (
                not self.modern_request
                and self.mcp_session is None
                and isinstance(first, dict)
                and first.get("method") == "initialize"
            ):
                # The session exists once the SDK answers with its Mcp-Session-Id.
                params = first.get("params")
                self.initialize = params if isinstance(params, dict) else {}
                when = (self.recorder.clock(), time.monotonic())
                self.deferred.extend((item, when) for item in messages)
                return
            info = None
            if isinstance(first, dict) and isinstance(first.get("params"), dict):
                meta = first["params"].get("_meta")
                info = meta.get(CLIENT_INFO_META_KEY) if isinstance(meta, dict) else None
            self._fallback_session(info)
        assert self.session is not None
        for item in messages:
            self.recorder.message(self.session, Direction.IN, item, self.pairing)

    # -- the response --------------------------------------------------------------------

    def sending(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message.get("status", 0))
            for name, value in message.get("headers", ()):
                if name == b"content-type":
                    self.sse = value.startswith(b"text/event-stream")
                elif name == b"mcp-session-id" and self.initialize is not None:
                    self.mcp_session = value.decode("latin-1")
            return
        if kind != "http.response.body":
            return
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if self.sse:
            if chunk:
                self.buffer += chunk
                self._frames()
            return
        if chunk and len(self.buffer) < MAX_RECORDED_BODY:
            self.buffer += chunk
        if not more and self.buffer:
            raw = bytes(self.buffer)
            self.buffer = bytearray()
            for item in _messages(_decode(raw)):
                self._out(item)

    def _frames(self) -> None:
        buffer = self.buffer
        while True:
            end = buffer.find(b"\n\n")
            crlf = buffer.find(b"\r\n\r\n")
            if crlf != -1 and (end == -1 or crlf < end):
                end, size = crlf, 4
            elif end != -1:
                size = 2
            else:
                return
            frame = bytes(buffer[:end])
            del buffer[: end + size]
            data = [
                line[5:].lstrip(b" ")
                for line in frame.replace(b"\r\n", b"\n").split(b"\n")
                if line.startswith(b"data:")
            ]
            payload = b"\n".join(data)
            if payload.strip():
                for item in _messages(_decode(payload)):
                    self._out(item)

    def _out(self, item: Any) -> None:
        if self.session is None:
            self._open_legacy_session(item)
        assert self.session is not None
        self.recorder.message(self.session, Direction.OUT, item, self.pairing)

    def _deferred_since(self) -> float | None:
        """When the first request held back for the session's start arrived (wall clock)."""
        return self.deferred[0][1][0] if self.deferred else None

    def _open_legacy_session(self, first_reply: Any) -> None:
        """The initialize answer is going out: start the session it opened (or, when it was
        refused, use the logical session), then record the request that opened it."""
        params = self.initialize or {}
        result = first_reply.get("result") if isinstance(first_reply, dict) else None
        era = result.get("protocolVersion") if isinstance(result, dict) else None
        if self.mcp_session is not None and self.status < 400 and isinstance(era, str):
            sid = self.recorder.start_session(
                self.principal,
                "http",
                era,
                params.get("clientInfo"),
                mcp_session_id=self.mcp_session,
                at=self._deferred_since(),
            )
            self.session = sid
            self.scope[AUDIT_SESSION_SCOPE_KEY] = sid
            self.recorder.enter(sid)
        else:
            self._fallback_session(params.get("clientInfo"))
        assert self.session is not None
        for item, when in self.deferred:
            self.recorder.message(self.session, Direction.IN, item, self.pairing, when)
        self.deferred.clear()

    def finished(self) -> None:
        if self.deferred:  # an initialize that got no JSON-RPC answer at all
            self._fallback_session((self.initialize or {}).get("clientInfo"))
            for item, when in self.deferred:
                self.recorder.message(self.session or "", Direction.IN, item, self.pairing, when)
            self.deferred.clear()
        if self.session is None:
            return
        self.recorder.leave(self.session)
        if self.method == "DELETE" and self.status < 400 and self.mcp_session is not None:
            self.recorder.end_session(self.session, "deleted")


class HttpAuditTap:
    """ASGI middleware recording `/mcp` traffic (module docstring). Sits inside the bearer
    authentication, which puts the caller in the scope."""

    def __init__(self, app: ASGIApp, recorder: Recorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get(PRINCIPAL_SCOPE_KEY) if scope["type"] == "http" else None
        if not isinstance(principal, Principal):
            await self.app(scope, receive, send)
            return
        try:
            exchange: _Exchange | None = _Exchange(self.recorder, scope, principal)
        except Exception:
            log.exception("audit tap: cannot follow a request")
            exchange = None
        if exchange is None:
            await self.app(scope, receive, send)
            return

        def safely(step: Callable[[Message], None], message: Message) -> None:
            try:
                step(message)
            except Exception:
                log.exception("audit tap: cannot record a message")

        async def tapped_receive() -> Message:
            message = await receive()
            safely(exchange.received, message)
            return message

        async def tapped_send(message: Message) -> None:
            safely(exchange.sending, message)
            await send(message)

        try:
            await self.app(scope, tapped_receive, tapped_send)
        finally:
            try:
                exchange.finished()
            except Exception:
                log.exception("audit tap: cannot close a request")


# -- stdio ---------------------------------------------------------------------------------

PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"


def _wire(message: SessionMessage) -> Any:
    return message.message.model_dump(mode="json", by_alias=True, exclude_unset=True)


class StdioTap:
    """The one session of a stdio run: wraps `stdio_server()`'s streams (`wrap`) and starts
    the session at the client's first message (its era and clientInfo: from `initialize`
    and its answer in 2025-11-25, from `_meta` in 2026-07-28)."""

    def __init__(self, recorder: Recorder, principal: Principal) -> None:
        self.recorder = recorder
        self.principal = principal
        self.session: str | None = None
        self._pairing = Pairing()
        self._initialize: list[tuple[Any, tuple[float, float]]] = []

    def wrap(self, read: Any, write: Any) -> tuple[Any, Any]:
        """The streams to give `Server.run`."""
        return _TapRead(read, self), _TapWrite(write, self)

    def incoming(self, item: Any) -> None:
        if self.session is None:
            params = item.get("params") if isinstance(item, dict) else None
            params = params if isinstance(params, dict) else {}
            if isinstance(item, dict) and item.get("method") == "initialize":
                self._initialize.append((item, (self.recorder.clock(), time.monotonic())))
                return
            meta = params.get("_meta")
            meta = meta if isinstance(meta, dict) else {}
            era = meta.get(PROTOCOL_VERSION_META_KEY)
            self._start(era if isinstance(era, str) else None, meta.get(CLIENT_INFO_META_KEY))
        assert self.session is not None
        self.recorder.message(self.session, Direction.IN, item, self._pairing)

    def outgoing(self, item: Any) -> None:
        if self.session is None:
            result = item.get("result") if isinstance(item, dict) else None
            era = result.get("protocolVersion") if isinstance(result, dict) else None
            opening = self._initialize[0][0] if self._initialize else {}
            params = opening.get("params") if isinstance(opening, dict) else None
            info = params.get("clientInfo") if isinstance(params, dict) else None
            self._start(era if isinstance(era, str) else None, info)
        assert self.session is not None
        for deferred, when in self._initialize:
            self.recorder.message(self.session, Direction.IN, deferred, self._pairing, when)
        self._initialize.clear()
        self.recorder.message(self.session, Direction.OUT, item, self._pairing)

    def _start(self, era: str | None, client_info: Any) -> None:
        began = self._initialize[0][1][0] if self._initialize else None
        self.session = self.recorder.start_session(
            self.principal, "stdio", era, client_info, at=began
        )


class _TapRead:
    """The read stream `Server.run` consumes, recording each message first."""

    def __init__(self, inner: Any, tap: StdioTap) -> None:
        self._inner = inner
        self._tap = tap

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        item = await self._inner.receive()
        try:
            if isinstance(item, SessionMessage):
                self._tap.incoming(_wire(item))
            elif isinstance(item, Exception):
                self._tap.incoming({"unparsed": str(item)})
        except Exception:
            log.exception("audit tap: cannot record a stdio message")
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()

    def close(self) -> None:
        self._inner.close()

    def __aiter__(self) -> _TapRead:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _TapRead:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _TapWrite:
    """The write stream `Server.run` sends to, recording each message as it goes out."""

    def __init__(self, inner: Any, tap: StdioTap) -> None:
        self._inner = inner
        self._tap = tap

    async def send(self, item: SessionMessage) -> None:
        try:
            self._tap.outgoing(_wire(item))
        except Exception:
            log.exception("audit tap: cannot record a stdio message")
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def close(self) -> None:
        self._inner.close()

    async def __aenter__(self) -> _TapWrite:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
