"""Policies: the `policies.toml` models, the loader that locates errors, and the engine."""

from mcp_gate.policy.engine import Decision, Engine, RuleHit
from mcp_gate.policy.loader import (
    LoadedPolicy,
    PolicyError,
    PolicyProblem,
    load_policy,
    parse_policy,
)

__all__ = [
    "Decision",
    "Engine",
    "LoadedPolicy",
    "PolicyError",
    "PolicyProblem",
    "RuleHit",
    "load_policy",
    "parse_policy",
]
