"""The floor under the gateway's latency: hypercorn serving, with and without one upstream hop.

No policy, no audit, no sessions of its own: what is left of a gateway when every part it
adds is removed, served exactly as the gateway is (hypercorn's `serve`, the same event
loop, the gateway's own upstream HTTP client). The gateway benchmark runs it beside the
gateway, so the share of the added latency that no gateway code can remove is measured in
the same run.

  echo     answers MCP itself, as benchmarks/fast_upstream.py does: hypercorn's cost
  forward  relays each /mcp request to --upstream with the gateway's ConnectionPool and
           relays the answer back: hypercorn plus one upstream round trip

    .venv/bin/python benchmarks/hypercorn_floor.py --mode forward --port 8766 \\
        --upstream http://127.0.0.1:8765/mcp
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from cmcp_cli.wire.asgi import Receive, Scope, Send, header, read_body
from cmcp_cli.wire.http1 import ConnectionPool, Endpoint
from fast_upstream import McpState

RELAYED_HEADERS = (b"mcp-session-id", b"mcp-protocol-version")
MAX_BODY = 1024 * 1024
TIMEOUT_SECONDS = 30.0


class FloorApp:
    def __init__(self, mode: str, upstream: str | None) -> None:
        self.state = McpState()
        self.pool = ConnectionPool(Endpoint.parse(upstream)) if upstream else None
        self.mode = mode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(receive, MAX_BODY)
        if self.mode == "forward" and scope["path"] == "/mcp" and self.pool is not None:
            status, headers, answer = await self._forward(scope, body)
        else:
            names = {name.lower(): value for name, value in scope["headers"]}
            method, path = scope["method"].encode(), scope["path"].encode()
            status, headers, answer = self.state.answer(method, path, names, body)
        headers = [*headers, (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def _forward(
        self, scope: Scope, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self.pool is not None
        sent = [("content-type", "application/json")]
        sent.append(("accept", "application/json, text/event-stream"))
        for name in RELAYED_HEADERS:
            value = header(scope, name)
            if value is not None:
                sent.append((name.decode(), value))
        response = await self.pool.request(
            scope["method"], sent, body, timeout=TIMEOUT_SECONDS, max_body=MAX_BODY
        )
        relayed = [
            (name.encode(), value.encode())
            for name, value in response.headers.items()
            if name in ("content-type", "mcp-session-id")
        ]
        return response.status, relayed, response.body


async def serve_floor(mode: str, port: int, upstream: str | None) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.include_server_header = False
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app: Any = FloorApp(mode, upstream)
    await serve(app, config, shutdown_trigger=stop.wait)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("echo", "forward"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", help="the MCP URL to forward to (--mode forward)")
    args = parser.parse_args(argv)
    if args.mode == "forward" and not args.upstream:
        parser.error("--mode forward needs --upstream")
    asyncio.run(serve_floor(args.mode, args.port, args.upstream))


if __name__ == "__main__":
    main()
