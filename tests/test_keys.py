"""The gateway's own secrets (`gateway/keys.py`): processes racing to create one key all end
up with the same key, created 0600."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path
from typing import Any

from mcp_gate.audit.chain import load_signing_key
from mcp_gate.gateway.keys import load_key

RACERS = 8
ROUNDS = 30


def _race(start: Any, data_dir: str, name: str, out: Any) -> None:
    start.wait()
    out.put(load_key(Path(data_dir), name).hex())


def test_processes_creating_a_key_at_once_share_one(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for round_ in range(ROUNDS):
        data_dir = tmp_path / f"round{round_}"  # not created yet: the racers create it too
        start, out = ctx.Barrier(RACERS), ctx.Queue()
        racers = [
            ctx.Process(target=_race, args=(start, str(data_dir), "state.key", out))
            for _ in range(RACERS)
        ]
        for p in racers:
            p.start()
        keys = {out.get(timeout=30) for _ in racers}
        for p in racers:
            p.join(timeout=30)
            assert p.exitcode == 0
        path = data_dir / "state.key"
        assert keys == {path.read_text().strip()}, f"round {round_}: {len(keys)} keys"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(p.name for p in data_dir.iterdir()) == ["state.key"]  # no temp left
        assert len(bytes.fromhex(keys.pop())) == 32


def test_an_existing_key_is_kept(tmp_path: Path) -> None:
    first = load_key(tmp_path, "hash.key")
    assert load_key(tmp_path, "hash.key") == first
    assert load_key(tmp_path, "other.key") != first


def test_the_audit_signing_key_uses_the_same_helper(tmp_path: Path) -> None:
    key = load_signing_key(tmp_path)
    assert load_signing_key(tmp_path).key_id == key.key_id
    assert stat.S_IMODE((tmp_path / "audit-signing.key").stat().st_mode) == 0o600
