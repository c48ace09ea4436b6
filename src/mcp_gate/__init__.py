"""mcp-gate: a security gateway between AI agents (MCP clients) and what they act on."""

__version__ = "0.1.0"
