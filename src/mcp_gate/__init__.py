"""mcp-gate: a security gateway between AI agents (MCP clients) and what they act on."""

__version__ = "0.1.0"

#: The config file commands read when given no `--config` (here so the CLI needs no imports).
DEFAULT_CONFIG = "mcp-gate.toml"
