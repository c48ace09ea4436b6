"""`python -m mcp_gate` runs the command line."""

from mcp_gate.cli import app

app(prog_name="mcp-gate")
