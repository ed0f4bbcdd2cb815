"""An official-SDK (`mcp` 2.x) MCPServer whose tools talk back while they run, for the
tests of the gateway as an MCP client (tests/test_upstream_relay.py).

Tools:

- `chatty`: progress 1/2, a log message, progress 2/2, then the answer;
- `sample`: asks its client's model (sampling/createMessage, tied to the call) and
  answers with what the model said;
- `ask`: asks its user (elicitation/create) for a name and answers with it;
- `roots`: asks for the client's roots outside any call (on the session's GET stream);
- `wait`: writes `wait-started` in the state folder and waits for ever; when cancelled it
  writes `wait-cancelled` (the server's own record that the cancellation reached it);
- `reconnect`: progress, then closes the call's SSE stream, then a log message and the
  answer a moment later: the client has to resume with Last-Event-ID to get them;
- `slow_progress`: five progress notifications 0.6 s apart, then the answer;
- `drop_get`: announces a changed resource list on the session's GET stream, closes that
  stream, then announces a changed tool list on it a moment later: the client has to
  resume the stream with Last-Event-ID to hear of it.

Served over streamable HTTP on 127.0.0.1 (`--port`; `--event-store` adds resumability:
priming events, Last-Event-ID replay) or over stdio (`--stdio`).

    python tests/relay_upstream_server.py --port 8000 --state DIR [--event-store]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import anyio
import mcp_types as types
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from pydantic import BaseModel

RETRY_MS = 100

warnings.simplefilter("ignore")  # logging and sampling are deprecated in 2026-07-28


class MemoryEventStore(EventStore):
    """Every event of every stream, in order, in memory. Each replay is recorded in the
    state folder as `replayed-after-<Last-Event-ID>`."""

    def __init__(self, state: Path) -> None:
        self.events: list[tuple[str, str, types.JSONRPCMessage | None]] = []
        self.state = state

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        event_id = str(len(self.events) + 1)
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        (self.state / f"replayed-after-{last_event_id}").write_text("")
        index = next((i for i, (e, _, _) in enumerate(self.events) if e == last_event_id), None)
        if index is None:
            return None
        stream = self.events[index][1]
        for event_id, stream_id, message in self.events[index + 1 :]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


class Name(BaseModel):
    name: str


def build_server(state: Path) -> MCPServer:
    server = MCPServer("relay-test-upstream")

    @server.tool()
    async def chatty(ctx: Context) -> str:
        await ctx.report_progress(1, 2, "halfway")
        await ctx.info("a log line")
        await ctx.report_progress(2, 2, "done")
        return "chatty done"

    @server.tool()
    async def sample(ctx: Context) -> str:
        message = types.SamplingMessage(
            role="user", content=types.TextContent(type="text", text="say hello")
        )
        result = await ctx.session.create_message(
            [message], max_tokens=5, related_request_id=ctx.request_context.request_id
        )
        content = result.content
        said = content.text if isinstance(content, types.TextContent) else repr(content)
        return f"the model said {said}"

    @server.tool()
    async def ask(ctx: Context) -> str:
        result = await ctx.elicit("Your name?", schema=Name)
        if result.action == "accept":
            return f"hello {result.data.name}"
        return f"no name ({result.action})"

    @server.tool()
    async def roots(ctx: Context) -> str:
        result = await ctx.session.list_roots()
        return "roots: " + ", ".join(str(root.uri) for root in result.roots)

    @server.tool()
    async def wait(ctx: Context) -> str:
        (state / "wait-started").write_text(str(ctx.request_context.request_id))
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            (state / "wait-cancelled").write_text(str(ctx.request_context.request_id))
            raise
        return "never"

    @server.tool()
    async def reconnect(ctx: Context) -> str:
        await ctx.report_progress(1, 2, "before the break")
        await ctx.close_sse_stream()
        await anyio.sleep(0.5)
        await ctx.info("after the break")
        return "resumed"

    @server.tool()
    async def slow_progress(ctx: Context) -> str:
        for step in range(1, 6):
            await anyio.sleep(0.6)
            await ctx.report_progress(step, 5)
        return "slow but alive"

    @server.tool()
    async def drop_get(ctx: Context) -> str:
        await ctx.session.send_resource_list_changed()  # an event id for the client
        await anyio.sleep(0.3)
        await ctx.close_standalone_sse_stream()
        await anyio.sleep(0.5)
        await ctx.session.send_tool_list_changed()
        return "dropped"

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--event-store", action="store_true")
    parser.add_argument("--stdio", action="store_true")
    args = parser.parse_args()
    server = build_server(args.state)
    if args.stdio:
        server.run("stdio")
        return
    app = server.streamable_http_app(
        event_store=MemoryEventStore(args.state) if args.event_store else None,
        retry_interval=RETRY_MS if args.event_store else None,
        host="127.0.0.1",
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
