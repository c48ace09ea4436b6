"""Writing benchmark figures into docs/benchmarks.md, one section per benchmark."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Measured on the project's 2-core machines, which are noisy: every figure is a median over
several runs, and each is compared with a baseline measured in the same run. Re-run a section
with the command under its heading; it rewrites only its own section.
"""


def write_section(key: str, title: str, command: str, body: str) -> None:
    """Replace (or append) the section marked `key` in docs/benchmarks.md."""
    text = DOC.read_text() if DOC.exists() else HEADER
    stamp = dt.date.today().isoformat()
    section = (
        f"<!-- bench:{key} -->\n## {title}\n\n"
        f"Command: `{command}` (last run {stamp})\n\n{body.strip()}\n<!-- /bench:{key} -->"
    )
    pattern = re.compile(rf"<!-- bench:{key} -->.*?<!-- /bench:{key} -->", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else f"{text}\n{section}\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(DOC.parents[1])} (section {key})")
