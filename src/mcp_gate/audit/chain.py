"""The audit chain's tamper evidence: signed checkpoints, verification, retention.

- Signing key: Ed25519, kept in the data folder as `audit-signing.key` (created 0600 on first
  use, PKCS#8 PEM); its public half is also written to `audit-signing.pub` so an auditor can
  verify with the public key alone. `key_id` is the first 16 hex characters of the sha256 of
  the raw public key. Older public keys (after a rotation) stay verifiable as further
  `audit-signing*.pub` files in the folder.
- `make_checkpoint` signs the current head `(seq, hash)` and keeps it in the store; it also
  appends a `checkpoint` event (session id `""`: it belongs to no session) so exports carry
  the signature inline.
- `verify` walks the chain in pages and reports the first broken link.
- `prune` checkpoints first, then deletes events older than the retention cut up to the last
  checkpoint at or before the cut, so the remaining chain starts at a signed anchor.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcp_gate.gateway.keys import write_new

from .model import GENESIS, AuditEvent, Checkpoint, EventKind, StoredEvent, VerifyReport
from .rows import stored_digest
from .store import AuditStore

log = logging.getLogger("mcp_gate.audit")

KEY_FILE = "audit-signing.key"
PUBLIC_KEY_FILE = "audit-signing.pub"
PAGE = 1000
# How far around a row's position verify looks for the position its hash was written for
# (to tell a moved row from an edited one).
REORDER_WINDOW = 10_000


class SigningKeyError(Exception):
    """The signing key cannot be read or created (the message names the file)."""


def key_id_of(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: 16 hex chars of the sha256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The private key that signs checkpoints, with its `key_id`."""

    private: Ed25519PrivateKey
    key_id: str

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key (tests and first use)."""
        private = Ed25519PrivateKey.generate()
        return cls(private, key_id_of(private.public_key()))

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


def _public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_signing_key(data_dir: Path) -> SigningKey:
    """The checkpoint signing key from `data_dir/audit-signing.key`, created (0600) on first
    use; two processes creating it at once end up with the same key."""
    path = data_dir / KEY_FILE
    try:
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fresh = Ed25519PrivateKey.generate()
            pem = fresh.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_new(path, pem, 0o600)  # lost the race: the winner's key is read below
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SigningKeyError(
            f"cannot read or create the audit signing key {path}: {exc.strerror}"
        ) from None
    except ValueError:
        raise SigningKeyError(f"{path} is not a PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    pub = data_dir / PUBLIC_KEY_FILE
    if not pub.exists():
        with contextlib.suppress(OSError):
            write_new(pub, _public_pem(private.public_key()), 0o644)
    return SigningKey(private, key_id_of(private.public_key()))


def public_keys(data_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Every public key verify accepts, by key id: the signing key's and every
    `audit-signing*.pub` in `data_dir`. Unreadable files are skipped (and logged)."""
    keys: dict[str, Ed25519PublicKey] = {}
    private = data_dir / KEY_FILE
    if private.exists():
        with contextlib.suppress(SigningKeyError):
            key = load_signing_key(data_dir)
            keys[key.key_id] = key.public
    for path in sorted(data_dir.glob("audit-signing*.pub")):
        try:
            public = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError):
            log.warning("skipping %s: not a readable PEM public key", path)
            continue
        if isinstance(public, Ed25519PublicKey):
            keys[key_id_of(public)] = public
    return keys


def checkpoint_payload(seq: int, head_hash: str, at: float, key_id: str) -> bytes:
    """The bytes a checkpoint's signature covers."""
    doc = {"v": 1, "seq": seq, "head": head_hash, "at": repr(float(at)), "key": key_id}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_checkpoint(key: SigningKey, seq: int, head_hash: str, at: float) -> Checkpoint:
    """A checkpoint stating that the chain had `head_hash` at `seq`, signed with `key`."""
    signature = key.private.sign(checkpoint_payload(seq, head_hash, at, key.key_id))
    return Checkpoint(seq, head_hash, float(at), key.key_id, _b64(signature))


