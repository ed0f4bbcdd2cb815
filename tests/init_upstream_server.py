"""A small MCP server on the official SDK (`mcp` 2.x) for `cmcp init` tests: one tool
annotated read-only (`read_note`) and one that writes (`write_note`, no annotations).

    python tests/init_upstream_server.py            # stdio
    python tests/init_upstream_server.py --http PORT [--require HEADER=VALUE]   # HTTP

With `--require`, every HTTP request without that header and value is answered 401. With
INIT_TEST_EXTRA_TOOL set, it also advertises a tool of that name (no annotations).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

NOTE = "the note says hello"
TOOLS = [
    types.Tool(
        name="read_note",
        description="Read the note.",
        input_schema={"type": "object", "properties": {}},
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
    types.Tool(
        name="write_note",
        description="Replace the note.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    ),
]


def build_server() -> Server[Any]:
    note = {"text": NOTE}
    tools = list(TOOLS)
    extra = os.environ.get("INIT_TEST_EXTRA_TOOL")
    if extra:
        tools.append(types.Tool(name=extra, input_schema={"type": "object"}))

    async def list_tools(
        _: ServerRequestContext[Any], __: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        _: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        if params.name == "write_note":
            note["text"] = str((params.arguments or {}).get("text", ""))
            answer = f"note replaced: {note['text']}"
        else:
            answer = note["text"]
        return types.CallToolResult(content=[types.TextContent(type="text", text=answer)])

    return Server("cmcp-init-test", version="1", on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_stdio() -> None:
    server = build_server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def serve_http(port: int, required: tuple[bytes, bytes] | None) -> None:
    import uvicorn

    app = build_server().streamable_http_app(host="127.0.0.1")

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers", ())) if scope["type"] == "http" else {}
        if required is None or scope["type"] != "http" or headers.get(required[0]) == required[1]:
            await app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"credential required"})

    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        required = None
        if sys.argv[3:4] == ["--require"]:
            header, _, value = sys.argv[4].partition("=")
            required = (header.lower().encode(), value.encode())
        serve_http(int(sys.argv[2]), required)
    else:
        anyio.run(serve_stdio)
