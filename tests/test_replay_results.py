"""`mcp-gate replay` of the result shapes a real gateway returns: a DBA's session over the sample
shop through a real SDK client (an empty read, a read cut at max_rows, a wide read, a database
error, `sql_explain`, a write without and with RETURNING), recorded by the gateway itself and
replayed from its store. Each result must say what the call did, and the timeline must start
with the session."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from approval_helpers import db_value
from gateway_helpers import Gateway, text_of
from mcp_gate.audit import commands
from shop_helpers import sample_shop, shop_gateway

pytestmark = pytest.mark.slow

EMPTY = "SELECT id, status FROM orders WHERE id < 0"
BIG = "SELECT id, status FROM orders ORDER BY id"  # 5,000 rows; the config's max_rows is 100
WIDE = "SELECT " + ", ".join(f"id AS c{i}" for i in range(20)) + " FROM orders WHERE id = 1"
FAILING = "SELECT 1 / (id - id) FROM orders WHERE id = 1"
EXPLAINED = "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id"
DELETE = "DELETE FROM orders WHERE status = 'cancelled' AND id % 5 = 1"
UPDATE = "UPDATE orders SET status = 'shipped' WHERE id IN (2, 3) RETURNING id, status"


@pytest.fixture(scope="module")
def gateway(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with (
        sample_shop(pg_dsn, "test_replay") as shop,
        shop_gateway(shop, tmp_path_factory.mktemp("replay")) as gw,
    ):
        yield gw


def run(command: object, *args: object, **kw: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = command(  # type: ignore[operator]
        *args, out=Console(file=out, width=200), err=Console(file=err, width=200), **kw
    )
    return code, out.getvalue(), err.getvalue()


async def dba_session(gateway: Gateway) -> dict[str, object]:
    """Bob (dba: writes run without approval) calls each shape once, in a legacy session."""
    token = gateway.token("bob", "dba")
    seen: dict[str, object] = {}
    async with gateway.client(token, "legacy") as client:
        for name, tool, sql in (
            ("empty", "sql_query", EMPTY),
            ("big", "sql_query", BIG),
            ("wide", "sql_query", WIDE),
            ("failing", "sql_query", FAILING),
            ("explained", "sql_explain", EXPLAINED),
            ("delete", "sql_query", DELETE),
            ("update", "sql_query", UPDATE),
        ):
            seen[name] = await client.call_tool(tool, {"sql": sql})
    return seen


def replayed(gateway: Gateway, subject: str) -> tuple[dict, str]:
    """The subject's newest session once it has ended, and its replay."""
    deadline = time.monotonic() + 30
    while True:
        code, out, err = run(
            commands.sessions_list,
            gateway.config,
            principal=subject,
            since=None,
            limit=1,
            as_json=True,
        )
        assert code == 0, err
        listed = json.loads(out)["sessions"]
        if listed and listed[0]["ended"] is not None:
            break
        assert time.monotonic() < deadline, "the session was not recorded as ended"
        time.sleep(0.1)  # the recorder commits in small batches
    session = listed[0]
    code, out, err = run(commands.replay, gateway.config, session["id"], follow=False)
    assert code == 0, err
    return session, out


def test_replay_says_what_each_call_did(gateway: Gateway) -> None:
    to_delete = db_value(
        gateway.db, "SELECT count(*) FROM orders WHERE status = 'cancelled' AND id % 5 = 1"
    )
    assert to_delete > 1
    seen = anyio.run(dba_session, gateway)
    for name in ("empty", "big", "wide", "explained", "delete", "update"):
        assert not seen[name].is_error, f"{name}: {text_of(seen[name])}"
    assert seen["failing"].is_error
    assert seen["delete"].structured_content["status"] == f"DELETE {to_delete}"
    assert seen["big"].structured_content["truncated"] is True

    session, timeline = replayed(gateway, "bob")
    blocks = timeline.split("← tools/call result")
    assert len(blocks) == 8, timeline  # before the first result, then one per call
    empty, big, wide, failing, explained, delete, update = blocks[1:]

    assert "0 rows" in empty and "status" in empty  # the header, and that nothing came back
    assert "… 95 more rows, truncated at max_rows (100 rows returned)" in big

    assert "c11" in wide and "c12" not in wide and "… 8 more columns" in wide

    assert " error" in failing.splitlines()[0] and "division by zero" in failing

    plan = seen["explained"].structured_content
    assert f"plan: estimated {plan['estimated_rows']} rows, cost {plan['estimated_cost']:g}" in (
        explained
    )
    assert "Hash Join" in explained and "Seq Scan on orders" in explained

    # A write without RETURNING: its tag and count, not an empty table and a blank line.
    assert f"DELETE {to_delete} ({to_delete:,} rows affected)" in delete
    assert delete.splitlines()[1].strip().startswith("DELETE"), delete
    assert all(line.strip() for line in delete.splitlines()[1:]), delete
    assert "UPDATE 2 (2 rows affected)" in update and "shipped" in update

    # The timeline starts with the session: nothing before "session started", no negative
    # offset (the initialize that opened the session arrived before it was recorded).
    offsets = [float(x) for x in re.findall(r"(?m)^\s*([+-]\d+\.\d{3})s ", timeline)]
    assert len(offsets) == session["events"], timeline
    assert min(offsets) == 0.0 and offsets[0] == 0.0, offsets
    assert timeline.index("session started") < timeline.index("→ initialize")


def test_replay_of_a_body_that_was_not_json(tmp_path: Path) -> None:
    """What the gateway records of a body it could not decode (`{"unparsed": …}`) is shown as
    such, not as an empty "result"."""
    from mcp_gate.audit import AuditEvent, Direction, EventKind, SqliteAuditStore

    config = tmp_path / "mcp-gate.toml"
    config.write_text('[server]\nstore = "sqlite:///.mcp-gate/gate.db"\n')
    sid, t = "ses_raw", 1_800_000_000.0
    events = [
        AuditEvent(sid, EventKind.SESSION_START, t, data={"transport": "http"}),
        AuditEvent(
            sid,
            EventKind.MESSAGE,
            t + 0.5,
            direction=Direction.OUT,
            data={"message": {"unparsed": "<html>" + "x" * 1000}},
        ),
    ]

    async def write() -> None:
        store = SqliteAuditStore(tmp_path / ".mcp-gate" / "gate.db")
        await store.open()
        await store.append(events)
        await store.close()

    anyio.run(write)
    code, out, err = run(commands.replay, config, sid, follow=False)
    assert code == 0, err
    assert "not JSON-RPC (1006 characters)" in out and "<html>xxx" in out
    assert "… 606 more characters" in out and "result" not in out
