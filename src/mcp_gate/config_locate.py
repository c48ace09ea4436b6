"""Which mcp-gate.toml an offline command reads when given no `--config`.

`./mcp-gate.toml` is the default; next to a running `mcp-gate demo` there is none, but the
demo's own config is in `./.mcp-gate-demo/`, so `sessions list`, `replay` and `audit` work
there without options. Kept free of heavy imports: the CLI's fast commands use it.
"""

from __future__ import annotations

from pathlib import Path

from mcp_gate import DEFAULT_CONFIG

#: The folder `mcp-gate demo` writes (config, tokens.json, keys, audit store); it removes all
#: of it when it stops but the recording (`demo.run.KEPT`).
DEMO_DIR = ".mcp-gate-demo"
#: The demo's config, relative to the folder the demo runs in.
DEMO_CONFIG = Path(DEMO_DIR) / DEFAULT_CONFIG


class ConfigNotFound(Exception):
    """No `--config` was given and neither default config exists."""


def locate_config(given: Path | None) -> Path:
    """The config to read: `given` as is (a missing file is the caller's error to report);
    else `./mcp-gate.toml`; else the demo's `./.mcp-gate-demo/mcp-gate.toml`.

    Raises `ConfigNotFound`, naming both paths, when no config was given and neither exists.
    """
    if given is not None:
        return given
    # An existing ./mcp-gate.toml wins even when broken: its error is reported, rather than
    # silently reading another gateway's store.
    for candidate in (Path(DEFAULT_CONFIG), DEMO_CONFIG):
        if candidate.exists():
            return candidate
    raise ConfigNotFound(
        f"no config: neither ./{DEFAULT_CONFIG} nor the demo's ./{DEMO_CONFIG.as_posix()} "
        "exists here; pass the gateway's config with --config FILE, or run `mcp-gate demo` "
        "in this folder"
    )
