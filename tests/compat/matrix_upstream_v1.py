"""The relay matrix's upstream (tests/matrix_upstream.py) on the official MCP SDK 1.x
(`mcp` 1.30) FastMCP: the same tools under `--prefix`, served over streamable HTTP
(`--port`) or stdio (`--stdio`). Each tool answers with what the client (through the
gateway) answered it; `slow` writes `started-<prefix>-<tag>` under `--state` when it starts
and `cancelled-<prefix>-<tag>` when a cancellation reaches it.

It runs only in the 1.x venv (`.venv-mcp1`, made by `scripts/dev.sh setup`).

    .venv-mcp1/bin/python tests/compat/matrix_upstream_v1.py --prefix h1 --state DIR --port 8766
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import anyio
from mcp import types
from mcp.server.fastmcp import Context, FastMCP
from mcp.shared.exceptions import McpError
from mcp.shared.message import ServerMessageMetadata

ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}}
ToolContext = Context[Any, Any, Any]


def build_server(prefix: str, state: Path, port: int) -> FastMCP[Any]:
    server: FastMCP[Any] = FastMCP(f"matrix-upstream-{prefix}-v1", port=port, log_level="WARNING")

    @server.tool(name=f"{prefix}_chatty", description="Reports progress and a log line.")
    async def chatty(ctx: ToolContext) -> str:
        await ctx.report_progress(1, 2, "halfway")
        await ctx.info("a log line")
        await ctx.report_progress(2, 2, "done")
        return "chatty done"

    @server.tool(name=f"{prefix}_ask_model", description="Asks the client's model.")
    async def ask_model(max_tokens: int, ctx: ToolContext) -> str:
        message = types.SamplingMessage(
            role="user", content=types.TextContent(type="text", text="write something")
        )
        try:
            result = await ctx.session.create_message(
                [message], max_tokens=max_tokens, related_request_id=ctx.request_id
            )
        except McpError as exc:
            return f"refused {exc.error.code}"
        content = result.content
        return "model said: " + (
            content.text if isinstance(content, types.TextContent) else repr(content)
        )

    @server.tool(name=f"{prefix}_ask_user", description="Asks the user a question.")
    async def ask_user(question: str, ctx: ToolContext) -> str:
        try:
            result = await ctx.session.elicit_form(
                question, ANSWER_SCHEMA, related_request_id=ctx.request_id
            )
        except McpError as exc:
            return f"refused {exc.error.code}"
        return f"user {result.action}: {(result.content or {}).get('answer')}"

    @server.tool(name=f"{prefix}_client_roots", description="Lists the client's roots.")
    async def client_roots(ctx: ToolContext) -> str:
        request = types.ServerRequest(types.ListRootsRequest(method="roots/list"))
        metadata = ServerMessageMetadata(related_request_id=ctx.request_id)
        try:
            result = await ctx.session.send_request(
                request, types.ListRootsResult, metadata=metadata
            )
        except McpError as exc:
            return f"refused {exc.error.code}"
        return "roots: " + json.dumps([str(root.uri) for root in result.roots])

    @server.tool(name=f"{prefix}_slow", description="Sleeps; records a cancellation.")
    async def slow(seconds: float, tag: str) -> str:
        (state / f"started-{prefix}-{tag}").write_text("started")
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            (state / f"cancelled-{prefix}-{tag}").write_text("cancelled")
            raise
        return f"slept {seconds}"

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--stdio", action="store_true")
    args = parser.parse_args(argv)
    server = build_server(args.prefix, args.state, args.port)
    server.run("stdio" if args.stdio else "streamable-http")


if __name__ == "__main__":
    main()
