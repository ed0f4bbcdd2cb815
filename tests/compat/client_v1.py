"""An agent on the official MCP SDK 1.x (`mcp` 1.30) `ClientSession`, for compatibility tests.

It runs only in the 1.x venv (`.venv-mcp1`, made by `scripts/dev.sh setup`): 1.x and 2.x
cannot share one. It connects to URL over streamable HTTP, initializes, lists the tools,
makes an allowed call, a redacted one, a denied one and another allowed one on the same
session, closes the session, and prints one JSON document of what happened on stdout.
Exit status 0 when every step ran and the session closed, 1 otherwise (the document says
where it stopped).

    .venv-mcp1/bin/python tests/compat/client_v1.py http://127.0.0.1:8080/mcp
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

TIMEOUT_SECONDS = 30.0


async def call(session: ClientSession, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A call's result, or the JSON-RPC error it was answered with."""
    try:
        result = await session.call_tool(name, arguments)
    except McpError as exc:
        return {"error": exc.error.model_dump(mode="json", exclude_none=True)}
    return {"result": result.model_dump(mode="json", by_alias=True, exclude_none=True)}


def describe(failure: BaseException) -> list[str]:
    """Every leaf of an exception group (the SDK's task groups wrap transport errors)."""
    if isinstance(failure, BaseExceptionGroup):
        return [line for inner in failure.exceptions for line in describe(inner)]
    return [f"{type(failure).__name__}: {failure}"]


async def session_steps(url: str, seen: dict[str, Any]) -> None:
    async with (
        streamable_http_client(url) as (read, write, session_id),
        ClientSession(read, write) as session,
    ):
        initialized = await session.initialize()
        seen["protocol_version"] = initialized.protocolVersion
        seen["server_name"] = initialized.serverInfo.name
        seen["session_id"] = session_id()
        seen["tools"] = sorted(tool.name for tool in (await session.list_tools()).tools)
        seen["allowed"] = await call(session, "get_weather", {"city": "Paris"})
        seen["redacted"] = await call(session, "lookup_customer", {"customer_id": "c-1"})
        seen["denied"] = await call(session, "delete_records", {"table": "users"})
        seen["after_denial"] = await call(session, "get_weather", {"city": "Oslo"})
    seen["closed"] = True  # leaving the transport sent the DELETE that ends the session


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
    parser.add_argument("url", help="the MCP endpoint, e.g. http://127.0.0.1:8080/mcp")
    args = parser.parse_args(argv)
    seen = asyncio.run(run(args.url))
    sys.stdout.write(json.dumps(seen, indent=2, sort_keys=True) + "\n")
    return 0 if seen["closed"] else 1


if __name__ == "__main__":
    sys.exit(main())
