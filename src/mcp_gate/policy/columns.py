"""`policy test --sql … --config F`: which output columns the gateway would mask, and why,
and the planner's row estimate that `estimated_rows` rules see.

Lineage needs the database's catalog, so this opens one read-only connection with the
gateway's own config (the same DSN and password reference the gateway uses); a write is
explained on `write_dsn` (EXPLAIN checks the write's privileges), in a read-only transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio

from mcp_gate.calls import Principal
from mcp_gate.config import ConfigFileError, SecretError, load_config, read_secret
from mcp_gate.gateway.upstream import Estimate
from mcp_gate.inspect.catalog import load_catalog
from mcp_gate.inspect.lineage import Lineage, LineageUnresolved, trace
from mcp_gate.inspect.model import SqlInspection, SqlKind
from mcp_gate.mask.rules import MaskPlan, MaskReason
from mcp_gate.sqltools.errors import SqlToolError
from mcp_gate.sqltools.estimate import estimate_rows
from mcp_gate.sqltools.pool import create_pool


@dataclass(frozen=True, slots=True)
class ColumnVerdict:
    """One output position: where it comes from and what masking does to it."""

    position: int
    name: str
    sources: tuple[str, ...]
    strategy: str | None
    reasons: tuple[MaskReason, ...]


@dataclass(frozen=True, slots=True)
class ColumnReport:
    """The traced columns, or why there are none."""

    lineage: Lineage | None
    columns: tuple[ColumnVerdict, ...] = ()
    sensitive_predicates: tuple[str, ...] = ()
    problem: str | None = None
    unresolved: bool = False  # the query itself cannot be traced (the gateway denies it)
    #: The planner's row estimate (EXPLAIN, never ANALYZE), or why there is none.
    estimate: Estimate | None = None


async def _live(config_path: Path, connection: str | None, sql: SqlInspection):
    """The catalog and the planner's row estimate of `sql`, as the gateway would get them."""
    config = load_config(config_path)
    conns = config.model.connections
    if not conns:
        raise LookupError(f"{config_path} configures no [connections]")
    name = connection or (next(iter(conns)) if len(conns) == 1 else None)
    if name not in conns:
        raise LookupError(f"name one of the connections with --connection: {', '.join(conns)}")
    settings = conns[name]
    base = config.file.parent
    password = read_secret(
        settings.password_env, settings.password_file, base, f"connection {name!r}"
    )
    pool = await create_pool(settings.dsn, password=password, min_size=1, max_size=1, retries=1)
    write_pool = None
    try:
        catalog = await load_catalog(pool, settings.schemas)
        if sql.kind is not SqlKind.SELECT and settings.write_dsn:
            write_password = read_secret(
                settings.write_password_env or settings.password_env,
                settings.write_password_file or settings.password_file,
                base,
                f"connection {name!r} (write)",
            )
            write_pool = await create_pool(
                settings.write_dsn, password=write_password, min_size=1, max_size=1, retries=1
            )
        estimate = await estimate_rows(
            sql,
            None,
            read_pool=pool,
            write_pool=write_pool,
            connection=name,
            statement_timeout_ms=int(settings.statement_timeout * 1000),
            lock_timeout_ms=int(settings.lock_timeout * 1000),
        )
        return catalog, estimate
    finally:
        for opened in (pool, write_pool):
            if opened is not None:
                await opened.close()


def column_report(
    config_path: Path,
    connection: str | None,
    sql: SqlInspection,
    plan: MaskPlan,
    principal: Principal,
) -> ColumnReport:
    """Trace `sql` against the live catalog and apply the mask rules, as the gateway would."""
    try:
        catalog, estimate = anyio.run(_live, config_path, connection, sql)
    except (ConfigFileError, LookupError, SecretError, SqlToolError, OSError) as exc:
        return ColumnReport(None, problem=f"cannot load the catalog: {exc}")
    try:
        lineage = trace(sql.text, catalog, inspection=sql)
    except LineageUnresolved as exc:
        return ColumnReport(
            None,
            problem=f"lineage_unresolved: {exc.reason} (the call is denied)",
            unresolved=True,
            estimate=estimate,
        )
    columns = tuple(
        ColumnVerdict(
            o.position,
            o.name,
            tuple(sorted(o.sources)),
            plan.output_strategy(o, principal),  # partial/hash only on plain copies
            tuple(plan.explain(o.sources, principal)),
        )
        for o in lineage.outputs
    )
    predicates = plan.masked_columns(lineage.predicate_columns, principal)
    return ColumnReport(lineage, columns, predicates, estimate=estimate)
