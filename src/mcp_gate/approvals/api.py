"""The admin API of approvals (DESIGN §5): JSON over HTTP with bearer auth, plus SSE.

    GET  {prefix}/approvals[?status=pending[,approved…]&limit=100]  → {"approvals": [...]}
    GET  {prefix}/approvals/{id}                                    → the request
    POST {prefix}/approvals/{id}/approve   {"reason": "…"} optional  → the request after it
    POST {prefix}/approvals/{id}/deny      {"reason": "…"} required  → the request after it
    GET  {prefix}/events                                            → text/event-stream

Who sees what: a principal sees the requests they could decide (they are in one of its
approver groups) and their own requests; members of `viewer_groups` (auditors, admins) see
every request (seeing is not deciding: deciding still needs an approver group). A request
that exists but is not visible answers 403, the same as an attempt to decide it.

Errors are JSON `{"error": code, "message": text}`: 400 bad JSON or body, 401 no or invalid
token (with `WWW-Authenticate: Bearer …`), 403 not an approver / own request / not visible,
404 unknown id, 409 already settled or expired, 413 body too large.

Events: `event: ready` once subscribed (data `{"subject": …}`), then `event: approval` with
`{"event": "created"|"decided"|"expired"|"withdrawn"|"executed"|"updated", "approval": {…}}`
for each change the caller may see, and a `: ping` comment every `ping_interval` seconds. If
the caller falls too far behind, `event: lagged` and the stream ends: reconnect and re-list
(subscribe first, then list, so nothing falls between the two).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mcp_gate.auth import InvalidToken, JwtVerifier, www_authenticate
from mcp_gate.calls import Principal

from .model import ApprovalError, ApprovalRequest, Conflict, Forbidden, NotFound
from .service import MAX_REASON, ApprovalService, parse_statuses

log = logging.getLogger("mcp_gate.approvals")

Authenticate = Callable[[Request], Awaitable[Principal] | Principal]

MAX_BODY = 64 * 1024
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class ApiError(Exception):
    """An error response: `{"error": error, "message": message}` with `status`."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.error, "message": self.message},
            status_code=self.status,
            headers=self.headers,
        )


class Unauthorized(ApiError):
    """401 (or 400 for a malformed Authorization header) with a Bearer challenge."""

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        resource_metadata_url: str | None = None,
    ) -> None:
        status = 400 if error == "invalid_request" else 401
        super().__init__(
            status,
            error or "unauthorized",
            message,
            {"WWW-Authenticate": _challenge(error, message, resource_metadata_url)},
        )


def _challenge(error: str | None, description: str, metadata_url: str | None) -> str:
    if metadata_url:
        return www_authenticate(metadata_url, error=error, description=description or None)
    if error is None:
        return 'Bearer realm="mcp-gate"'
    clean = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "?" for c in description)
    return f'Bearer realm="mcp-gate", error="{error}", error_description="{clean}"'


def bearer_authenticator(
    verifier: JwtVerifier, *, resource_metadata_url: str | None = None
) -> Callable[[Request], Awaitable[Principal]]:
    """`authenticate` for `admin_routes` from a `JwtVerifier`: `Authorization: Bearer <jwt>`.

    No header, or another scheme → 401 without an error code (RFC 6750 §3.1); `Bearer` with
    nothing after it → 400 `invalid_request`; a refused token → 401 `invalid_token` with the
    verifier's (safe) reason. `resource_metadata_url` goes into the challenge if given.
    """

    async def authenticate(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer":
            raise Unauthorized(
                "this API needs Authorization: Bearer <token>",
                resource_metadata_url=resource_metadata_url,
            )
        if not token.strip():
            raise Unauthorized(
                "the bearer token is empty",
                error="invalid_request",
                resource_metadata_url=resource_metadata_url,
            )
        try:
            return await verifier.verify(token.strip())
        except InvalidToken as exc:
            raise Unauthorized(
                exc.reason, error="invalid_token", resource_metadata_url=resource_metadata_url
            ) from None

    return authenticate


Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_REASON)]


class DecisionBody(BaseModel):
    """The body of approve and deny: `{"reason": "…"}` (optional for approve)."""

    model_config = ConfigDict(extra="forbid")

    reason: Reason | None = Field(default=None)


