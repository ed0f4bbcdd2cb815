"""tests/catalog_upstream.py on the official MCP SDK 1.x (`mcp` 1.30): a lowlevel `Server`
whose tools come from a JSON file, over stdio, or over streamable HTTP with `--http PORT`.

The file is read again for every `tools/list`, which is paginated (`--page-size` tools a
page, the cursor being the index of the page's first tool). A call answers with one text
block: `<tool> <arguments as JSON>`. It runs only in the 1.x venv (`.venv-mcp1`).

    .venv-mcp1/bin/python tests/compat/catalog_upstream_v1.py --tools tools.json [--http PORT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

LOOPBACK_ONLY = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
    allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
)


def build_server(tools_file: Path, page_size: int) -> Server[Any, Any]:
    server: Server[Any, Any] = Server("cmcp-catalog-test-upstream-v1", version="1")

    # The 1.x SDK's registration decorators are untyped; the handlers themselves are not.
    @server.list_tools()  # type: ignore[untyped-decorator, no-untyped-call]
    async def list_tools(request: types.ListToolsRequest) -> types.ListToolsResult:
        # the SDK passes None when it refreshes its own cache of tools
        params = request.params if request is not None else None
        start = int(params.cursor or 0) if params is not None else 0
        listed = json.loads(tools_file.read_text())
        end = start + page_size
        return types.ListToolsResult(
            tools=[types.Tool.model_validate(tool) for tool in listed[start:end]],
            nextCursor=str(end) if end < len(listed) else None,
        )

    @server.call_tool(validate_input=False)  # type: ignore[untyped-decorator]
    async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        said = f"{name} {json.dumps(arguments or {}, sort_keys=True)}"
        return types.CallToolResult(content=[types.TextContent(type="text", text=said)])

    return server


class McpEndpoint:
    """The session manager as an ASGI app, so Starlette routes to it unwrapped."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.manager.handle_request(scope, receive, send)


def build_app(server: Server[Any, Any]) -> Starlette:
    manager = StreamableHTTPSessionManager(app=server, security_settings=LOOPBACK_ONLY)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(routes=[Route("/mcp", endpoint=McpEndpoint(manager))], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tools", type=Path, required=True)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--http", type=int, metavar="PORT")
    args = parser.parse_args()
    server = build_server(args.tools, args.page_size)
    if args.http is not None:
        uvicorn.run(build_app(server), host="127.0.0.1", port=args.http, log_level="warning")
        return

    async def serve() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(serve)


if __name__ == "__main__":
    main()
