"""An MCP server (official SDK 2.x) whose tools talk back while they run: progress, log
messages, and requests of their own to the client (sampling, elicitation, roots). Each
tool returns what the client answered, so a test sees both directions. `slow` sleeps
and, when cancelled, writes a file under `--state`: the upstream's own record that a
cancellation reached it; so does a `notifications/roots/list_changed` it receives.

    python tests/relay_upstream.py --port 8766 --state DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.elicitation import AcceptedElicitation
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel


class Card(BaseModel):
    holder: str


def build_server(state: Path) -> MCPServer:
    server = MCPServer("relay-upstream")
    background: set[asyncio.Task[None]] = set()

    @server.tool(description="Reports progress and logs, then answers.")
    async def chatty(steps: int, ctx: Context) -> str:
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
            await ctx.info(f"did step {step}")
        return f"done after {steps} steps"

    @server.tool(description="Asks the client's model to write something.")
    async def ask_model(prompt: str, ctx: Context) -> str:
        answer = await ctx.session.create_message(
            [
                types.SamplingMessage(
                    role="user", content=types.TextContent(type="text", text=prompt)
                )
            ],
            max_tokens=50,
            related_request_id=ctx.request_id,
        )
        content = answer.content
        return f"model said: {getattr(content, 'text', content)}"

    @server.tool(description="Asks the user for a card holder.")
    async def ask_user(question: str, ctx: Context) -> str:
        answer = await ctx.elicit(question, Card)
        holder = answer.data.holder if isinstance(answer, AcceptedElicitation) else "-"
        return f"user {answer.action}: {holder}"

    @server.tool(description="Lists the client's roots.")
    async def client_roots(ctx: Context) -> str:
        roots = await ctx.session.list_roots()
        return json.dumps(sorted(str(root.uri) for root in roots.roots))

    @server.tool(description="Lists the client's roots later, outside any request.")
    async def roots_later(ctx: Context) -> str:
        session = ctx.session

        async def later() -> None:
            await asyncio.sleep(0.3)
            roots = await session.list_roots()
            found = sorted(str(root.uri) for root in roots.roots)
            (state / "roots-later").write_text(json.dumps(found))

        background.add(asyncio.create_task(later()))
        return "asked"

    @server.tool(description="Sleeps; records its start and a cancellation.")
    async def slow(seconds: float, tag: str) -> str:
        (state / f"started-{tag}").write_text("started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            (state / f"cancelled-{tag}").write_text("cancelled")
            raise
        (state / f"finished-{tag}").write_text("finished")
        return f"slept {seconds}"

    async def roots_changed(_: Any, __: types.NotificationParams) -> None:
        (state / "roots-changed").write_text("changed")

    server._lowlevel_server.add_notification_handler(
        "notifications/roots/list_changed", types.NotificationParams, roots_changed
    )
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    options = parser.parse_args()
    app = build_server(options.state).streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning")


if __name__ == "__main__":
    main()