def _error_for(exc: ApprovalError) -> ApiError:
    if isinstance(exc, NotFound):
        return ApiError(404, "not_found", exc.reason)
    if isinstance(exc, Forbidden):
        return ApiError(403, "forbidden", exc.reason)
    if isinstance(exc, Conflict):
        return ApiError(409, "conflict", exc.reason)
    return ApiError(400, "bad_request", exc.reason)


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "too_large", f"the request body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _decision_body(request: Request) -> DecisionBody:
    raw = await _read_body(request)
    data: Any = {}
    if raw.strip():
        try:
            data = json.loads(raw)
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_json", "the request body is not UTF-8") from None
        except json.JSONDecodeError as exc:
            raise ApiError(
                400,
                "invalid_json",
                f"the request body is not valid JSON: {exc.msg} "
                f"(line {exc.lineno}, column {exc.colno})",
            ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", 'the request body must be a JSON object {"reason": …}')
    try:
        return DecisionBody.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ApiError(400, "invalid_body", problems) from None


def _limit(request: Request) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise ApiError(400, "bad_request", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


Handler = Callable[[Request, Principal], Awaitable[Response]]


def authenticated_endpoint(
    authenticate: Authenticate, domain_error: Callable[[Exception], ApiError | None]
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A decorator for admin API handlers `(request, principal) -> Response`: the caller is
    authenticated first, and refusals become JSON errors (`ApiError` as is, the module's own
    exceptions through `domain_error`, Starlette's `HTTPException`, a client gone → 400)."""

    def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                principal = authenticate(request)
                if inspect.isawaitable(principal):
                    principal = await principal
                return await handler(request, principal)  # type: ignore[arg-type]
            except ApiError as exc:
                return exc.response()
            except HTTPException as exc:
                return ApiError(
                    exc.status_code, "error", str(exc.detail), dict(exc.headers or {})
                ).response()
            except ClientDisconnect:
                return Response(status_code=400)
            except Exception as exc:
                api = domain_error(exc)
                if api is None:
                    raise
                return api.response()

        run.__name__ = handler.__name__
        return run

    return endpoint


def admin_routes(
    service: ApprovalService,
    authenticate: Authenticate,
    *,
    viewer_groups: Iterable[str] = (),
    ping_interval: float = 15.0,
    prefix: str = "/admin/v1",
) -> list[BaseRoute]:
    """The approval routes of the admin API (module docstring), authenticated by
    `authenticate(request) -> Principal` (sync or async; raise `Unauthorized` / `ApiError`
    or a Starlette `HTTPException` to refuse)."""
    viewers = frozenset(viewer_groups)
    prefix = prefix.rstrip("/")

    def sees_all(principal: Principal) -> bool:
        return not viewers.isdisjoint(principal.groups)

    def visible(approval: ApprovalRequest, principal: Principal) -> bool:
        return sees_all(principal) or approval.visible_to(principal)

    def domain_error(exc: Exception) -> ApiError | None:
        return _error_for(exc) if isinstance(exc, ApprovalError) else None

    endpoint = authenticated_endpoint(authenticate, domain_error)

    async def list_approvals(request: Request, principal: Principal) -> Response:
        try:
            statuses = parse_statuses(request.query_params.get("status") or None)
        except ValueError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        approvals = await service.list(
            statuses,
            _limit(request),
            visible_to=None if sees_all(principal) else principal,
        )
        return JSONResponse({"approvals": [a.to_json() for a in approvals]})

    async def get_approval(request: Request, principal: Principal) -> Response:
        approval = await service.get(request.path_params["approval_id"])
        if not visible(approval, principal):
            raise Forbidden("you are neither the requester nor an approver of this request")
        return JSONResponse(approval.to_json())

    async def decide(request: Request, principal: Principal, approve: bool) -> Response:
        body = await _decision_body(request)
        if not approve and not body.reason:
            raise ApiError(400, "invalid_body", "a reason is required to deny a request")
        approval = await service.decide(
            request.path_params["approval_id"], principal, approve, body.reason
        )
        log.info(
            "approval %s: %s by %s → %s",
            approval.id,
            "approve" if approve else "deny",
            principal.subject,
            approval.status,
        )
        return JSONResponse(approval.to_json())

    async def approve(request: Request, principal: Principal) -> Response:
        return await decide(request, principal, True)

    async def deny(request: Request, principal: Principal) -> Response:
        return await decide(request, principal, False)

    async def events(request: Request, principal: Principal) -> Response:
        everything = sees_all(principal)

        async def stream():
            async with service.subscribe() as subscription:
                yield ServerSentEvent(_dumps({"subject": principal.subject}), event="ready")
                async for event in subscription:
                    if everything or event.approval.visible_to(principal):
                        yield ServerSentEvent(_dumps(event.to_json()), event="approval")
                if subscription.lagged:
                    yield ServerSentEvent("{}", event="lagged")

        return EventSourceResponse(stream(), ping=ping_interval, sep="\n")

    return [
        Route(f"{prefix}/approvals", endpoint(list_approvals), methods=["GET"]),
        Route(f"{prefix}/approvals/{{approval_id}}", endpoint(get_approval), methods=["GET"]),
        Route(f"{prefix}/approvals/{{approval_id}}/approve", endpoint(approve), methods=["POST"]),
        Route(f"{prefix}/approvals/{{approval_id}}/deny", endpoint(deny), methods=["POST"]),
        Route(f"{prefix}/events", endpoint(events), methods=["GET"]),
    ]
