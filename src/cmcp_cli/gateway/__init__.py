"""The gateway. One message's path, by folder:

- `downstream/`: the agent-facing side: the ASGI app, its routes, the MCP transports
  (streamable HTTP, the stateless 2026-07-28 revision) and the SSE responses;
- `relay/`: client sessions, and each message routed to the upstream that serves it, with
  its answers, notifications and server-to-client requests carried back;
- `enforcement/`: what policy says of a message: Cedar decisions, redaction, approvals;
- `upstream/`: the gateway as an MCP client of its upstream servers (HTTP and stdio).

Around it: `preflight/` (every check `validate-config` runs, and `cmcp measure`),
`runtime.py` (what is built once at start), `server.py` (hypercorn serving), and
`operator/` (approvals, audit export and metrics for people).
"""