def checkpoint_problem(checkpoint: Checkpoint, keys: dict[str, Ed25519PublicKey]) -> str | None:
    """Why `checkpoint`'s signature does not verify with `keys`, or None when it does."""
    public = keys.get(checkpoint.key_id)
    if public is None:
        return (
            f"the checkpoint at seq {checkpoint.seq} is signed by an unknown key "
            f"{checkpoint.key_id!r} (forged, or its public key is missing from the data folder)"
        )
    try:
        public.verify(
            _unb64(checkpoint.signature),
            checkpoint_payload(
                checkpoint.seq, checkpoint.head_hash, checkpoint.at, checkpoint.key_id
            ),
        )
    except (InvalidSignature, ValueError):
        return f"the checkpoint at seq {checkpoint.seq} has a bad signature (forged or altered)"
    return None


async def make_checkpoint(
    store: AuditStore, key: SigningKey, now: float | None = None
) -> Checkpoint:
    """Sign the current head and keep it; nothing new when the chain has not moved since the
    last checkpoint (its own `checkpoint` event aside)."""
    at = time.time() if now is None else now
    seq, head_hash = await store.head()
    last = await store.last_checkpoint()
    if last is not None and last.seq == seq:
        return last
    if last is not None and last.seq == seq - 1:
        tail = await store.events(after_seq=seq - 1, limit=1)
        if tail and tail[0].event.kind == EventKind.CHECKPOINT:
            return last
    checkpoint = sign_checkpoint(key, seq, head_hash, at)
    await store.add_checkpoint(checkpoint)
    await store.append(
        [
            AuditEvent(
                session_id="",
                kind=EventKind.CHECKPOINT,
                at=at,
                data={
                    "seq": checkpoint.seq,
                    "head_hash": checkpoint.head_hash,
                    "key_id": checkpoint.key_id,
                    "signature": checkpoint.signature,
                    "signed_at": checkpoint.at,
                },
            )
        ]
    )
    return checkpoint


async def walk(
    store: AuditStore,
    *,
    session_id: str | None = None,
    since: float | None = None,
    after_seq: int = 0,
    page: int = PAGE,
) -> AsyncIterator[StoredEvent]:
    """Every matching event in chain order, read `page` at a time (never all in memory)."""
    while True:
        batch = await store.events(
            session_id=session_id, since=since, after_seq=after_seq, limit=page
        )
        for stored in batch:
            yield stored
        if len(batch) < page:
            return
        after_seq = batch[-1].seq


def _moved_from(stored: StoredEvent) -> int | None:
    """The position `stored`'s hash was computed for, if it is near another one."""
    for delta in range(1, REORDER_WINDOW + 1):
        for candidate in (stored.seq - delta, stored.seq + delta):
            if candidate >= 1 and stored_digest(stored, candidate) == stored.hash:
                return candidate
    return None


def _row_problem(stored: StoredEvent) -> str | None:
    try:
        digest = stored_digest(stored)
    except (TypeError, ValueError):
        return f"event {stored.seq} cannot be hashed: its content was changed by hand"
    if digest == stored.hash:
        return None
    moved = _moved_from(stored)
    if moved is not None:
        return f"reordered: the event at seq {stored.seq} was written at seq {moved}"
    return f"edited: the content of event {stored.seq} does not match its hash"


