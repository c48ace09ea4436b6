"""The sessions part of the admin API (DESIGN §5, §8): JSON over HTTP with bearer auth.

    GET {prefix}/sessions[?principal=&since=1h|2026-12-01&limit=100]  → {"sessions": [...]}
    GET {prefix}/sessions/{id}[?after_seq=0&limit=1000]              → the session + events

Who sees what: members of `viewer_groups` (auditors, admins) see every session; anyone
else sees only their own (`principal` is then forced to their subject, and another
principal's session answers 403). A session's events come in chain order, `limit` at a
time; `next_after_seq` is set when there are more (pass it as `after_seq`).

Errors follow the approvals API: `{"error": code, "message": text}` with 400 bad parameter,
401 no or invalid token, 403 not yours, 404 unknown id, 503 the audit store is unavailable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mcp_gate.approvals.api import ApiError, Authenticate, authenticated_endpoint
from mcp_gate.calls import Principal

from .commands import CommandError, export_doc, parse_since, session_json
from .store import AuditStore, AuditUnavailable

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_EVENTS = 1000
MAX_EVENTS = 10_000


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, "bad_request", f"{name} must be an integer from {low} to {high}")
    return value


def session_routes(
    store: AuditStore,
    authenticate: Authenticate,
    *,
    viewer_groups: Iterable[str] | Callable[[], Iterable[str]] = (),
    prefix: str = "/admin/v1",
) -> list[BaseRoute]:
    """The session routes of the admin API (module docstring), authenticated by
    `authenticate(request) -> Principal` as for `approvals.api.admin_routes`.

    `viewer_groups` may be a function, asked on every request (the groups can come from a
    policy that is reloaded while the gateway runs)."""
    groups = viewer_groups if callable(viewer_groups) else (lambda: tuple(viewer_groups))
    prefix = prefix.rstrip("/")

    def sees_all(principal: Principal) -> bool:
        return not principal.groups.isdisjoint(groups())

    def domain_error(exc: Exception) -> ApiError | None:
        if isinstance(exc, AuditUnavailable):
            return ApiError(503, "unavailable", str(exc))
        return None

    endpoint = authenticated_endpoint(authenticate, domain_error)

    async def list_sessions(request: Request, principal: Principal) -> Response:
        try:
            since = parse_since(request.query_params.get("since") or None)
        except CommandError as exc:
            raise ApiError(400, "bad_request", str(exc).replace("--since", "since")) from None
        wanted = request.query_params.get("principal") or None
        if not sees_all(principal):
            if wanted is not None and wanted != principal.subject:
                raise ApiError(403, "forbidden", "you may only list your own sessions")
            wanted = principal.subject
        limit = _int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        found = await store.sessions(principal=wanted, since=since, limit=limit)
        return JSONResponse({"sessions": [session_json(s) for s in found]})

    async def get_session(request: Request, principal: Principal) -> Response:
        session_id = request.path_params["session_id"]
        info = await store.session(session_id)
        if info is None:
            raise ApiError(404, "not_found", f"no session {session_id!r}")
        if not sees_all(principal) and info.subject != principal.subject:
            raise ApiError(403, "forbidden", "this session is not yours")
        after = _int(request, "after_seq", 0, 0, 2**62)
        limit = _int(request, "limit", DEFAULT_EVENTS, 1, MAX_EVENTS)
        events = await store.events(session_id=session_id, after_seq=after, limit=limit + 1)
        more = len(events) > limit
        events = events[:limit]
        body = session_json(info)
        # The export form: the same fields a SIEM gets from `mcp-gate audit export`.
        body["events"] = [export_doc(e) for e in events]
        body["next_after_seq"] = events[-1].seq if more else None
        return JSONResponse(body)

    return [
        Route(f"{prefix}/sessions", endpoint(list_sessions), methods=["GET"]),
        Route(f"{prefix}/sessions/{{session_id}}", endpoint(get_session), methods=["GET"]),
    ]
