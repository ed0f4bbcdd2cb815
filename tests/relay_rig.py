"""The relay tests' rig: an SDK upstream that progresses, logs, asks the client (sampling,
elicitation, roots) and records what reaches it, behind a real `cmcp start`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.gateway_support import Served, free_port, start_gateway, start_process, write_config
from tests.support import REPO

UPSTREAM = REPO / "tests" / "relay_upstream.py"
PERMIT_ALL = '@id("relay-tests")\npermit (principal, action, resource);\n'
MANIFEST = {"version": "1.0.0", "authored_at": "2026-12-01T09:00:00Z", "author": "tests"}
WAIT_SECONDS = 15.0
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@dataclass
class Rig:
    gateway: Served
    upstream: Served
    state: Path
    policy: dict[str, str]  # the catalog and bundle the gateway runs with

    def restart_upstream(self) -> None:
        """Stop the upstream and start it again on its port: it forgets every session."""
        self.upstream.stop()
        command = [str(part) for part in self.upstream.process.args]  # type: ignore[union-attr]
        log = self.upstream.log.with_name("upstream-restarted.log")
        self.upstream = start_process(command, self.upstream.port, log)


@contextlib.contextmanager
def running_rig(folder: Path) -> Iterator[Rig]:
    """The relay upstream (tests/relay_upstream.py) and a gateway in front of it, permitting
    every action, with the catalog pinned to the upstream's own tools."""
    state = folder / "upstream-state"
    state.mkdir()
    port = free_port()
    upstream = start_process(
        [sys.executable, str(UPSTREAM), "--port", str(port), "--state", str(state)],
        port,
        folder / "upstream.log",
    )
    running = Rig(upstream, upstream, state, {})
    try:
        tools = asyncio.run(listed_tools(upstream.url))
        catalog = folder / "catalog.json"
        catalog.write_text(
            json.dumps(
                {
                    "catalog_version": 1,
                    "tools": [
                        {
                            "name": tool["name"],
                            "server": "demo",
                            "groups": ["relay"],
                            "data_class": "public",
                            "definition": {k: v for k, v in tool.items() if k != "name"},
                        }
                        for tool in tools
                    ],
                }
            )
        )
        bundle = folder / "bundle"
        bundle.mkdir()
        (bundle / "manifest.json").write_text(json.dumps(MANIFEST))
        (bundle / "relay.cedar").write_text(PERMIT_ALL)
        running.policy = {"policy_bundle_path": str(bundle), "catalog_path": str(catalog)}
        config = write_config(folder, upstream.url, **running.policy)
        running.gateway = start_gateway(config)
        try:
            yield running
        finally:
            running.gateway.stop()
    finally:
        running.upstream.stop()


async def listed_tools(url: str) -> list[dict[str, Any]]:
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = await session.list_tools()
    return [tool.model_dump(by_alias=True, exclude_none=True) for tool in listed.tools]


def text_of(result: object) -> str:
    assert isinstance(result, types.CallToolResult), result
    first = result.content[0]
    assert isinstance(first, types.TextContent), result
    return first.text


def events_of(body: str) -> list[tuple[str | None, dict[str, Any]]]:
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.split("\n") if ": " in line and line[0] != ":"
        )
        if "data" in fields:
            events.append((fields.get("id"), json.loads(fields["data"])))
    return events


async def open_session(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    opened = await client.post(url, json=init, headers=HEADERS)
    assert opened.status_code == 200, opened.text
    headers = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
    await client.post(
        url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    return headers
