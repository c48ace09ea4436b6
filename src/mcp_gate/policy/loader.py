"""Loading `policies.toml`: parse, validate, locate every error by file and line, compile."""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from mcp_gate.policy.engine import Engine
from mcp_gate.policy.locate import key_lines, line_of
from mcp_gate.policy.model import PolicyFile


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong with a policy file, with where to fix it."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used, with every problem found in it."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A validated, compiled policy and where it came from."""

    path: str
    version: str
    model: PolicyFile
    engine: Engine


def _key_name(loc: tuple[str | int, ...], data: dict) -> str:
    """`rule "reads" → match.sql_kind[1]` from a pydantic location."""
    parts: list[str] = []
    i = 0
    if len(loc) >= 2 and loc[0] in ("rule", "mask") and isinstance(loc[1], int):
        index = loc[1]
        items = data.get(str(loc[0]), [])
        name = items[index].get("name") if index < len(items) and isinstance(items[index], dict) else None
        parts.append(f'{loc[0]} "{name}"' if name else f"{loc[0]} #{index + 1}")
        i = 2
    path = ""
    for part in loc[i:]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("list[str]", "str", "int", "float", "function-after[_check_glob(), str]"):
            continue  # pydantic's union-branch tags say nothing to a policy author
        else:
            path += ("." if path else "") + str(part)
    if path:
        parts.append(path)
    return " → ".join(parts)


def _message(err: dict) -> str:
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err.get("type") == "extra_forbidden":
        return "unknown key (check the spelling; see DESIGN §4 for the keys a policy takes)"
    if err.get("type") == "string_too_short":
        return "must not be empty"
    if err.get("type") == "missing":
        return "is required"
    if err.get("type") == "literal_error" and "input" in err:
        return f"{msg}, got {err['input']!r}"
    return msg


def _duplicate_names(data: dict, lines: dict, file: str) -> list[PolicyProblem]:
    """Two rules with one name: checked on the raw data so it shows beside other errors."""
    rules = data.get("rule")
    if not isinstance(rules, list):
        return []
    problems: list[PolicyProblem] = []
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        name = rule.get("name") if isinstance(rule, dict) else None
        if not isinstance(name, str) or not name.strip():
            continue
        name = name.strip()
        if name in seen:
            first = line_of(lines, ("rule", seen[name], "name"))
            problems.append(
                PolicyProblem(
                    file,
                    line_of(lines, ("rule", index, "name")),
                    _key_name(("rule", index, "name"), data),
                    f'two rules are named "{name}" (the first is at line {first}); '
                    "names identify rules in decisions and audit, so they must be unique",
                )
            )
        else:
            seen[name] = index
    return problems


def parse_policy(text: str, file: str = "policies.toml") -> LoadedPolicy:
    """Validate and compile policy text; raise PolicyError naming file, line and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python < 3.14 puts the position only in the message: "... (at line 2, column 7)".
        found = re.search(r"\(at line (\d+), column \d+\)$", str(exc))
        line = int(found.group(1)) if found else None
        msg = str(exc)[: found.start()].strip() if found else str(exc)
        raise PolicyError([PolicyProblem(file, line, "", f"not valid TOML: {msg}")]) from None

    lines = key_lines(text)
    problems: list[PolicyProblem] = []
    model: PolicyFile | None = None
    try:
        model = PolicyFile.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            problems.append(
                PolicyProblem(file, line_of(lines, loc), _key_name(loc, data), _message(err))
            )

    problems.extend(_duplicate_names(data, lines, file))
    if model is not None:
        for index, rule in enumerate(model.rule):
            if rule.decision == "review" and not (rule.approvers or model.approval.approvers):
                problems.append(
                    PolicyProblem(
                        file,
                        line_of(lines, ("rule", index, "decision")),
                        _key_name(("rule", index, "decision"), data),
                        "nobody could approve this review: give the rule `approvers` or set "
                        "[approval] approvers",
                    )
                )
        if model.default == "review" and not model.approval.approvers:
            problems.append(
                PolicyProblem(
                    file,
                    line_of(lines, ("default",)),
                    "default",
                    'default = "review" needs [approval] approvers',
                )
            )
    if problems or model is None:
        problems.sort(key=lambda p: p.line or 0)
        raise PolicyError(problems)

    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    return LoadedPolicy(path=file, version=version, model=model, engine=Engine(model, version))


def load_policy(path: str | Path) -> LoadedPolicy:
    """Read and compile a policy file; raise PolicyError (with file and line) if it is bad."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PolicyError([PolicyProblem(str(p), None, "", f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            [PolicyProblem(str(p), None, "", f"not UTF-8 text (byte {exc.start})")]
        ) from None
    return parse_policy(text, str(p))
