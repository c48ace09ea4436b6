"""The sealed `requestState` of a held call in the 2026-07-28 era (multi round-trip requests).

The client echoes the state back on its retry, so it is attacker-controlled: it is encrypted
and authenticated (AES-256-GCM, the SDK's codec) and binds the approval id to the principal,
the digest of the call and an expiry. A tampered, expired or replayed-by-another-principal
state is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from mcp.server.request_state import AESGCMRequestStateCodec, InvalidRequestState

from mcp_gate.calls import Principal

KEY_FILE = "request-state.key"


class StateRefused(Exception):
    """A requestState that must not be honoured; the message says why, safely."""


@dataclass(frozen=True, slots=True)
class HeldState:
    """What a sealed state says: which approval, for whom, for which call, until when."""

    approval_id: str
    subject: str
    digest: str
    expires_at: float


class ApprovalStateCodec:
    """Seal and open held-call states."""

    def __init__(self, key: bytes) -> None:
        self._codec = AESGCMRequestStateCodec([key])

    def seal(self, approval_id: str, principal: Principal, digest: str, ttl: float) -> str:
        """A state for `approval_id`, valid for `ttl` seconds for this principal and call."""
        payload = {
            "a": approval_id,
            "s": principal.subject,
            "d": digest,
            "e": time.time() + ttl,
        }
        return self._codec.seal(json.dumps(payload, separators=(",", ":")).encode())

    def open(self, token: str, principal: Principal, digest: str) -> HeldState:
        """The state, if it is intact, unexpired, and bound to this principal and call."""
        try:
            data = json.loads(self._codec.unseal(token))
            state = HeldState(str(data["a"]), str(data["s"]), str(data["d"]), float(data["e"]))
        except (InvalidRequestState, ValueError, KeyError, TypeError):
            raise StateRefused("requestState is not one this gateway issued") from None
        if state.subject != principal.subject:
            raise StateRefused("requestState was issued to another principal")
        if state.digest != digest:
            raise StateRefused("requestState belongs to a different call (arguments changed)")
        if state.expires_at < time.time():
            raise StateRefused("requestState has expired; call again to start a new request")
        return state
