"""An agent on the official MCP SDK 1.x (`mcp` 1.30) `ClientSession` for the relay matrix
(tests/test_relay_matrix.py). It runs only in the 1.x venv (`.venv-mcp1`).

`relay URL STEPS`: with sampling, elicitation and roots callbacks, it makes the tool calls
STEPS (a JSON list of [tool, arguments]) on one session and prints what each call
answered, the progress and log messages it saw and which callbacks ran.
`cancel URL TOOL...`: for each TOOL (a `slow` tool) it makes a quick call (which starts a
stdio upstream), calls it again with a 1 s read timeout,
then cancels it with notifications/cancelled (the 1.x client does not send it on a
timeout: its application does), then makes a quick call to the same tool.

Either way it leaves the session (DELETE) and prints one JSON document; exit status 0
when the session was left cleanly, 1 otherwise (the document says where it stopped).

    .venv-mcp1/bin/python tests/compat/matrix_client_v1.py relay URL '[["h2_chatty", {}]]'
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
from pydantic import FileUrl

SESSION_SECONDS = 60.0
ROOT = "file:///srv/project"
Context = RequestContext[ClientSession, Any]


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    return block.text if isinstance(block, types.TextContent) else repr(block)


class Agent:
    """The callbacks of an agent whose user and model answer predictably."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.ids: list[Any] = []  # the request ids the client saw: the gateway's own
        self.progress: list[list[Any]] = []
        self.logs: list[Any] = []

    async def sampling(
        self, context: Context, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.ids.append(context.request_id)
        content = params.messages[0].content
        self.asked.append(f"sampling:{getattr(content, 'text', '')}")
        text = "plain words" if params.maxTokens == 10 else "write to ada@example.org"
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=text), model="m"
        )

    async def elicitation(
        self, context: Context, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        self.ids.append(context.request_id)
        self.asked.append(f"elicit:{params.message}")
        answer = "Ada" if params.message == "Who holds the card?" else "4111 1111 1111 1111"
        return types.ElicitResult(action="accept", content={"answer": answer})

    async def roots(self, context: Context) -> types.ListRootsResult:
        self.ids.append(context.request_id)
        self.asked.append("roots")
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl(ROOT))])

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params.data)

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append([progress, total, message])


async def relay(url: str, steps: list[list[Any]], seen: dict[str, Any]) -> None:
    agent = Agent()
    async with (
        streamable_http_client(url) as (read, write, session_id),
        ClientSession(
            read,
            write,
            sampling_callback=agent.sampling,
            elicitation_callback=agent.elicitation,
            list_roots_callback=agent.roots,
            logging_callback=agent.log,
        ) as session,
    ):
        await session.initialize()
        seen["session_id"] = session_id()
        seen["results"] = []
        for tool, arguments in steps:
            result = await session.call_tool(tool, arguments, progress_callback=agent.on_progress)
            seen["results"].append(text_of(result))
    seen.update(asked=agent.asked, ids=agent.ids, progress=agent.progress, logs=agent.logs)


async def cancel(url: str, tools: list[str], seen: dict[str, Any]) -> None:
    async with (
        streamable_http_client(url) as (read, write, session_id),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        seen["session_id"] = session_id()
        seen["timeouts"], seen["after"] = [], []
        for tool in tools:
            # a first call starts the upstream (a stdio child), so the next reaches it
            await session.call_tool(tool, {"seconds": 0, "tag": "v1-warm"})
            try:
                await session.call_tool(
                    tool, {"seconds": 30, "tag": "v1"}, read_timeout_seconds=timedelta(seconds=1)
                )
            except McpError as exc:
                seen["timeouts"].append(exc.error.code)
            # the timed-out request's id (the session numbers its requests 0, 1, ...: the 1.x
            # API exposes no other way to name it)
            timed_out = session._request_id - 1
            params = types.CancelledNotificationParams(requestId=timed_out, reason="timeout")
            await session.send_notification(
                types.ClientNotification(types.CancelledNotification(params=params))
            )
            quick = await session.call_tool(tool, {"seconds": 0, "tag": "v1-quick"})
            seen["after"].append(text_of(quick))


def describe(failure: BaseException) -> list[str]:
    """Every leaf of an exception group (the SDK's task groups wrap transport errors)."""
    if isinstance(failure, BaseExceptionGroup):
        return [line for inner in failure.exceptions for line in describe(inner)]
    return [f"{type(failure).__name__}: {failure}"]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    seen: dict[str, Any] = {"closed": False}
    try:
        async with asyncio.timeout(SESSION_SECONDS):
            if args.mode == "relay":
                await relay(args.url, json.loads(args.targets[0]), seen)
            else:
                await cancel(args.url, args.targets, seen)
        seen["closed"] = True
    except Exception as exc:  # noqa: BLE001 - reported in the document, which is the output
        seen["failure"] = describe(exc)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["relay", "cancel"])
    parser.add_argument("url")
    parser.add_argument("targets", nargs="+", help="relay: STEPS as JSON; cancel: tool names")
    seen = asyncio.run(run(parser.parse_args(argv)))
    sys.stdout.write(json.dumps(seen, indent=2, sort_keys=True) + "\n")
    return 0 if seen["closed"] else 1


if __name__ == "__main__":
    sys.exit(main())
