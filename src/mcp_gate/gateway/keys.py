"""Secrets the gateway makes for itself and keeps in its data folder (mode 0600).

Creation is atomic across processes (`write_new`): replicas sharing a data folder that start
at the same moment all end up holding the one key that reached the final name first."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_new(path: Path, data: bytes, mode: int) -> bool:
    """Create `path` with `data` unless it exists; True if this call created it.

    Atomic: the data goes to a private temporary file (created with `mode`, so never
    readable by others, not even for a moment), fsynced, then hard-linked into place. The
    link fails if the name exists, so a reader never sees a half-written file and two
    racing writers cannot both win (`os.replace` would let the second overwrite the first)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_key(data_dir: Path, name: str) -> bytes:
    """A 32-byte secret from `data_dir/name`, created (0600) on first use; replicas that
    share the folder share the key, even when they create it at the same moment."""
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        write_new(path, secrets.token_bytes(32).hex().encode(), 0o600)  # loser reads below
    return bytes.fromhex(path.read_text().strip())
