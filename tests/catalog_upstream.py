"""A tool server on the official MCP SDK 2.x whose tools come from a JSON file, for the
`cmcp catalog` tests: over stdio, or over streamable HTTP with `--http PORT`.

The file (a list of `tools/list` entries) is read again for every `tools/list`, so a test
changes what the server advertises by rewriting it. `tools/list` is paginated,
`--page-size` tools a page (the cursor is the index of the page's first tool). A call
answers with one text block: `<tool> <arguments as JSON>`. With `--token-env VAR`, an
HTTP request without `Authorization: <value of VAR>` is answered 401.

    python tests/catalog_upstream.py --tools tools.json [--page-size 2] [--http PORT]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from starlette.types import ASGIApp, Receive, Scope, Send


def page_of(tools: list[dict[str, Any]], cursor: str | None, size: int) -> tuple[list[Any], Any]:
    """The tools of the page starting at `cursor`, and the next page's cursor (or None)."""
    start = int(cursor or 0)
    end = start + size
    return tools[start:end], (str(end) if end < len(tools) else None)


def build_server(tools_file: Path, page_size: int) -> Server[Any]:
    async def list_tools(
        _: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        listed = json.loads(tools_file.read_text())
        page, following = page_of(listed, params.cursor if params else None, page_size)
        return types.ListToolsResult(
            tools=[types.Tool.model_validate(tool) for tool in page], next_cursor=following
        )

    async def call_tool(
        _: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        said = f"{params.name} {json.dumps(params.arguments or {}, sort_keys=True)}"
        return types.CallToolResult(content=[types.TextContent(type="text", text=said)])

    return Server(
        "cmcp-catalog-test-upstream", version="1", on_list_tools=list_tools, on_call_tool=call_tool
    )


class BearerOnly:
    """Answers 401 to any request whose Authorization header is not `expected`."""

    def __init__(self, app: ASGIApp, expected: str) -> None:
        self.app = app
        self.expected = expected.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != (
            self.expected
        ):
            body = b'{"error": "unauthorized"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tools", type=Path, required=True)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--http", type=int, metavar="PORT")
    parser.add_argument("--token-env", metavar="VAR")
    args = parser.parse_args()
    server = build_server(args.tools, args.page_size)
    if args.http is None:

        async def serve() -> None:
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())

        anyio.run(serve)
        return
    import uvicorn

    app: ASGIApp = server.streamable_http_app(host="127.0.0.1")
    if args.token_env:
        app = BearerOnly(app, os.environ[args.token_env])
    uvicorn.run(app, host="127.0.0.1", port=args.http, log_level="warning")


if __name__ == "__main__":
    main()
