"""The agent-facing side: HTTP routes, MCP transports and their checks, SSE responses."""
