"""Secrets the gateway makes for itself and keeps in its data folder (mode 0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_key(data_dir: Path, name: str) -> bytes:
    """A 32-byte secret from `data_dir/name`, created (0600) on first use; replicas that
    share the folder share the key."""
    path = data_dir / name
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    # Created 0600 from the start: never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key.hex())
    tmp.replace(path)
    return key
