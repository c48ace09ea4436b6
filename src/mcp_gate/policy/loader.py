"""Loading `policies.toml`: parse, validate, locate every error by file and line, compile."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mcp_gate.policy.engine import Engine
from mcp_gate.policy.model import PolicyFile
from mcp_gate.tomlfile import ConfigFileError, Problem, TomlDoc, parse_toml, read_toml, validate

PolicyProblem = Problem


class PolicyError(ConfigFileError):
    """A policy file that cannot be used, with every problem found in it."""


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A validated, compiled policy and where it came from."""

    path: str
    version: str
    model: PolicyFile
    engine: Engine


def _duplicate_names(doc: TomlDoc) -> list[Problem]:
    """Two rules with one name: checked on the raw data so it shows beside other errors."""
    rules = doc.data.get("rule")
    if not isinstance(rules, list):
        return []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        name = rule.get("name") if isinstance(rule, dict) else None
        if not isinstance(name, str) or not name.strip():
            continue
        name = name.strip()
        if name in seen:
            first = doc.problem(("rule", seen[name], "name"), "").line
            problems.append(
                doc.problem(
                    ("rule", index, "name"),
                    f'two rules are named "{name}" (the first is at line {first}); '
                    "names identify rules in decisions and audit, so they must be unique",
                )
            )
        else:
            seen[name] = index
    return problems


def _unapprovable(doc: TomlDoc, model: PolicyFile) -> list[Problem]:
    """A review that no group could ever approve would hold calls forever."""
    problems = [
        doc.problem(
            ("rule", index, "decision"),
            "nobody could approve this review: give the rule `approvers` or set "
            "[approval] approvers",
        )
        for index, rule in enumerate(model.rule)
        if rule.decision == "review" and not (rule.approvers or model.approval.approvers)
    ]
    if model.default == "review" and not model.approval.approvers:
        problems.append(doc.problem(("default",), 'default = "review" needs [approval] approvers'))
    return problems


def _compile(doc: TomlDoc) -> LoadedPolicy:
    model, problems = validate(doc, PolicyFile, "a policy")
    problems += _duplicate_names(doc)
    if model is not None:
        problems += _unapprovable(doc, model)
    if problems or model is None:
        raise PolicyError(problems)
    version = hashlib.sha256(doc.text.encode()).hexdigest()[:16]
    return LoadedPolicy(path=doc.file, version=version, model=model, engine=Engine(model, version))


def _as_policy_error(exc: ConfigFileError) -> PolicyError:
    return PolicyError(exc.problems)


def parse_policy(text: str, file: str = "policies.toml") -> LoadedPolicy:
    """Validate and compile policy text; raise PolicyError naming file, line and key."""
    try:
        doc = parse_toml(text, file)
    except ConfigFileError as exc:
        raise _as_policy_error(exc) from None
    return _compile(doc)


def load_policy(path: str | Path) -> LoadedPolicy:
    """Read and compile a policy file; raise PolicyError (with file and line) if it is bad."""
    try:
        doc = read_toml(path)
    except ConfigFileError as exc:
        raise _as_policy_error(exc) from None
    return _compile(doc)
