"""An official-SDK (`mcp` 2.x) MCPServer for the relay matrix (tests/test_relay_matrix.py):
tools that talk back while they run, each returning what the client (through the
gateway) answered, so a test sees what reached the upstream.

Tool names carry `--prefix` (`h2_chatty`, ...) so several of these serve one gateway:

- `chatty`: progress 1/2, a log message, progress 2/2, then the answer;
- `ask_model(max_tokens)`: sampling/createMessage tied to the call; answers with the
  model's text, or with the JSON-RPC error it got instead (`refused <code>`);
- `ask_user(question)`: elicitation/create (form, one string field `answer`) tied to the
  call; answers with the user's action and answer, or `refused <code>`;
- `client_roots`: roots/list tied to the call; answers with the roots or `refused <code>`;
- `slow(seconds, tag)`: writes `started-<prefix>-<tag>` under `--state` and sleeps; when
  cancelled it writes `cancelled-<prefix>-<tag>`: the upstream's own record that the
  cancellation reached it.

    python tests/matrix_upstream.py --prefix h2 --state DIR (--port 8000 | --stdio)
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import anyio
import mcp_types as types
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata

warnings.simplefilter("ignore")  # logging, sampling and roots are deprecated in 2026-07-28

ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}}


def build_server(prefix: str, state: Path) -> MCPServer:
    server = MCPServer(f"matrix-upstream-{prefix}")

    @server.tool(name=f"{prefix}_chatty", description="Reports progress and a log line.")
    async def chatty(ctx: Context) -> str:
        await ctx.report_progress(1, 2, "halfway")
        await ctx.info("a log line")
        await ctx.report_progress(2, 2, "done")
        return "chatty done"

    @server.tool(name=f"{prefix}_ask_model", description="Asks the client's model.")
    async def ask_model(max_tokens: int, ctx: Context) -> str:
        message = types.SamplingMessage(
            role="user", content=types.TextContent(type="text", text="write something")
        )
        try:
            result = await ctx.session.create_message(
                [message], max_tokens=max_tokens, related_request_id=ctx.request_id
            )
        except MCPError as exc:
            return f"refused {exc.error.code}"
        content = result.content
        return "model said: " + (
            content.text if isinstance(content, types.TextContent) else repr(content)
        )

    @server.tool(name=f"{prefix}_ask_user", description="Asks the user a question.")
    async def ask_user(question: str, ctx: Context) -> str:
        try:
            result = await ctx.session.elicit_form(
                question, ANSWER_SCHEMA, related_request_id=ctx.request_id
            )
        except MCPError as exc:
            return f"refused {exc.error.code}"
        return f"user {result.action}: {(result.content or {}).get('answer')}"

    @server.tool(name=f"{prefix}_client_roots", description="Lists the client's roots.")
    async def client_roots(ctx: Context) -> str:
        metadata = ServerMessageMetadata(related_request_id=ctx.request_id)
        try:
            result = await ctx.session.send_request(
                types.ListRootsRequest(), types.ListRootsResult, metadata=metadata
            )
        except MCPError as exc:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stdio", action="store_true")
    args = parser.parse_args()
    server = build_server(args.prefix, args.state)
    if args.stdio:
        server.run("stdio")
        return
    app = server.streamable_http_app(host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
