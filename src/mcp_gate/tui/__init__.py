"""The approvals TUI: `mcp-gate approvals` (a Textual app over the admin API, in `app`).

Nothing is imported here, so that the CLI loads Textual only when the TUI opens.
"""