async def verify(
    store: AuditStore, keys: dict[str, Ed25519PublicKey], *, page: int = PAGE
) -> VerifyReport:
    """Walk the whole chain; the report names the first broken link, if any."""
    checkpoints = await store.checkpoints()
    head_seq, head_hash = await store.head()
    pending = list(checkpoints)  # ascending seq
    good = 0
    checked = 0
    first: int | None = None
    prev: StoredEvent | None = None

    def report(broken: int | None = None, problem: str | None = None) -> VerifyReport:
        return VerifyReport(
            ok=problem is None,
            events=checked,
            checkpoints=good,
            first_seq=first,
            last_seq=prev.seq if prev is not None else None,
            broken_at=broken,
            problem=problem,
        )

    async for stored in walk(store, page=page):
        # Checkpoints before this event (the pruned part): their signatures must hold.
        while pending and pending[0].seq < stored.seq:
            cp = pending.pop(0)
            problem = checkpoint_problem(cp, keys)
            if problem:
                return report(cp.seq, problem)
            good += 1
            if prev is None and cp.seq == stored.seq - 1 and cp.head_hash != stored.prev_hash:
                return report(
                    stored.seq,
                    f"unanchored: event {stored.seq} does not link to the signed checkpoint "
                    f"at seq {cp.seq} (events before it were changed or replaced)",
                )
        if prev is None:
            first = stored.seq
            if stored.seq == 1:
                if stored.prev_hash != GENESIS:
                    return report(1, "the first event does not start from the genesis hash")
            elif not any(c.seq == stored.seq - 1 for c in checkpoints):
                return report(
                    stored.seq,
                    f"unanchored: the chain starts at seq {stored.seq} with no signed "
                    f"checkpoint at seq {stored.seq - 1} (events 1..{stored.seq - 1} were "
                    "deleted without a checkpoint)",
                )
        else:
            expected = prev.seq + 1
            if stored.seq != expected:
                missing = (
                    f"event {expected} is"
                    if stored.seq == expected + 1
                    else f"events {expected}..{stored.seq - 1} are"
                )
                return report(expected, f"deleted: {missing} missing (a gap in the chain)")
        problem = _row_problem(stored)
        if problem:
            return report(stored.seq, problem)
        if prev is not None and stored.prev_hash != prev.hash:
            return report(
                stored.seq,
                f"broken link: event {stored.seq} does not link to event {prev.seq} "
                f"(event {prev.seq} was changed and re-hashed, or {stored.seq} replaced)",
            )
        checked += 1
        prev = stored
        while pending and pending[0].seq == stored.seq:
            cp = pending.pop(0)
            problem = checkpoint_problem(cp, keys)
            if problem:
                return report(cp.seq, problem)
            if cp.head_hash != stored.hash:
                return report(
                    cp.seq,
                    f"the signed checkpoint at seq {cp.seq} does not match event {cp.seq} "
                    "(the chain was rewritten after it was signed)",
                )
            good += 1
    for cp in pending:
        problem = checkpoint_problem(cp, keys)
        if problem:
            return report(cp.seq, problem)
        if prev is not None and cp.seq > prev.seq:
            return report(
                prev.seq + 1,
                f"deleted: a signed checkpoint covers seq {cp.seq} but the chain ends at "
                f"{prev.seq}",
            )
        good += 1
    end = prev.seq if prev is not None else max((c.seq for c in checkpoints), default=0)
    if head_seq > end:
        return report(end + 1, f"deleted: the chain head is at seq {head_seq} but ends at {end}")
    if prev is not None and head_seq == prev.seq and head_hash != prev.hash:
        return report(prev.seq, f"the chain head does not match event {prev.seq}")
    return report()


async def prune(store: AuditStore, key: SigningKey, retain_seconds: float, now: float) -> int:
    """Apply retention: checkpoint the head, then delete the events older than
    `now - retain_seconds` up to the last checkpoint at or before that cut; the number of
    events deleted."""
    cut = now - retain_seconds
    await make_checkpoint(store, key, now)
    newer = await store.events(since=cut, limit=1)
    head_seq, _ = await store.head()
    boundary = newer[0].seq - 1 if newer else head_seq
    anchor = None
    for cp in await store.checkpoints():
        if cp.seq <= boundary:
            anchor = cp
    if anchor is None or anchor.seq == 0:
        return 0
    deleted = await store.prune(anchor.seq)
    if deleted:
        log.info(
            "audit: pruned %d events up to seq %d (retain %.0fs)",
            deleted,
            anchor.seq,
            retain_seconds,
        )
    return deleted


async def maintain(
    store: AuditStore,
    key: SigningKey,
    *,
    checkpoint_every: float,
    retain: float,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run forever (until cancelled): a checkpoint every `checkpoint_every` seconds, and
    retention with each one. A failure is logged and retried at the next tick."""
    while True:
        await asyncio.sleep(checkpoint_every)
        try:
            await prune(store, key, retain, clock())
        except Exception:
            log.exception(
                "audit checkpoint / retention failed; retrying in %.0fs", checkpoint_every
            )
