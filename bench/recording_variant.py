"""`mcp-gate serve` with one part of recording taken out: for bench/audit_breakdown.py only,
never a way to run a gateway (each variant breaks the durability rule or records nothing).

    MCP_GATE_BENCH_VARIANT=null|nowait|nosync python bench/recording_variant.py serve ...

- `null`: the recorder and the HTTP tap do all their work, the store keeps nothing (no
  writer thread work, no commit): what recording costs before the store;
- `nowait`: a decision is queued like a transcript event and the call does not wait for its
  commit: what waiting for the commit costs;
- `nosync`: the store commits with `synchronous=NORMAL` (no fsync per commit).
"""

from __future__ import annotations

import sys

# bench/inspect.py is named like the standard library's `inspect` and a script's folder comes
# first on sys.path: move bench/ behind the standard library before anything imports it.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.append(sys.path.pop(0))

import os
from typing import Any

from mcp_gate.audit import recorder, sqlite_store
from mcp_gate.cli import app

VARIANT = os.environ.get("MCP_GATE_BENCH_VARIANT", "")

if VARIANT == "null":

    async def _append(self: Any, events: Any, data: Any = None) -> list[Any]:
        return []

    sqlite_store.SqliteAuditStore.append = _append  # type: ignore[method-assign]
elif VARIANT == "nowait":

    async def _decision(
        self: Any, session_id: Any, principal: Any, call: Any, decision: Any
    ) -> None:
        self._enqueue(self._decision_event(session_id, principal, call, decision))

    recorder.Recorder.decision = _decision  # type: ignore[method-assign]
elif VARIANT == "nosync":
    _connect = sqlite_store.SqliteAuditStore._connect

    def _unsynced(self: Any) -> Any:
        conn = _connect(self)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    sqlite_store.SqliteAuditStore._connect = _unsynced  # type: ignore[method-assign]
else:
    sys.exit(f"MCP_GATE_BENCH_VARIANT must be null, nowait or nosync, not {VARIANT!r}")

if __name__ == "__main__":
    app(prog_name="mcp-gate")
