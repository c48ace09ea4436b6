"""Line numbers for TOML keys.

`tomllib` returns plain dicts without positions, but a person fixing a policy needs the line.
This scanner walks text that tomllib has already accepted and records, for every key path
(`("rule", 2, "match", "sql_kind", 1)`), the line it starts on. It understands the parts of
TOML a config uses: tables, arrays of tables, dotted and quoted keys, inline tables, arrays
spanning lines, and all four string forms.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self.aot: dict[Path, int] = {}

    # -- low level -------------------------------------------------------------------------
    def peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def advance(self, n: int = 1) -> None:
        chunk = self.s[self.i : self.i + n]
        self.line += chunk.count("\n")
        self.i += n

    def skip_ws(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            elif c == "#":
                end = self.s.find("\n", self.i)
                self.advance((end if end >= 0 else len(self.s)) - self.i)
            else:
                return

    def record(self, path: Path, line: int) -> None:
        self.lines.setdefault(path, line)

    # -- tokens ----------------------------------------------------------------------------
    def key_part(self) -> str:
        c = self.peek()
        if c in "\"'":
            return self.string()
        m = _BARE_KEY.match(self.s, self.i)
        if not m:
            raise ValueError(f"unexpected {c!r} at line {self.line}")
        self.advance(m.end() - self.i)
        return m.group(0)

    def dotted_key(self) -> list[str]:
        parts = [self.key_part()]
        while True:
            self.skip_ws(False)
            if self.peek() != ".":
                return parts
            self.advance()
            self.skip_ws(False)
            parts.append(self.key_part())

    def string(self) -> str:
        for quote in ('"""', "'''"):
            if self.peek(3) == quote:
                self.advance(3)
                end = self.s.find(quote, self.i)
                while end >= 0 and quote == '"""' and _escaped(self.s, end):
                    end = self.s.find(quote, end + 1)
                end = len(self.s) if end < 0 else end
                # A closing run may hold up to two extra quote characters.
                while self.s[end + 3 : end + 4] == quote[0]:
                    end += 1
                value = self.s[self.i : end]
                self.advance(end + 3 - self.i)
                return value
        quote = self.peek()
        self.advance()
        start = self.i
        while self.i < len(self.s) and self.s[self.i] != quote:
            if quote == '"' and self.s[self.i] == "\\":
                self.advance()
            self.advance()
        value = self.s[start : self.i]
        self.advance()
        return value

    def value(self, path: Path) -> None:
        c = self.peek()
        if c in "\"'":
            self.string()
        elif c == "[":
            self.array(path)
        elif c == "{":
            self.inline_table(path)
        else:
            while self.i < len(self.s) and self.s[self.i] not in ",]}\n#":
                self.advance()

    def array(self, path: Path) -> None:
        self.advance()  # [
        index = 0
        while True:
            self.skip_ws(True)
            if self.peek() in ("]", ""):
                self.advance()
                return
            self.record((*path, index), self.line)
            self.value((*path, index))
            index += 1
            self.skip_ws(True)
            if self.peek() == ",":
                self.advance()

    def inline_table(self, path: Path) -> None:
        self.advance()  # {
        while True:
            self.skip_ws(True)
            if self.peek() in ("}", ""):
                self.advance()
                return
            self.key_value(path)
            self.skip_ws(True)
            if self.peek() == ",":
                self.advance()

    def key_value(self, table: Path) -> None:
        line = self.line
        parts = self.dotted_key()
        path: Path = table
        for part in parts:
            path = (*path, part)
            self.record(path, line)
        self.skip_ws(False)
        if self.peek() != "=":
            raise ValueError(f"expected '=' at line {self.line}")
        self.advance()
        self.skip_ws(False)
        self.value(path)

    def resolve(self, parts: Sequence[str]) -> Path:
        """Map a header's key parts to a path, descending into the latest array element."""
        path: Path = ()
        for part in parts:
            path = (*path, part)
            if path in self.aot:
                path = (*path, self.aot[path])
        return path

    def header(self) -> Path:
        line = self.line
        is_array = self.peek(2) == "[["
        self.advance(2 if is_array else 1)
        self.skip_ws(False)
        parts = self.dotted_key()
        self.skip_ws(False)
        self.advance(2 if is_array else 1)
        if is_array:
            parent = self.resolve(parts[:-1])
            base = (*parent, parts[-1])
            self.aot[base] = self.aot.get(base, -1) + 1
            self.record(base, line)
            path = (*base, self.aot[base])
        else:
            path = self.resolve(parts)
            for end in range(1, len(path)):  # `[a.b]` also places `a` when nothing did yet
                self.record(path[:end], line)
        self.record(path, line)
        return path

    def document(self) -> None:
        table: Path = ()
        while True:
            self.skip_ws(True)
            if self.i >= len(self.s):
                return
            if self.peek() == "[":
                table = self.header()
            else:
                self.key_value(table)


def _escaped(s: str, pos: int) -> bool:
    backslashes = 0
    while pos - 1 - backslashes >= 0 and s[pos - 1 - backslashes] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def key_lines(text: str) -> dict[Path, int]:
    """Return the 1-based line of every key path in `text` (best effort, never raises)."""
    scanner = _Scanner(text)
    # Keep what was found on a scan error: positions help the reader, they check nothing.
    with contextlib.suppress(ValueError, IndexError):
        scanner.document()
    return scanner.lines


def line_of(lines: dict[Path, int], loc: Sequence[str | int]) -> int | None:
    """The line of the longest prefix of `loc` that the text names, or None."""
    path: Path = tuple(loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None
