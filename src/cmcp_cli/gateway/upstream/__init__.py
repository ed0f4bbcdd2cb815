"""The gateway as an MCP client of its upstream servers: streamable HTTP and stdio."""
