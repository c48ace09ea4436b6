"""The sealed requestState of held calls: only the issuing principal, for the same call,
before expiry, with an untampered token, gets its approval back."""

from __future__ import annotations

import secrets

import pytest

from mcp_gate.calls import Principal
from mcp_gate.gateway.approval_state import ApprovalStateCodec, StateRefused

ALICE = Principal("alice", frozenset({"developers"}))
MALLORY = Principal("mallory", frozenset({"developers"}))


def test_round_trip() -> None:
    codec = ApprovalStateCodec(secrets.token_bytes(32))
    token = codec.seal("ap_1", ALICE, "sha256:abc", ttl=60)
    state = codec.open(token, ALICE, "sha256:abc")
    assert state.approval_id == "ap_1" and state.subject == "alice"
    assert "ap_1" not in token and "alice" not in token  # encrypted, not just signed


@pytest.mark.parametrize(
    ("principal", "digest", "ttl", "reason"),
    [
        (MALLORY, "sha256:abc", 60, "another principal"),
        (ALICE, "sha256:changed", 60, "different call"),
        (ALICE, "sha256:abc", -1, "expired"),
    ],
)
def test_refusals(principal: Principal, digest: str, ttl: float, reason: str) -> None:
    codec = ApprovalStateCodec(secrets.token_bytes(32))
    token = codec.seal("ap_1", ALICE, "sha256:abc", ttl=ttl)
    with pytest.raises(StateRefused, match=reason):
        codec.open(token, principal, digest)


def test_tampered_and_foreign_tokens() -> None:
    codec = ApprovalStateCodec(secrets.token_bytes(32))
    token = codec.seal("ap_1", ALICE, "sha256:abc", ttl=60)
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    other = ApprovalStateCodec(secrets.token_bytes(32)).seal("ap_1", ALICE, "sha256:abc", 60)
    for bad in (flipped, other, "", "v1.", "not a state", token + "x"):
        with pytest.raises(StateRefused, match="not one this gateway issued"):
            codec.open(bad, ALICE, "sha256:abc")
