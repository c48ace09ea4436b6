"""Who is calling and what they call: the plain values every layer passes around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a human or a service identity, with its groups."""

    subject: str
    groups: frozenset[str] = frozenset()
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One `tools/call` as the policy sees it.

    `upstream` is the server that would run it (`"builtin"` for the gateway's own SQL tools),
    `connection` the database connection for SQL-bearing tools.
    """

    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)
    upstream: str = "builtin"
    connection: str | None = None
