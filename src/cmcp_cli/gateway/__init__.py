"""The gateway: configuration checks before start, and (later) the MCP proxy itself."""
