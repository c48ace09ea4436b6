"""The audit stores (SQLite and PostgreSQL) and the chain: round trips, group commit under
concurrency, two instances on one store, tampering by hand, retention, failing closed."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_gate.audit import (
    GENESIS,
    AuditEvent,
    AuditStore,
    AuditUnavailable,
    Direction,
    EventKind,
    SqliteAuditStore,
    chain,
    rows,
)
from mcp_gate.audit.pg_store import PostgresAuditStore
from pgserver import TestDatabase, admin_execute, dsn_with, free_port, quote_ident, unique_name

T0 = 1_790_000_000.0


@dataclass
class Target:
    """One fresh store: `make()` builds a new instance (own connections, as another process
    would), `tamper(sql)` edits the database by hand, as an attacker with file access."""

    kind: str
    make: Callable[[], AuditStore]
    tamper_sql: Callable[[str], None]

    def tamper(self, *statements: str) -> None:
        for sql in statements:
            self.tamper_sql(sql)


def _sqlite_target(path: Path) -> Target:
    def tamper(sql: str) -> None:
        conn = sqlite3.connect(path)
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()

    return Target("sqlite", lambda: SqliteAuditStore(path), tamper)


def _pg_target(db: TestDatabase) -> Target:
    schema = unique_name("audit")
    admin_execute(db.dsn, f"CREATE SCHEMA {quote_ident(schema)}")
    dsn = db.dsn + ("&" if "?" in db.dsn else "?") + f"search_path={schema}"

    def tamper(sql: str) -> None:
        admin_execute(db.dsn, f"SET search_path = {quote_ident(schema)}; {sql}")

    return Target("postgresql", lambda: PostgresAuditStore(dsn), tamper)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return _sqlite_target(tmp_path / "gate.db")
    return _pg_target(request.getfixturevalue("module_db"))


@pytest.fixture
async def store(target: Target) -> AsyncIterator[AuditStore]:
    s = target.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def start(session: str, subject: str = "alice", at: float = T0, **data: object) -> AuditEvent:
    return AuditEvent(
        session,
        EventKind.SESSION_START,
        at,
        data={
            "principal": {"subject": subject, "groups": ["dba", "developers"], "client_id": "cli"},
            "transport": "http",
            "era": "2025-11-25",
            "client_info": {"name": "claude-code", "version": "2.1"},
            **data,
        },
    )


def message(session: str, at: float, direction: Direction, body: dict) -> AuditEvent:
    return AuditEvent(
        session,
        EventKind.MESSAGE,
        at,
        direction=direction,
        method=body.get("method"),
        request_id=str(body.get("id")) if "id" in body else None,
        data={"message": body},
    )


def transcript(session: str, subject: str = "alice", t: float = T0) -> list[AuditEvent]:
    """A small session: one allowed query, one held write that a DBA denied."""
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "sql_query", "arguments": {"sql": "SELECT 1"}}}  # fmt: skip
    delete = {"sql": "DELETE FROM t WHERE id=1"}
    write = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
             "params": {"name": "sql_query", "arguments": delete}}  # fmt: skip
    return [
        start(session, subject, t),
        message(session, t + 0.1, Direction.IN, call),
        AuditEvent(
            session,
            EventKind.DECISION,
            t + 0.11,
            method="tools/call",
            request_id="1",
            tool="sql_query",
            decision="allow",
            data={"reasons": ["reads"]},
        ),
        AuditEvent(
            session,
            EventKind.MESSAGE,
            t + 0.2,
            direction=Direction.OUT,
            request_id="1",
            duration_ms=12.5,
            data={
                "message": {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "result": {"content": [{"type": "text", "text": "1"}]},
                }
            },
        ),
        message(session, t + 1, Direction.IN, write),
        AuditEvent(
            session,
            EventKind.DECISION,
            t + 1.01,
            request_id="2",
            tool="sql_query",
            decision="review",
            approval_id="ap_1",
            data={"reasons": ["writes"]},
        ),
        AuditEvent(
            session,
            EventKind.APPROVAL,
            t + 5,
            approval_id="ap_1",
            decision="deny",
            data={"event": "decided", "by": "bob", "reason": "not today"},
        ),
        AuditEvent(session, EventKind.SESSION_END, t + 9),
    ]


# --------------------------------------------------------------------------- round trips


@pytest.mark.anyio
async def test_round_trip_events_sessions_and_head(store: AuditStore) -> None:
    assert await store.head() == (0, GENESIS)
    events = transcript("s1")
    stored = await store.append(events)
    assert [s.seq for s in stored] == list(range(1, 9))
    assert stored[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(stored))
    assert await store.head() == (8, stored[-1].hash)

    back = await store.events()
    assert [b.event for b in back] == events  # every field, exactly (floats included)
    assert [(b.seq, b.prev_hash, b.hash) for b in back] == [
        (s.seq, s.prev_hash, s.hash) for s in stored
    ]
    await store.append(transcript("s2", "bob", T0 + 100))

    info = await store.session("s1")
    assert info is not None
    assert (info.subject, info.groups, info.client_id) == ("alice", ("dba", "developers"), "cli")
    assert (info.transport, info.era, info.client_name, info.client_version) == (
        "http", "2025-11-25", "claude-code", "2.1",
    )  # fmt: skip
    assert (info.started_at, info.ended_at) == (T0, T0 + 9)
    assert (info.events, info.calls, info.denied) == (8, 2, 1)
    assert await store.session("nope") is None

    assert [s.id for s in await store.sessions()] == ["s2", "s1"]  # newest first
    assert [s.id for s in await store.sessions(principal="alice")] == ["s1"]
    assert [s.id for s in await store.sessions(since=T0 + 50)] == ["s2"]
    assert [s.id for s in await store.sessions(limit=1)] == ["s2"]

    only_s2 = await store.events(session_id="s2")
    assert [e.seq for e in only_s2] == list(range(9, 17))
    assert [e.seq for e in await store.events(after_seq=14)] == [15, 16]
    assert [e.seq for e in await store.events(since=T0 + 9, limit=2)] == [8, 9]


@pytest.mark.anyio
async def test_sessions_by_the_start_of_their_id(store: AuditStore) -> None:
    """What `replay` resolves a shortened id with: a prefix, never a LIKE pattern."""
    for sid in ("ses_0123456789abcdef", "ses_0123456789abffff", "ses_9x%y_z", "sesA0"):
        await store.append([start(sid)])
    assert [s.id for s in await store.sessions_starting("ses_0123456789abc")] == [
        "ses_0123456789abcdef"
    ]
    assert [s.id for s in await store.sessions_starting("ses_0123")] == [
        "ses_0123456789abcdef",
        "ses_0123456789abffff",
    ]
    assert [s.id for s in await store.sessions_starting("ses_", limit=5)] == [
        "ses_0123456789abcdef",
        "ses_0123456789abffff",
        "ses_9x%y_z",
    ]  # `_` is literal: "sesA0" does not match
    assert [s.id for s in await store.sessions_starting("ses_9x%")] == ["ses_9x%y_z"]
    assert await store.sessions_starting("ses_%") == []
    assert await store.sessions_starting("ses_0123\\") == []


@pytest.mark.anyio
async def test_verify_passes_and_counts(store: AuditStore, tmp_path: Path) -> None:
    key = chain.load_signing_key(tmp_path / "data")
    await store.append(transcript("s1"))
    cp = await chain.make_checkpoint(store, key, T0 + 10)
    assert cp.seq == 8
    assert await chain.make_checkpoint(store, key, T0 + 11) == cp  # nothing new: no new one
    await store.append(transcript("s2", t=T0 + 20))
    report = await chain.verify(store, chain.public_keys(tmp_path / "data"), page=3)
    assert report.ok, report
    assert (report.events, report.checkpoints, report.first_seq, report.last_seq) == (17, 1, 1, 17)
    tail = await store.events(after_seq=8, limit=1)
    assert tail[0].event.kind == EventKind.CHECKPOINT  # the signature also travels in the chain
    assert tail[0].event.data["signature"] == cp.signature


@pytest.mark.anyio
async def test_bad_data_is_refused_before_anything_is_queued(store: AuditStore) -> None:
    with pytest.raises(ValueError, match="plain JSON"):
        await store.append([AuditEvent("s", EventKind.MESSAGE, T0, data={"x": object()})])
    with pytest.raises(ValueError, match="plain JSON"):
        await store.append([AuditEvent("s", EventKind.MESSAGE, T0, data={1: "a", "b": 2})])
    assert await store.head() == (0, GENESIS)


@pytest.mark.anyio
async def test_a_group_too_big_for_one_statement(store: AuditStore) -> None:
    """SQLite binds at most 32,766 parameters per statement: a 2,500-event append goes in
    chunks, still one transaction, with the sessions index counted right."""
    events = [start("big")] + [
        AuditEvent("big", EventKind.DECISION, T0 + i, decision="deny" if i % 5 == 0 else "allow")
        for i in range(1, 2500)
    ]
    stored = await store.append(events)
    assert [e.seq for e in stored] == list(range(1, 2501))
    session = await store.session("big")
    assert session is not None
    assert (session.events, session.calls, session.denied) == (2500, 2499, 499)
    assert (await chain.verify(store, {})).ok


@pytest.mark.anyio
async def test_non_finite_floats_are_recorded_as_null(store: AuditStore) -> None:
    """The SDK's parser takes `NaN` in arguments; JSON cannot hold it. It is written as null
    (as JSON-mode pydantic writes it), on the fast path and on the stdlib one (1e-05 takes
    that), and the chain verifies."""
    nan, inf = float("nan"), float("inf")
    [a, b] = await store.append(
        [
            AuditEvent("s", EventKind.MESSAGE, T0, data={"x": nan, "y": [inf, 1]}),
            AuditEvent("s", EventKind.MESSAGE, T0, data={"x": -inf, "small": 1e-05}),
        ]
    )
    assert [e.event.data for e in await store.events()] == [
        {"x": None, "y": [None, 1]},
        {"x": None, "small": 1e-05},
    ]
    assert a.data_text == '{"x":null,"y":[null,1]}'
    assert b.data_text == '{"small":1e-05,"x":null}'  # the stdlib's float form
    assert (await chain.verify(store, {})).ok


# --------------------------------------------------------------------------- concurrency


async def _producers(store: AuditStore, n: int, each: int, tag: str) -> list[list[int]]:
    async def produce(i: int) -> list[list[int]]:
        out = []
        for j in range(each):
            size = 1 + (i + j) % 3
            stored = await store.append(
                [
                    AuditEvent(f"{tag}{i}", EventKind.MESSAGE, T0 + j, data={"k": k})
                    for k in range(size)
                ]
            )
            out.append([s.seq for s in stored])
        return out

    return [
        seqs for batch in await asyncio.gather(*(produce(i) for i in range(n))) for seqs in batch
    ]


def _assert_one_chain(appends: list[list[int]], total: int) -> None:
    flat = sorted(s for seqs in appends for s in seqs)
    assert flat == list(range(1, total + 1))  # gap-free, nothing twice
    for seqs in appends:  # one caller's events are contiguous
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


@pytest.mark.anyio
async def test_many_concurrent_appends_build_one_gap_free_chain(
    store: AuditStore, tmp_path: Path
) -> None:
    appends = await _producers(store, 40, 10, "p")
    total = sum(len(s) for s in appends)
    _assert_one_chain(appends, total)
    assert (await store.head())[0] == total
    report = await chain.verify(store, {}, page=97)
    assert report.ok and report.events == total, report


@pytest.mark.anyio
async def test_two_store_instances_on_one_target_share_one_chain(target: Target) -> None:
    a, b = target.make(), target.make()
    await a.open()
    await b.open()
    try:
        results = await asyncio.gather(_producers(a, 8, 15, "a"), _producers(b, 8, 15, "b"))
        appends = results[0] + results[1]
        total = sum(len(s) for s in appends)
        _assert_one_chain(appends, total)
        assert await a.head() == await b.head()
        assert (await chain.verify(a, {})).ok
    finally:
        await a.close()
        await b.close()


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from mcp_gate.audit import AuditEvent, EventKind, SqliteAuditStore

    async def main():
        store = SqliteAuditStore(sys.argv[1])
        await store.open()
        async def one(i):
            j = 0
            while True:
                ev = AuditEvent(f"w{i}", EventKind.DECISION, 1.0, decision="allow", data={"j": j})
                [stored] = await store.append([ev])
                print(stored.seq, stored.hash, flush=True)
                j += 1
        await asyncio.gather(*(one(i) for i in range(8)))

    asyncio.run(main())
    """
)


_APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from mcp_gate.audit import AuditEvent, EventKind, SqliteAuditStore

    async def main():
        store = SqliteAuditStore(sys.argv[1])
        await store.open()
        async def one(i):
            for j in range(60):
                ev = AuditEvent(f"{sys.argv[2]}{i}", EventKind.MESSAGE, 1.0, data={"j": j})
                await store.append([ev, ev])
        await asyncio.gather(*(one(i) for i in range(4)))
        await store.close()

    asyncio.run(main())
    """
)


@pytest.mark.anyio
async def test_two_processes_on_one_file_build_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    store = SqliteAuditStore(path)
    await store.open()  # create the schema first: both writers then race on appends only
    await store.close()
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", _APPENDER, str(path), tag)
        for tag in ("a", "b")
    ]
    assert [await p.wait() for p in procs] == [0, 0]
    store = SqliteAuditStore(path)
    await store.open()
    try:
        events = await store.events()
        assert [e.seq for e in events] == list(range(1, 2 * 4 * 60 * 2 + 1))
        for first, second in zip(events[::2], events[1::2], strict=True):
            assert first.event.session_id == second.event.session_id  # pairs stay together
        assert {e.event.session_id[0] for e in events} == {"a", "b"}
        assert (await chain.verify(store, {})).ok
    finally:
        await store.close()


@pytest.mark.anyio
async def test_maintain_checkpoints_and_prunes(store: AuditStore, tmp_path: Path) -> None:
    key = chain.load_signing_key(tmp_path / "data")
    await store.append(transcript("old", t=time.time() - 3600))
    clock = time.time
    task = asyncio.ensure_future(
        chain.maintain(store, key, checkpoint_every=0.05, retain=600, clock=clock)
    )
    try:
        async with asyncio.timeout(20):
            while await store.session("old") is not None:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
    report = await chain.verify(store, chain.public_keys(tmp_path / "data"))
    assert report.ok and report.checkpoints >= 1 and report.first_seq == 9, report


@pytest.mark.anyio
async def test_sigkill_mid_load_loses_no_committed_event(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    reported: list[tuple[int, str]] = []
    try:
        while len(reported) < 400:
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line, "the writer died"
            seq, digest = line.split()
            reported.append((int(seq), digest))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    store = SqliteAuditStore(path)
    await store.open()
    try:
        kept = {e.seq: e.hash for e in await store.events()}
        assert all(kept.get(seq) == digest for seq, digest in reported)  # every reported commit
        report = await chain.verify(store, {})
        assert report.ok and report.events == len(kept) >= 400, report
        # and the chain goes on after the crash
        [nxt] = await store.append([AuditEvent("after", EventKind.MESSAGE, T0)])
        assert nxt.seq == max(kept) + 1 and nxt.prev_hash == kept[max(kept)]
    finally:
        await store.close()


# --------------------------------------------------------------------------- tampering


async def _filled(target: Target, tmp_path: Path, *, checkpoint: bool = False):
    store = target.make()
    await store.open()
    key = chain.load_signing_key(tmp_path / "data")
    await store.append(transcript("s1"))
    await store.append(transcript("s2", "bob", T0 + 20))  # seq 9..16
    if checkpoint:
        await chain.make_checkpoint(store, key, T0 + 30)  # checkpoint at 16, event 17
    await store.close()
    return key, chain.public_keys(tmp_path / "data")


async def _verify(target: Target, keys: dict) -> object:
    store = target.make()
    await store.open()
    try:
        return await chain.verify(store, keys, page=4)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_verify_detects_an_edited_event(target: Target, tmp_path: Path) -> None:
    _, keys = await _filled(target, tmp_path)
    assert (await _verify(target, keys)).ok
    target.tamper("UPDATE audit_events SET decision = 'allow' WHERE seq = 6")
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 6 and report.events == 5
    assert report.problem.startswith("edited:")


@pytest.mark.anyio
async def test_verify_detects_an_edit_that_parses_the_same(target: Target, tmp_path: Path) -> None:
    """Verification hashes the stored text, not a re-serialisation of it: an edit that a JSON
    reader cannot see (a space) is caught too."""
    _, keys = await _filled(target, tmp_path)
    target.tamper("UPDATE audit_events SET data = replace(data, ':', ': ') WHERE seq = 4")
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 4 and report.problem.startswith("edited:")


@pytest.mark.anyio
async def test_verify_reports_garbage_written_into_a_row(target: Target, tmp_path: Path) -> None:
    _, keys = await _filled(target, tmp_path)
    target.tamper("UPDATE audit_events SET data = '{not json' WHERE seq = 3")
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 3 and report.problem.startswith("edited:")


@pytest.mark.anyio
async def test_verify_detects_an_edited_and_rehashed_event(target: Target, tmp_path: Path) -> None:
    _, keys = await _filled(target, tmp_path)
    store = target.make()
    await store.open()
    [ev] = await store.events(after_seq=4, limit=1)
    await store.close()
    forged = dataclasses.replace(ev.event, data={"message": {"forged": True}})
    new_hash = forged.chain_hash(5, ev.prev_hash)
    target.tamper(
        'UPDATE audit_events SET data = \'{"message":{"forged":true}}\', '
        f"hash = '{new_hash}' WHERE seq = 5"
    )
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 6
    assert "does not link to event 5" in report.problem


@pytest.mark.anyio
async def test_verify_detects_a_deleted_event(target: Target, tmp_path: Path) -> None:
    _, keys = await _filled(target, tmp_path)
    target.tamper("DELETE FROM audit_events WHERE seq = 7")
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 7
    assert report.problem == "deleted: event 7 is missing (a gap in the chain)"


@pytest.mark.anyio
async def test_verify_detects_deleted_first_and_last_events(target: Target, tmp_path: Path) -> None:
    _, keys = await _filled(target, tmp_path)
    target.tamper("DELETE FROM audit_events WHERE seq >= 15")
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 15 and "head is at seq 16" in report.problem
    target.tamper("DELETE FROM audit_events WHERE seq <= 2")
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 3 and report.problem.startswith("unanchored")


@pytest.mark.anyio
async def test_verify_detects_a_reordered_event(target: Target, tmp_path: Path) -> None:
    _, keys = await _filled(target, tmp_path)
    target.tamper(
        "UPDATE audit_events SET seq = -seq WHERE seq IN (10, 11)",
        "UPDATE audit_events SET seq = 21 + seq WHERE seq IN (-10, -11)",  # 10 ↔ 11
    )
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 10
    assert report.problem == "reordered: the event at seq 10 was written at seq 11"


@pytest.mark.anyio
async def test_verify_detects_forged_checkpoints(target: Target, tmp_path: Path) -> None:
    _, keys = await _filled(target, tmp_path, checkpoint=True)
    assert (await _verify(target, keys)).checkpoints == 1
    # signed by a key the data folder does not know
    other = chain.SigningKey.generate()
    cp = chain.sign_checkpoint(other, 17, "f" * 64, T0 + 40)
    target.tamper(
        "INSERT INTO audit_checkpoints (seq, head_hash, at, key_id, signature) VALUES "
        f"({cp.seq}, '{cp.head_hash}', {cp.at}, '{cp.key_id}', '{cp.signature}')"
    )
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 17 and "unknown key" in report.problem
    # a real checkpoint whose statement was altered: the signature no longer holds
    target.tamper(
        "DELETE FROM audit_checkpoints WHERE seq = 17",
        "UPDATE audit_checkpoints SET head_hash = 'e' || substr(head_hash, 2) WHERE seq = 16",
    )
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 16 and "bad signature" in report.problem


@pytest.mark.anyio
async def test_checkpoint_catches_a_rewritten_chain(target: Target, tmp_path: Path) -> None:
    """An attacker who rewrites the tail and recomputes every hash still cannot forge the
    signed statement of the head."""
    _, keys = await _filled(target, tmp_path, checkpoint=True)
    store = target.make()
    await store.open()
    tail = await store.events(after_seq=14)
    await store.close()
    prev = tail[0].prev_hash
    for stored in tail:
        ev = stored.event
        if stored.seq == 15:
            ev = dataclasses.replace(ev, data={"rewritten": True})
        digest = ev.chain_hash(stored.seq, prev)
        data = '{"rewritten":true}' if stored.seq == 15 else None
        sets = f"hash = '{digest}', prev_hash = '{prev}'" + (f", data = '{data}'" if data else "")
        target.tamper(f"UPDATE audit_events SET {sets} WHERE seq = {stored.seq}")
        prev = digest
    report = await _verify(target, keys)
    assert not report.ok and report.broken_at == 16
    assert "does not match event 16" in report.problem


# --------------------------------------------------------------------------- retention


@pytest.mark.anyio
async def test_prune_keeps_the_chain_verifiable(store: AuditStore, tmp_path: Path) -> None:
    key = chain.load_signing_key(tmp_path / "data")
    keys = chain.public_keys(tmp_path / "data")
    await store.append(transcript("old"))  # T0 .. T0+9 → seq 1..8
    await chain.make_checkpoint(store, key, T0 + 10)  # at 8, event 9
    await store.append(transcript("new", t=T0 + 1000))  # seq 10..17
    deleted = await chain.prune(store, key, retain_seconds=500, now=T0 + 1400)
    assert deleted == 8  # up to the checkpoint before the cut, not beyond
    assert await store.session("old") is None and await store.session("new") is not None
    report = await chain.verify(store, keys)
    assert report.ok and report.first_seq == 9, report
    await store.append(transcript("later", t=T0 + 2000))
    assert (await chain.verify(store, keys)).ok
    # everything older than the cut: pruned up to the fresh checkpoint of the head
    await chain.prune(store, key, retain_seconds=1, now=T0 + 5000)
    report = await chain.verify(store, keys)
    assert report.ok and report.events == 1, report  # the last checkpoint event
    assert (await store.events())[0].event.kind == EventKind.CHECKPOINT


@pytest.mark.anyio
async def test_pruning_without_an_anchor_is_detected(target: Target, tmp_path: Path) -> None:
    _, keys = await _filled(target, tmp_path, checkpoint=True)
    store = target.make()
    await store.open()
    await chain.prune(store, chain.load_signing_key(tmp_path / "data"), 1, T0 + 100)
    assert (await chain.verify(store, keys)).ok
    await store.close()
    target.tamper("DELETE FROM audit_checkpoints")
    report = await _verify(target, keys)
    assert not report.ok and report.problem.startswith("unanchored")


# --------------------------------------------------------------------------- failing closed


@pytest.mark.anyio
async def test_full_sqlite_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    store = SqliteAuditStore(path, max_page_count=40)  # ~160 KiB: the cap stands for the disk
    await store.open()
    committed: list[int] = []
    try:
        with pytest.raises(AuditUnavailable, match="full") as info:
            for i in range(1000):
                blob = {"text": f"{i}" * 2000}
                for s in await store.append([AuditEvent("s", EventKind.MESSAGE, T0, data=blob)]):
                    committed.append(s.seq)
        assert str(path) in str(info.value)
        with pytest.raises(AuditUnavailable):  # still full: still refused, nothing dropped
            await store.append([AuditEvent("s", EventKind.MESSAGE, T0, data={"text": "x" * 9000})])
        assert [e.seq for e in await store.events()] == committed
        assert (await chain.verify(store, {})).ok
    finally:
        await store.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        await store.append([AuditEvent("s", EventKind.MESSAGE, T0)])
    with pytest.raises(AuditUnavailable, match="closed"):
        await store.events()


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_sqlite_file_deleted_or_replaced_under_the_store_fails_closed(
    tmp_path: Path, how: str
) -> None:
    """WAL mode would go on committing into the unlinked inode, where the record is lost at
    the next start: the store refuses instead, and says why."""
    path = tmp_path / "gate.db"
    store = SqliteAuditStore(path)
    await store.open()
    try:
        await store.append([AuditEvent("s", EventKind.MESSAGE, T0)])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            other = SqliteAuditStore(path)  # a fresh, valid store file at the same path
            await other.open()
            await other.close()
        with pytest.raises(AuditUnavailable, match="gone" if how == "deleted" else "replaced"):
            await store.append([AuditEvent("s", EventKind.MESSAGE, T0)])
        with pytest.raises(AuditUnavailable):  # and stays refused: nothing lands in silence
            await store.append([AuditEvent("s", EventKind.MESSAGE, T0)])
    finally:
        await store.close()


@pytest.mark.anyio
async def test_closed_store_refuses(store: AuditStore) -> None:
    await store.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        await store.append([AuditEvent("s", EventKind.MESSAGE, T0)])


@pytest.mark.anyio
async def test_close_commits_what_is_queued(target: Target) -> None:
    store = target.make()
    await store.open()
    pending = [
        asyncio.ensure_future(store.append([AuditEvent("s", EventKind.MESSAGE, T0 + i)]))
        for i in range(50)
    ]
    await asyncio.sleep(0)
    await store.close()
    done = await asyncio.gather(*pending, return_exceptions=True)
    ok = [d for d in done if not isinstance(d, BaseException)]
    assert all(isinstance(d, AuditUnavailable) for d in done if isinstance(d, BaseException))
    reopened = target.make()
    await reopened.open()
    try:
        assert len(await reopened.events()) == len(ok)  # what was reported is there
    finally:
        await reopened.close()


@pytest.mark.anyio
async def test_postgres_connection_lost_fails_closed_then_recovers(module_db: TestDatabase) -> None:
    target = _pg_target(module_db)
    store = target.make()
    await store.open()
    try:
        await store.append([AuditEvent("s", EventKind.MESSAGE, T0)])
        admin_execute(
            module_db.dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'mcp-gate audit' AND pid <> pg_backend_pid()",
        )
        outcomes = []
        for _ in range(3):
            try:
                await store.append([AuditEvent("s", EventKind.MESSAGE, T0)])
                outcomes.append("ok")
            except AuditUnavailable as exc:
                outcomes.append(str(exc))
        assert outcomes[-1] == "ok"  # the pool reconnects for the next commit
        failed = [o for o in outcomes if o != "ok"]
        assert all("cannot record" in o for o in failed)
        kept = await store.events()
        assert len(kept) == 1 + outcomes.count("ok")
        assert (await chain.verify(store, {})).ok
    finally:
        await store.close()


@pytest.mark.anyio
async def test_postgres_errors_never_carry_the_password(pg_dsn: str) -> None:
    secret = "pw-" + unique_name("s3cret")
    unreachable = PostgresAuditStore(
        f"postgresql://auditor@127.0.0.1:{free_port()}/gate", password=secret, connect_attempts=1
    )
    with pytest.raises(AuditUnavailable) as info:
        await unreachable.open()
    assert "auditor@127.0.0.1" in str(info.value) and secret not in str(info.value)
    role = unique_name("auditor")
    admin_execute(pg_dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'right-password'")
    try:
        wrong = PostgresAuditStore(dsn_with(pg_dsn, user=role, password=""), password=secret)
        with pytest.raises(AuditUnavailable) as info:
            await wrong.open()
        assert "password authentication failed" in str(info.value)
        assert secret not in str(info.value) and secret not in repr(wrong)
    finally:
        admin_execute(pg_dsn, f"DROP ROLE {role}")


# --------------------------------------------------------------------------- the key


def test_signing_key_is_private_and_shared_by_racers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = (
        "import sys; from pathlib import Path; from mcp_gate.audit import chain; "
        "print(chain.load_signing_key(Path(sys.argv[1])).key_id)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(data)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    ids = {p.communicate()[0].strip() for p in procs}
    assert len(ids) == 1 and len(next(iter(ids))) == 16
    assert stat.S_IMODE((data / chain.KEY_FILE).stat().st_mode) == 0o600
    assert b"PRIVATE" not in (data / chain.PUBLIC_KEY_FILE).read_bytes()
    # verification needs only the public key
    (data / chain.KEY_FILE).unlink()
    assert set(chain.public_keys(data)) == ids
    assert not list(data.glob("*.tmp")) and not list(data.glob(".*.tmp"))


def test_a_checkpoint_signature_covers_every_field() -> None:
    key = chain.SigningKey.generate()
    keys = {key.key_id: key.public}
    cp = chain.sign_checkpoint(key, 5, "a" * 64, time.time())
    assert chain.checkpoint_problem(cp, keys) is None
    for changed in (
        dataclasses.replace(cp, seq=6),
        dataclasses.replace(cp, head_hash="b" * 64),
        dataclasses.replace(cp, at=cp.at + 1),
        dataclasses.replace(cp, signature=cp.signature[:-4] + "AAAA"),
        dataclasses.replace(cp, signature="not base64!"),
    ):
        assert "bad signature" in (chain.checkpoint_problem(changed, keys) or "")


def test_the_stored_hash_is_the_model_hash() -> None:
    """The stores splice the already-serialised data into the canonical form; it must hash
    exactly as `AuditEvent.chain_hash`, whatever the fields hold."""
    tricky = ['"data":null', 'x","data":null,"y":"', "é✓\u2028", "\\", "", "a\nb"]
    for i, text in enumerate(tricky):
        event = AuditEvent(
            session_id=text,
            kind=EventKind.APPROVAL,
            at=T0 + i / 7,
            direction=Direction.OUT if i % 2 else None,
            method=text,
            request_id=text or None,
            tool=text,
            decision=text,
            approval_id=text,
            duration_ms=i / 3 if i % 3 else None,
            data={text: [text, {"data": None, "n": i, "f": 1e16 + i}], "z": True},
        )
        data = rows.data_json(event)
        assert rows.chain_digest(event, i + 1, "ab" * 32, data) == event.chain_hash(
            i + 1, "ab" * 32
        )


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=-1e-3, max_value=1e-3, allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=600, deadline=None)
@given(_JSON)
def test_data_is_stored_in_the_documented_canonical_form(value: object) -> None:
    """The fast serialiser (orjson) writes exactly what `AuditEvent.canonical` documents
    (the stdlib's sorted compact form), floats of every size and all of Unicode included, so
    a SIEM recomputing the hash from an export gets the stored one."""
    expected = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    assert rows.canonical_json(value) == expected
    event = AuditEvent("s", EventKind.MESSAGE, T0, data={"v": value})
    assert rows.chain_digest(event, 3, GENESIS, rows.data_json(event)) == event.chain_hash(
        3, GENESIS
    )


def test_audit_settings(tmp_path: Path) -> None:
    from mcp_gate.config import ConfigFileError, load_config

    path = tmp_path / "mcp-gate.toml"
    path.write_text("[server]\n")
    audit = load_config(path).model.audit
    assert (audit.enabled, audit.checkpoint_every, audit.retain) == (True, 300.0, 90 * 86400.0)
    path.write_text('[audit]\nretain = "30d"\ncheckpoint_every = "1m"\nenabled = false\n')
    audit = load_config(path).model.audit
    assert (audit.enabled, audit.checkpoint_every, audit.retain) == (False, 60.0, 30 * 86400.0)
    path.write_text('[audit]\nretain = "forever"\n')
    with pytest.raises(ConfigFileError, match="retain"):
        load_config(path)


@pytest.mark.anyio
async def test_one_unrecordable_event_fails_no_one_else(tmp_path: Path) -> None:
    """An event whose data cannot be serialised is recorded as such, on its own: the
    decisions committed with it are on record (it used to fail their whole group commit,
    and, kept for a retry, every commit after it)."""
    from mcp_gate.audit.recorder import Recorder
    from mcp_gate.calls import Principal, ToolCall
    from mcp_gate.policy.engine import Decision

    store = SqliteAuditStore(tmp_path / "gate.db")
    await store.open()
    recorder = Recorder(store, linger=5.0)
    alice = Principal("alice", frozenset({"developers"}))
    allow = Decision("allow", ("reads",), (), (), False, (), (), 0, (), "v1")
    try:
        async with recorder.running():
            sid = recorder.logical_session(alice, "2026-07-28", {"name": "t", "version": "1"})
            recorder.message(sid, Direction.IN, {"jsonrpc": "2.0", "method": "x", "p": object()})
            verdicts = await asyncio.gather(
                *(
                    recorder.decision(
                        sid, alice, ToolCall("sql_query", {"sql": f"SELECT {i}"}), allow
                    )
                    for i in range(3)
                )
            )
            assert verdicts == [None, None, None]  # each on record before it returns
            again = await recorder.decision(sid, alice, ToolCall("sql_query", {}), allow)
            assert again is None
        events = await store.events(session_id=sid)
        kinds = [str(e.event.kind) for e in events]
        assert kinds == ["session_start", "message", *["decision"] * 4, "session_end"]
        assert "not plain JSON" in events[1].event.data["unrecordable"]
        assert recorder.failed == 0 and recorder.lost == 0
        assert (await chain.verify(store, {})).ok
    finally:
        await store.close()
