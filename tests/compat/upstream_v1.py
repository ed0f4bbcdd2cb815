"""The quickstart's tool server on the official MCP SDK 1.x (`mcp` 1.30): a lowlevel
`Server` over streamable HTTP, advertising exactly the definitions of
examples/quickstart/catalog.json and answering like examples/quickstart/demo_upstream.py.

It runs only in the 1.x venv (`.venv-mcp1`, made by `scripts/dev.sh setup`): 1.x and 2.x
cannot share one. For every tools request it prints one JSON line on stdout with what the
client negotiated at initialize and the headers it sent, so a test can check what the
gateway told this server.

    .venv-mcp1/bin/python tests/compat/upstream_v1.py --port 8766
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

CATALOG = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "catalog.json"

CUSTOMERS = {
    "c-1": {
        "name": "Ada Lovelace",
        "email": "ada@example.org",
        "phone": "+44 20 7946 0958",
        "ssn": "078-05-1120",
    }
}

# What the 1.x SDK's own FastMCP enables for a loopback server: a proxy must send the
# upstream's host, never its client's.
LOOPBACK_ONLY = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
    allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
)


def catalog_tools() -> list[types.Tool]:
    return [
        types.Tool.model_validate({"name": entry["name"], **entry["definition"]})
        for entry in json.loads(CATALOG.read_text())["tools"]
    ]


def call(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    if name == "get_weather":
        return _text(f"Sunny, 21 C in {arguments.get('city', 'nowhere')}")
    if name == "lookup_customer":
        customer = CUSTOMERS.get(str(arguments.get("customer_id")))
        if customer is None:
            return _text("no such customer", error=True)
        record = {"customer": customer}
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(record))],
            structuredContent=record,
        )
    if name == "get_balance":
        return _text(f"balance of {arguments.get('account_id')}: 1200 EUR")
    if name == "transfer_funds":
        return _text(f"transferred {arguments.get('amount')} EUR")
    if name == "delete_records":
        return _text(f"deleted every record in {arguments.get('table')}")
    return _text(f"unknown tool {name}", error=True)


def _text(text: str, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=error)


def build_server() -> Server[Any, Any]:
    server: Server[Any, Any] = Server("cmcp-demo-upstream-v1", version="1")
    tools = catalog_tools()

    def report(method: str, tool: str | None = None) -> None:
        context = server.request_context
        client = context.session.client_params
        headers = context.request.headers if context.request is not None else {}
        line = {
            "method": method,
            "tool": tool,
            "initialize_protocol_version": client.protocolVersion if client else None,
            "client_name": client.clientInfo.name if client else None,
            "header_protocol_version": headers.get("mcp-protocol-version"),
            "host": headers.get("host"),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    # The 1.x SDK's registration decorators are untyped; the handlers themselves are not.
    @server.list_tools()  # type: ignore[untyped-decorator, no-untyped-call]
    async def list_tools() -> list[types.Tool]:
        report("tools/list")
        return tools

    @server.call_tool()  # type: ignore[untyped-decorator]
    async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        report("tools/call", name)
        return call(name, arguments)

    return server


class McpEndpoint:
    """The session manager as an ASGI app, so Starlette routes to it unwrapped."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.manager.handle_request(scope, receive, send)


def build_app(*, json_response: bool) -> Starlette:
    manager = StreamableHTTPSessionManager(
        app=build_server(), json_response=json_response, security_settings=LOOPBACK_ONLY
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(routes=[Route("/mcp", endpoint=McpEndpoint(manager))], lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--json-response", action="store_true", help="JSON instead of SSE")
    args = parser.parse_args(argv)
    app = build_app(json_response=args.json_response)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
