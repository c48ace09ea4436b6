"""HTTP-facing auth helpers: the 401 challenge (RFC 6750 §3, RFC 9728 §5.1) and Protected
Resource Metadata (RFC 9728)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PRM_WELL_KNOWN = "/.well-known/oauth-protected-resource"

_ERROR_CODE = re.compile(r"[a-z_]+")
# RFC 6750 §3: error_description and scope values are limited to these characters.
_NQCHAR = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def resource_metadata_url(resource: str) -> str:
    """The RFC 9728 §3.1 metadata URL of `resource`: the well-known path is inserted between
    the host and the resource's path (`https://gw/mcp` →
    `https://gw/.well-known/oauth-protected-resource/mcp`)."""
    parts = urlsplit(resource)
    path = "" if parts.path == "/" else parts.path
    return urlunsplit((parts.scheme, parts.netloc, PRM_WELL_KNOWN + path, parts.query, ""))


def www_authenticate(
    resource_metadata_url: str,
    *,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
) -> str:
    """The `WWW-Authenticate` value of a 401/403.

    Pass `error` (`"invalid_token"`, or `"insufficient_scope"` for a 403) only when the
    request carried a token: per RFC 6750 §3.1 a request without credentials gets no error
    code. `description` is only emitted together with `error`; characters RFC 6750 does not
    allow in it (quotes, backslashes, control characters, non-ASCII) are replaced.
    """
    params = [f"resource_metadata={_quoted(resource_metadata_url)}"]
    if error is not None:
        if not _ERROR_CODE.fullmatch(error):
            raise ValueError(f"invalid OAuth error code {error!r}")
        params.append(f'error="{error}"')
        if description:
            params.append(f'error_description="{_NQCHAR.sub("?", description)}"')
    if scope:
        params.append(f'scope="{_NQCHAR.sub("?", scope)}"')
    return "Bearer " + ", ".join(params)


def protected_resource_metadata(
    resource: str,
    authorization_servers: list[str],
    scopes: list[str] | None = None,
) -> dict[str, Any]:
    """The RFC 9728 metadata document of `resource` (MCP requires at least one
    authorization server)."""
    if not authorization_servers:
        raise ValueError("at least one authorization server is required")
    document: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": list(authorization_servers),
        "bearer_methods_supported": ["header"],
    }
    if scopes is not None:
        document["scopes_supported"] = list(scopes)
    return document


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string; control characters (header injection) are dropped."""
    cleaned = "".join(ch for ch in value if ch >= " " and ch != "\x7f")
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'
