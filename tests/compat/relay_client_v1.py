"""An agent on the official MCP SDK 1.x (`mcp` 1.30) against the relay upstream's tools
(tests/relay_upstream.py) through the gateway: progress and log messages, sampling,
elicitation and roots answered by its callbacks, then a call it gives up on (its own
read timeout) before leaving the session. Prints one JSON document of what happened.
Exit status 0 when every step ran and the session closed, 1 otherwise.

It runs only in the 1.x venv (`.venv-mcp1`):

    .venv-mcp1/bin/python tests/compat/relay_client_v1.py http://127.0.0.1:8080/mcp
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import timedelta
from typing import Any

from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.context import RequestContext
from mcp.shared.exceptions import McpError

TIMEOUT_SECONDS = 60.0


def describe(failure: BaseException) -> list[str]:
    if isinstance(failure, BaseExceptionGroup):
        return [line for inner in failure.exceptions for line in describe(inner)]
    return [f"{type(failure).__name__}: {failure}"]


def text(result: types.CallToolResult) -> str:
    first = result.content[0]
    return first.text if isinstance(first, types.TextContent) else repr(first)


async def session_steps(url: str, seen: dict[str, Any]) -> None:
    reported: list[float] = []
    logs: list[Any] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async def sampling(
        context: RequestContext[Any, Any], params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="v1 model"), model="m"
        )

    async def elicitation(
        context: RequestContext[Any, Any], params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"holder": "Grace"})

    async def roots(context: RequestContext[Any, Any]) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///v1")])  # type: ignore[arg-type]

    async with (
        streamable_http_client(url) as (read, write, _),
        ClientSession(
            read,
            write,
            sampling_callback=sampling,
            elicitation_callback=elicitation,
            list_roots_callback=roots,
            logging_callback=on_log,
        ) as session,
    ):
        await session.initialize()
        chatty = await session.call_tool("chatty", {"steps": 2}, progress_callback=on_progress)
        seen["chatty"] = text(chatty)
        seen["progress"] = reported
        seen["logs"] = logs
        seen["ask_model"] = text(await session.call_tool("ask_model", {"prompt": "hi"}))
        seen["ask_user"] = text(await session.call_tool("ask_user", {"question": "card?"}))
        seen["client_roots"] = text(await session.call_tool("client_roots", {}))
        try:
            await session.call_tool(
                "slow",
                {"seconds": 20, "tag": "v1"},
                read_timeout_seconds=timedelta(seconds=1),
            )
        except McpError as exc:
            seen["gave_up"] = exc.error.message
    seen["closed"] = True  # leaving sent the DELETE that ends the session


async def run(url: str) -> dict[str, Any]:
    seen: dict[str, Any] = {"closed": False}
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await session_steps(url, seen)
    except Exception as exc:  # noqa: BLE001 - reported in the document, which is the output
        seen["failure"] = describe(exc)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    args = parser.parse_args(argv)
    seen = asyncio.run(run(args.url))
    sys.stdout.write(json.dumps(seen, indent=2, sort_keys=True) + "\n")
    return 0 if seen["closed"] else 1


if __name__ == "__main__":
    sys.exit(main())
