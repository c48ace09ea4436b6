"""DSN handling: redaction for display, a password-free description of the target, and the
conversion of libpq `key=value` DSNs to the URL form asyncpg accepts.

Both libpq forms are understood:
- URL: `postgresql://user:password@host:port/dbname?param=value` (also `postgres://`);
- key/value: `host=db port=5432 dbname=app user=reader password='s3 cret'`.

Nothing here ever puts a password (or a fragment of an unparseable DSN) into an exception
message.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

REDACTED = "***"
_URL_SCHEMES = ("postgresql://", "postgres://")
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
_CLIENT_ONLY_PARAMS = (
    "hostaddr",
    "connect_timeout",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "channel_binding",
    "gssencmode",
    "requirepeer",
    "load_balance_hosts",
)
_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Fallback for key/value text we could not parse: hide whatever follows a secret keyword.
_KV_SECRET_FALLBACK = re.compile(
    r"(?i)\b(password|sslpassword)\s*=\s*('(?:[^'\\]|\\.)*'?|\S*)",
)


class DsnError(ValueError):
    """The DSN could not be parsed. The message never quotes the DSN."""


def is_url(dsn: str) -> bool:
    return dsn.lstrip().lower().startswith(_URL_SCHEMES)


def parse_kv_dsn(dsn: str) -> dict[str, str]:
    """Parse a libpq `key=value` connection string (values may be single-quoted, with `\\`
    escapes). Raises `DsnError` naming only the position of a syntax error."""
    out: dict[str, str] = {}
    i, n = 0, len(dsn)
    while True:
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n:
            return out
        match = _KEYWORD.match(dsn, i)
        if match is None:
            raise DsnError(f"invalid DSN: expected a keyword at character {i + 1}")
        key = match.group(0).lower()
        i = match.end()
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n or dsn[i] != "=":
            raise DsnError(f"invalid DSN: expected '=' after {key!r}")
        i += 1
        while i < n and dsn[i].isspace():
            i += 1
        chars: list[str] = []
        if i < n and dsn[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise DsnError(f"invalid DSN: unterminated quoted value for {key!r}")
                ch = dsn[i]
                if ch == "\\" and i + 1 < n:
                    chars.append(dsn[i + 1])
                    i += 2
                elif ch == "'":
                    i += 1
                    break
                else:
                    chars.append(ch)
                    i += 1
        else:
            while i < n and not dsn[i].isspace():
                if dsn[i] == "\\" and i + 1 < n:
                    chars.append(dsn[i + 1])
                    i += 2
                else:
                    chars.append(dsn[i])
                    i += 1
        out[key] = "".join(chars)


def _split_url(dsn: str) -> tuple[str, str | None, str, str]:
    """(scheme, userinfo or None, rest after the userinfo, query) of a URL DSN.

    The userinfo ends at the last '@' before the query, so an unencoded '/' or '#' in a
    password is still treated as part of the userinfo; if the only '@' are in the query the
    userinfo ends at the first one (over-redaction is preferred to a leak).
    """
    stripped = dsn.strip()
    scheme, _, rest = stripped.partition("://")
    before_query, _, query = rest.partition("?")
    at = before_query.rfind("@")
    if at < 0 and "@" in query:
        at = rest.find("@")
        userinfo, rest_after = rest[:at], rest[at + 1 :]
        before_query, _, query = rest_after.partition("?")
        return scheme, userinfo, before_query, query
    if at < 0:
        return scheme, None, before_query, query
    return scheme, before_query[:at], before_query[at + 1 :], query


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&") if query else []:
        key, sep, _value = item.partition("=")
        if urllib.parse.unquote(key).lower() in _SECRET_PARAMS and sep:
            parts.append(f"{key}={REDACTED}")
        else:
            parts.append(item)
    return "&".join(parts)


def _quote_kv(value: str) -> str:
    if value and not any(c.isspace() or c in "'\\" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def redact_dsn(dsn: str) -> str:
    """The DSN with every password replaced by `***`, for display and logs."""
    if is_url(dsn):
        scheme, userinfo, hostpath, query = _split_url(dsn)
        out = f"{scheme}://"
        if userinfo is not None:
            user, sep, _password = userinfo.partition(":")
            out += f"{user}:{REDACTED}@" if sep else f"{user}@"
        out += hostpath
        if query:
            out += "?" + _redact_query(query)
        return out
    try:
        params = parse_kv_dsn(dsn)
    except DsnError:
        redacted = _KV_SECRET_FALLBACK.sub(lambda m: f"{m.group(1)}={REDACTED}", dsn)
        return redacted if "@" not in redacted else "[unparseable DSN]"
    return " ".join(
        f"{key}={REDACTED if key in _SECRET_PARAMS else _quote_kv(value)}"
        for key, value in params.items()
    )


def dsn_password(dsn: str) -> str | None:
    """The password written in the DSN, if any (used only to scrub it from messages)."""
    try:
        if is_url(dsn):
            _scheme, userinfo, _rest, query = _split_url(dsn)
            for item in query.split("&") if query else []:
                key, _, value = item.partition("=")
                if urllib.parse.unquote(key).lower() == "password":
                    return urllib.parse.unquote(value)
            if userinfo is not None and ":" in userinfo:
                return urllib.parse.unquote(userinfo.partition(":")[2])
            return None
        return parse_kv_dsn(dsn).get("password")
    except (DsnError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class DsnTarget:
    """What a DSN points at, without secrets: for messages like `reader@db:5432/app`."""

    user: str | None
    hosts: str
    database: str | None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        database = f"/{self.database}" if self.database else ""
        return f"{user}{self.hosts}{database}"


def describe_target(dsn: str) -> DsnTarget:
    """user, host:port (comma-separated for several hosts) and database of a DSN; libpq's
    defaults (localhost, 5432, database = user) are filled in."""
    if is_url(dsn):
        _scheme, userinfo, hostpath, query = _split_url(dsn)
        params = {
            urllib.parse.unquote(k).lower(): urllib.parse.unquote(v)
            for k, _, v in (item.partition("=") for item in query.split("&") if item)
        }
        hostspec, _, path = hostpath.partition("/")
        user = params.get("user")
        if userinfo is not None:
            user = urllib.parse.unquote(userinfo.partition(":")[0]) or user
        database = urllib.parse.unquote(path) or params.get("dbname") or params.get("database")
        host_list = [h for h in urllib.parse.unquote(hostspec).split(",") if h]
        if not host_list and params.get("host"):
            host_list = params["host"].split(",")
        default_port = params.get("port", "5432")
        hosts = []
        for host in host_list or ["localhost"]:
            if host.startswith("/"):
                hosts.append(f"{host}:{default_port}")
            elif (host.startswith("[") and "]:" in host) or host.count(":") == 1:
                hosts.append(host)
            else:
                hosts.append(f"{host}:{default_port}")
        return DsnTarget(user or None, ",".join(hosts), database or user or None)
    try:
        params = parse_kv_dsn(dsn)
    except DsnError:
        return DsnTarget(None, "?", None)
    host_list = (params.get("host") or params.get("hostaddr") or "localhost").split(",")
    port_list = (params.get("port") or "5432").split(",")
    hosts = ",".join(
        f"{h}:{port_list[i] if i < len(port_list) else port_list[-1]}"
        for i, h in enumerate(host_list)
    )
    user = params.get("user")
    return DsnTarget(user, hosts, params.get("dbname") or user)


def to_asyncpg_dsn(dsn: str) -> str:
    """A DSN asyncpg accepts: URL DSNs unchanged, key/value DSNs rewritten as a URL (database
    in the path, every other parameter in the query, where asyncpg treats unknown ones as
    server settings; libpq client-only options are dropped)."""
    if is_url(dsn):
        return dsn.strip()
    params = parse_kv_dsn(dsn)
    if not params:
        raise DsnError("invalid DSN: empty")
    if "hostaddr" in params and "host" not in params:
        params["host"] = params.pop("hostaddr")
    for key in _CLIENT_ONLY_PARAMS:  # libpq client options asyncpg would send as settings
        params.pop(key, None)
    # asyncpg reads the database from the path (an empty path would win over `dbname=`).
    database = urllib.parse.quote(params.pop("dbname", ""), safe="")
    query = "&".join(
        f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}"
        for k, v in params.items()
    )
    return f"postgresql:///{database}?{query}"


def scrub(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    """`text` with every occurrence of each secret (raw and percent-encoded) replaced."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}:
            text = text.replace(form, REDACTED)
    return text
