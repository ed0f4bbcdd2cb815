"""MCP on the wire, shared by the gateway and the bridge: JSON-RPC messages, server-sent
events, and the HTTP/1.1 client used on every upstream hop."""
