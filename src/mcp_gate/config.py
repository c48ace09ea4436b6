"""The `mcp-gate.toml` contract (DESIGN §4): where things are, never who may do what.

Secrets are referenced (`password_env`, `password_file`), never inlined: a DSN that carries a
password is rejected at load, so a config file can be shared and committed safely.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from mcp_gate import DEFAULT_CONFIG
from mcp_gate.policy.model import Duration
from mcp_gate.sqltools.dsn import dsn_password
from mcp_gate.tomlfile import ConfigFileError, Problem, read_toml, validate

STORE_SQLITE = "sqlite:///"
STORE_POSTGRESQL = ("postgresql://", "postgres://")
_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _has_inline_password(dsn: str) -> bool:
    # The executor's own DSN parser (it also reads `?password=` in URLs); text it cannot
    # parse is refused as soon as it names a password.
    return (
        dsn_password(dsn) is not None
        or re.search(r"(^|[\s?&])password\s*=", dsn, re.IGNORECASE) is not None
    )


def split_listen(listen: str) -> tuple[str, int]:
    """`"127.0.0.1:8765"` / `"[::1]:8765"` → (host, port); raises ValueError when malformed."""
    m = re.fullmatch(r"\[(?P<v6>[^\]]+)\]:(?P<port>\d+)|(?P<host>[^:\[\]]+):(?P<port4>\d+)", listen)
    if not m:
        raise ValueError(f"listen must be HOST:PORT, e.g. 127.0.0.1:8765, got {listen!r}")
    host = m.group("v6") or m.group("host")
    port = int(m.group("port") or m.group("port4"))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerSettings(_Strict):
    """`[server]`."""

    listen: str = "127.0.0.1:8765"
    public_url: str | None = None
    policies: str = "policies.toml"
    data_dir: str = ".mcp-gate"
    store: str = "sqlite:///.mcp-gate/gate.db"
    store_password_env: str | None = None
    store_password_file: str | None = None
    allowed_origins: list[str] = []
    max_request_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value.startswith(STORE_SQLITE):
            if not value.removeprefix(STORE_SQLITE):
                raise ValueError(
                    "a sqlite:/// store needs a file, e.g. sqlite:///.mcp-gate/gate.db"
                )
            return value
        if not value.startswith(STORE_POSTGRESQL):
            raise ValueError("store must be sqlite:///FILE or postgresql://USER@HOST:PORT/DATABASE")
        if _has_inline_password(value):
            raise ValueError(
                "the store URL contains a password; remove it and use store_password_env or "
                "store_password_file (secrets are referenced, never written into the config)"
            )
        return value

    @model_validator(mode="after")
    def _store_secret(self) -> ServerSettings:
        if self.store_password_env and self.store_password_file:
            raise ValueError("give store_password_env or store_password_file, not both")
        if (self.store_password_env or self.store_password_file) and not self.store.startswith(
            STORE_POSTGRESQL
        ):
            raise ValueError("store_password_env/store_password_file need a postgresql:// store")
        return self

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("public_url must be an http:// or https:// URL")
        return value


class LocalPrincipal(_Strict):
    """`[auth.local]`: who a stdio session is."""

    subject: Annotated[str, StringConstraints(min_length=1)] = "local-user"
    groups: list[str] = []


class AuthSettings(_Strict):
    """`[auth]`."""

    issuer: str | None = None
    audience: str | None = None
    groups_claim: str = "groups"
    dev_issuer: bool = False
    jwks_uri: str | None = None
    leeway: Duration = 30.0
    local: LocalPrincipal = LocalPrincipal()


class ConnectionSettings(_Strict):
    """`[connections.NAME]`: a database the built-in SQL tools serve."""

    dsn: Annotated[str, StringConstraints(min_length=1)]
    password_env: str | None = None
    password_file: str | None = None
    write_dsn: str | None = None
    write_password_env: str | None = None
    write_password_file: str | None = None
    max_rows: Annotated[int, Field(ge=1, le=100_000)] = 1000
    statement_timeout: Duration = 5.0
    lock_timeout: Duration = 1.0
    pool_size: Annotated[int, Field(ge=1, le=100)] = 10
    schemas: list[str] = ["public"]
    catalog_refresh: Duration = 300.0
    description: str | None = None

    @field_validator("dsn", "write_dsn")
    @classmethod
    def _no_inline_password(cls, value: str | None) -> str | None:
        if value is not None and _has_inline_password(value):
            raise ValueError(
                "the DSN contains a password; remove it and use password_env or password_file "
                "(secrets are referenced, never written into the config)"
            )
        return value

    @model_validator(mode="after")
    def _one_secret_source(self) -> ConnectionSettings:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        if self.write_password_env and self.write_password_file:
            raise ValueError("give write_password_env or write_password_file, not both")
        return self


class AuditSettings(_Strict):
    """`[audit]`: every session recorded in the store (DESIGN §8)."""

    enabled: bool = True  # false: nothing is recorded (the decision still runs)
    checkpoint_every: Duration = 300.0  # how often the chain head is signed (and retention runs)
    retain: Duration = 90 * 86400.0  # events older than this are pruned (at a checkpoint)
    # Groups whose members see every recorded session through the admin API (everyone else
    # sees only their own). Empty: the policy's `[approval] approvers`, who judge agents' work.
    viewers: list[Annotated[str, StringConstraints(min_length=1)]] = []


class GateConfigFile(_Strict):
    """The whole `mcp-gate.toml`."""

    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    audit: AuditSettings = AuditSettings()
    connections: dict[Annotated[str, StringConstraints(pattern=_NAME)], ConnectionSettings] = {}

    @model_validator(mode="after")
    def _dev_issuer_on_loopback(self) -> GateConfigFile:
        host, _ = split_listen(self.server.listen)
        if self.auth.dev_issuer and not is_loopback(host):
            raise ValueError(
                "auth.dev_issuer may only be used with a loopback listen address "
                f"(127.0.0.1, ::1); listen is {self.server.listen!r}"
            )
        if self.auth.dev_issuer and self.auth.issuer:
            raise ValueError("set auth.issuer or auth.dev_issuer, not both")
        return self


@dataclass(frozen=True, slots=True)
class GateConfig:
    """A loaded config with every path resolved against the config file's folder."""

    file: Path
    model: GateConfigFile
    policies: Path
    data_dir: Path
    public_url: str
    audience: str
    issuer: str | None

    @property
    def listen(self) -> tuple[str, int]:
        """(host, port) to bind."""
        return split_listen(self.model.server.listen)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def load_config(path: str | Path = DEFAULT_CONFIG) -> GateConfig:
    """Load `mcp-gate.toml`; raise ConfigFileError naming file, line and key."""
    doc = read_toml(path)
    model, problems = validate(doc, GateConfigFile, "mcp-gate.toml")
    if model is None:
        raise ConfigFileError(problems)
    base = Path(path).resolve().parent
    host, port = split_listen(model.server.listen)
    shown_host = f"[{host}]" if ":" in host else host
    public_url = model.server.public_url or f"http://{shown_host}:{port}/mcp"
    issuer = model.auth.issuer
    if model.auth.dev_issuer:
        issuer = public_url.rsplit("/mcp", 1)[0] if public_url.endswith("/mcp") else public_url
    return GateConfig(
        file=Path(path).resolve(),
        model=model,
        policies=_resolve(base, model.server.policies),
        data_dir=_resolve(base, model.server.data_dir),
        public_url=public_url,
        audience=model.auth.audience or public_url,
        issuer=issuer,
    )


class SecretError(Exception):
    """A referenced secret could not be read (the message names the reference, not a value)."""


def read_secret(env: str | None, file: str | None, base: Path, what: str) -> str | None:
    """Read a password from an environment variable or a file (first line, stripped)."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise SecretError(f"{what}: environment variable {env} is not set")
        return value
    if file:
        p = _resolve(base, file)
        try:
            return p.read_text(encoding="utf-8").splitlines()[0].strip() if p.stat().st_size else ""
        except OSError as exc:
            raise SecretError(f"{what}: cannot read password_file {p}: {exc.strerror}") from None
    return None


__all__ = [
    "DEFAULT_CONFIG",
    "ConfigFileError",
    "ConnectionSettings",
    "GateConfig",
    "GateConfigFile",
    "Problem",
    "SecretError",
    "is_loopback",
    "load_config",
    "read_secret",
    "split_listen",
]
