"""`cmcp bridge`: a stdio MCP server in front of a running gateway. It is a client of the
gateway over HTTP, not a part of it."""
