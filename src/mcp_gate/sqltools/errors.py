"""Errors of the built-in SQL layer.

Every message here is safe to show to the agent and to log: no DSN, no password. Connection
failures name the connection, `user@host:port/database`, and the cause with any secret scrubbed.
"""

from __future__ import annotations


class SqlToolError(Exception):
    """Base class of the SQL layer's errors. `str(exc)` is the full, safe message."""


class DatabaseUnavailable(SqlToolError):
    """The database could not be reached (or refused our login). `retriable` is False for
    authentication failures, a missing database and invalid DSNs."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retriable = retriable

    def __repr__(self) -> str:
        return f"DatabaseUnavailable({self.message!r})"


class QueryError(SqlToolError):
    """PostgreSQL (or the client library) refused or aborted a statement.

    `message` is PostgreSQL's primary message; `detail`/`hint` its DETAIL and HINT lines;
    `sqlstate` the five-character SQLSTATE (None for client-side errors); `position` the
    1-based character offset into the statement when PostgreSQL reported one.
    """

    def __init__(
        self,
        message: str,
        sqlstate: str | None = None,
        *,
        detail: str | None = None,
        hint: str | None = None,
        position: int | None = None,
    ) -> None:
        self.message = message
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint
        self.position = position
        super().__init__(self.full_message)

    @property
    def full_message(self) -> str:
        lines = [self.message]
        if self.detail:
            lines.append(f"DETAIL: {self.detail}")
        if self.hint:
            lines.append(f"HINT: {self.hint}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, sqlstate={self.sqlstate!r})"


class FieldCountMismatch(QueryError):
    """The statement's result has a different number of columns than the gateway's analysis
    found (schema drift, or an analysis bug): refused before any row is fetched."""

    def __init__(self, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"the statement returns {actual} column(s) but the analysis expected {expected}; "
            "refusing to run it (the gateway's catalog may be out of date)",
            None,
        )


class TableNotFound(QueryError):
    """`describe_table` was given a name that does not resolve to a table-like relation the
    gateway's role can read."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"table {name!r} does not exist or is not visible to the gateway's database role",
            "42P01",
        )
