"""Reading TOML config files so that every problem names its file, line and key."""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from mcp_gate.toml_lines import Path as KeyPath
from mcp_gate.toml_lines import key_lines, line_of

M = TypeVar("M", bound=BaseModel)

# pydantic's union-branch and validator tags say nothing to the person editing the file.
_TAG = re.compile(r"^(list\[.*\]|str|int|float|bool|dict\[.*\]|function-\w+\[.*\]|\[key\])$")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a file, with where to fix it."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigFileError(Exception):
    """A file that cannot be used, with every problem found in it."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.line or 0)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class TomlDoc:
    """Parsed TOML text with the line of every key."""

    file: str
    text: str
    data: dict[str, Any]
    lines: dict[KeyPath, int]

    def key_name(self, loc: tuple[str | int, ...]) -> str:
        """`rule "reads" → match.sql_kind[1]` from a location in the data."""
        parts: list[str] = []
        start = 0
        if len(loc) >= 2 and isinstance(loc[0], str) and isinstance(loc[1], int):
            items = self.data.get(loc[0])
            item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
            name = item.get("name") if isinstance(item, dict) else None
            label = f'"{name}"' if isinstance(name, str) and name.strip() else f"#{loc[1] + 1}"
            parts.append(f"{loc[0]} {label}")
            start = 2
        path = ""
        for part in loc[start:]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif not _TAG.match(str(part)):
                path += ("." if path else "") + str(part)
        if path:
            parts.append(path)
        return " → ".join(parts)

    def problem(self, loc: tuple[str | int, ...], message: str) -> Problem:
        """A problem at `loc`, placed on the line of the closest key the text names."""
        return Problem(self.file, line_of(self.lines, loc), self.key_name(loc), message)


def parse_toml(text: str, file: str) -> TomlDoc:
    """Parse TOML text; a syntax error becomes a ConfigFileError with its line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python < 3.14 puts the position only in the message: "... (at line 2, column 7)".
        found = re.search(r"\(at line (\d+), column \d+\)$", str(exc))
        line = int(found.group(1)) if found else None
        msg = str(exc)[: found.start()].strip() if found else str(exc)
        raise ConfigFileError([Problem(file, line, "", f"not valid TOML: {msg}")]) from None
    return TomlDoc(file, text, data, key_lines(text))


def read_toml(path: str | Path) -> TomlDoc:
    """Read and parse a TOML file; unreadable, non-UTF-8 or invalid text is a ConfigFileError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigFileError([Problem(str(p), None, "", f"cannot read: {reason}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            [Problem(str(p), None, "", f"not UTF-8 text (byte {exc.start})")]
        ) from None
    return parse_toml(text, str(p))


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of `loc`, following fields down."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            continue  # a key of a dict field such as `connections.demo`
        current = _inner_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside `X | None`, `list[X]`, `dict[str, X]` or `Annotated[...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _message(err: Any, what: str, model: type[BaseModel]) -> str:
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    kind = err.get("type")
    if kind == "extra_forbidden":
        loc = tuple(err["loc"])
        holder = _model_at(model, loc)
        keys = sorted(holder.model_fields) if holder else []
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        hint = f'did you mean "{close[0]}"? ' if close else ""
        known = f"keys here: {', '.join(keys)}" if keys else f"see the keys {what} takes"
        return f"unknown key ({hint}{known})"
    if kind == "string_pattern_mismatch":
        return "must start with a letter and hold only letters, digits, '_' and '-'"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "missing":
        return "is required"
    if kind == "literal_error" and "input" in err:
        return f"{msg}, got {err['input']!r}"
    return msg


def validate(doc: TomlDoc, model: type[M], what: str) -> tuple[M | None, list[Problem]]:
    """Validate the data against `model`; every error becomes a located Problem."""
    try:
        return model.model_validate(doc.data), []
    except ValidationError as exc:
        return None, [doc.problem(tuple(e["loc"]), _message(e, what, model)) for e in exc.errors()]
