"""`mcp-gate demo`: embedded PostgreSQL, sample data, policies, a gateway ready for a client."""
