"""Case-insensitive globs, compiled once to regular expressions.

Syntax: `*` any run of characters (dots included, so `*.ssn` matches `public.users.ssn`),
`?` one character, `[abc]` / `[a-z]` / `[!abc]` a character class, `\\` escapes the next
character. Anything else is literal. An unclosed `[`, an empty class or an empty pattern is an
error rather than a silent literal: a policy that does not mean what it says is worse than one
that does not load.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class GlobError(ValueError):
    """A glob pattern that cannot be compiled."""


def glob_to_regex(pattern: str) -> str:
    """Translate one glob to an (unanchored) regular expression source."""
    if not pattern:
        raise GlobError("empty pattern")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            while i + 1 < n and pattern[i + 1] == "*":
                i += 1
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\":
            if i + 1 >= n:
                raise GlobError(f"pattern {pattern!r} ends with a lone backslash")
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            if pattern[j : j + 1] == "!":
                j += 1
            if pattern[j : j + 1] == "]":  # a leading ']' is a literal member of the class
                j += 1
            end = pattern.find("]", j)
            if end < 0:
                raise GlobError(f"pattern {pattern!r} has an unclosed '[' at position {i + 1}")
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            if not body:
                raise GlobError(f"pattern {pattern!r} has an empty character class")
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end
        elif c == "]":
            raise GlobError(f"pattern {pattern!r} has an unmatched ']' at position {i + 1}")
        else:
            out.append(re.escape(c))
        i += 1
    source = "".join(out)
    try:
        re.compile(source)
    except re.error as exc:  # e.g. a reversed range such as [z-a]
        raise GlobError(f"pattern {pattern!r} is not a valid glob: {exc}") from exc
    return source


def compile_globs(patterns: Iterable[str]) -> re.Pattern[str]:
    """One anchored, case-insensitive regex that matches any of `patterns`."""
    sources = [glob_to_regex(p) for p in patterns]
    return re.compile("(?:" + "|".join(sources) + r")\Z", re.IGNORECASE | re.DOTALL)
