"""The quickstart's demo tools served over stdio by the official MCP SDK (`mcp` 2.x), for tests.

It advertises exactly the definitions in examples/quickstart/catalog.json and answers as
examples/quickstart/demo_upstream.py does (it reuses that file), so the catalog pin
matches. Some cities make get_weather misbehave on purpose:

- "crash": the process exits with code 3 in the middle of the call;
- "slow": the answer takes 30 s;
- "big": the answer is 64 KiB of text;
- "huge": the answer's structuredContent holds HUGE_INTEGER, beyond what JSON encoders write;
- "stubborn": the server ignores SIGTERM, starts a helper process of its own (named
  helper-<pid> in STDIO_SERVER_PID_DIR) and blocks, so that it never reads EOF either;
- "chatty": before answering, the server pings its client, asks it for its roots and
  tells it that the tool list changed; the answer reports what the client said.

It writes STARTED_LINE to stderr on start, and with STDIO_SERVER_PID_DIR set, a file
named after its pid there, holding the sorted names of its environment variables as JSON.

    python tests/stdio_upstream_server.py [--http PORT]
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

DEMO = Path(__file__).resolve().parent.parent / "examples" / "quickstart" / "demo_upstream.py"
CRASH_EXIT_CODE = 3
BIG_ANSWER_BYTES = 64 * 1024
STARTED_LINE = "stdio test server: started"
HELPER_CODE = "import time; time.sleep(60)"
HUGE_INTEGER = 2**70


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quickstart_demo_upstream", DEMO)
    assert spec is not None and spec.loader is not None, DEMO
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def text(value: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=value)])


async def chatty(ctx: ServerRequestContext[Any]) -> types.CallToolResult:
    await ctx.session.send_ping()
    try:
        await ctx.session.send_request(types.ListRootsRequest(), types.ListRootsResult)
        roots = "answered"
    except MCPError as exc:
        roots = f"refused with {exc.code}"
    await ctx.session.send_tool_list_changed()
    return text(f"ping answered; roots {roots}")


def stubborn() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    helper = subprocess.Popen([sys.executable, "-c", HELPER_CODE])
    pid_dir = os.environ.get("STDIO_SERVER_PID_DIR")
    if pid_dir:
        (Path(pid_dir) / f"helper-{helper.pid}").write_text("")
    time.sleep(60)  # blocks the event loop: EOF on stdin is never read


def build_server() -> Server[Any]:
    demo = load_demo()
    tools = demo.catalog_tools(None)

    async def list_tools(
        _: ServerRequestContext[Any], __: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        city = arguments.get("city") if params.name == "get_weather" else None
        if city == "crash":
            os._exit(CRASH_EXIT_CODE)
        if city == "slow":
            await anyio.sleep(30)
        if city == "stubborn":
            stubborn()
        if city == "big":
            return text("x" * BIG_ANSWER_BYTES)
        if city == "huge":
            huge = text("huge")
            huge.structured_content = {"n": HUGE_INTEGER}
            return huge
        if city == "chatty":
            return await chatty(ctx)
        answer: types.CallToolResult = demo.call(params.name, arguments)
        return answer

    return Server(
        "cmcp-stdio-test-upstream", version="1", on_list_tools=list_tools, on_call_tool=call_tool
    )


async def serve() -> None:
    sys.stderr.write(f"{STARTED_LINE}\n")
    sys.stderr.flush()
    pid_dir = os.environ.get("STDIO_SERVER_PID_DIR")
    if pid_dir:
        (Path(pid_dir) / str(os.getpid())).write_text(json.dumps(sorted(os.environ)))
    server = build_server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def serve_http(port: int) -> None:
    """The same server over streamable HTTP (SSE answers), on loopback."""
    import uvicorn

    app = build_server().streamable_http_app(host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        serve_http(int(sys.argv[2]))
    else:
        anyio.run(serve)
