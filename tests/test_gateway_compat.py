"""The gateway with the other MCP clients and servers agents use, over real loopback HTTP:
the official SDK 1.x as a client and as an upstream server (from its own venv, in a
subprocess: 1.x and 2.x cannot share one), and the FastMCP client."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client as FastMCPClient
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent

from tests.gateway_support import (
    Served,
    free_port,
    request,
    start_gateway,
    start_process,
    write_config,
)
from tests.support import REPO, run_cmcp

MCP1_VENV = REPO / ".venv-mcp1"
COMPAT = Path(__file__).resolve().parent / "compat"
SESSION_SECONDS = 30.0
# What the quickstart policy lets the anonymous dev-mode agent call, so what is listed: the
# financial tools are for another agent, the destructive one for nobody.
LISTED_TOOLS = ["get_weather", "lookup_customer"]
REDACTED_CUSTOMER = {
    "name": "Ada Lovelace",
    "email": "[REDACTED:email]",
    "phone": "[REDACTED:phone]",
    "ssn": "[REDACTED:pointer]",
}
POLICY_DENIED = -32040


def mcp1_python() -> Path:
    """The interpreter of the 1.x venv. Without it the 1.x tests fail, never skip: a
    compatibility claim nobody checked is worse than a red test."""
    python = MCP1_VENV / "bin" / "python"
    fix = "run `scripts/dev.sh setup`, which creates it from constraints-mcp1.txt"
    if not python.exists():
        pytest.fail(f"{MCP1_VENV} is missing (the MCP SDK 1.x compatibility venv): {fix}")
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('mcp'))"]
    found = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    version = found.stdout.strip()
    if found.returncode != 0 or not version.startswith("1."):
        detail = version or found.stderr.strip()[-300:]
        pytest.fail(f"{MCP1_VENV} does not hold the MCP SDK 1.x ({detail}): {fix}")
    return python


def start_upstream_v1(folder: Path) -> Served:
    """tests/compat/upstream_v1.py (SDK 1.x) serving on a free loopback port."""
    port = free_port()
    command = [str(mcp1_python()), str(COMPAT / "upstream_v1.py"), "--port", str(port)]
    return start_process(command, port, folder / f"upstream-v1-{port}.log")


def upstream_v1_requests(served: Served) -> list[dict[str, Any]]:
    """The JSON lines upstream_v1.py printed, one per tools request it served."""
    return [json.loads(line) for line in served.output().splitlines() if line.startswith("{")]


def first_text(content: Sequence[object]) -> str:
    """The text of a result's first content block, which must be text."""
    block = content[0]
    assert isinstance(block, TextContent), f"expected text, got {block!r}"
    return block.text


def verified_claim(gateway: Served) -> dict[str, Any]:
    """The one claim the gateway wrote, after checking it with `cmcp verify`."""
    folder = gateway.log.parent
    claims = sorted((folder / "claims").glob("*.claim.json"))
    assert len(claims) == 1, f"expected one claim once the session closed, found {claims}"
    verified = run_cmcp(
        "verify", claims[0], "--allow-software", "--audit-log", folder / "audit.db", "--json"
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    document: dict[str, Any] = json.loads(claims[0].read_text())
    return document


def test_an_sdk_1x_client_keeps_its_session_through_a_denial(gateway: Served) -> None:
    python = mcp1_python()
    completed = subprocess.run(
        [str(python), str(COMPAT / "client_v1.py"), gateway.url],
        capture_output=True,
        text=True,
        timeout=SESSION_SECONDS + 30,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    seen = json.loads(completed.stdout)
    assert seen["closed"] is True
    assert seen["protocol_version"] == "2025-11-25"
    assert seen["server_name"] == "cmcp-gateway"
    assert seen["tools"] == LISTED_TOOLS
    assert seen["allowed"]["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
    # the 1.x client validates structuredContent against the outputSchema: it accepted it
    assert seen["redacted"]["result"]["structuredContent"]["customer"] == REDACTED_CUSTOMER
    denied = seen["denied"]["error"]
    assert denied["code"] == POLICY_DENIED
    assert denied["data"]["decision"] == "deny"
    assert denied["data"]["policy_ids"] == ["no-destructive-tools"]
    assert seen["after_denial"]["result"]["content"][0]["text"] == "Sunny, 21 C in Oslo"

    claim = verified_claim(gateway)  # the 1.x client's DELETE closed the session
    assert claim["gateway"]["session_id"] == seen["session_id"]
    summary = claim["gateway"]["call_summary"]
    assert summary["by_kind"] == {  # the tool calls, and the one listing of one upstream
        "call_tool": {
            "total": 4,
            "allowed": 2,
            "denied": 1,
            "redacted": 1,
            "escalated": 0,
            "faulted": 0,
        },
        "list_tools": {
            "total": 1,
            "allowed": 1,
            "denied": 0,
            "redacted": 0,
            "escalated": 0,
            "faulted": 0,
        },
    }
    assert summary["tools_invoked"] == ["get_weather", "lookup_customer"]


async def sdk_2x_session(url: str) -> dict[str, Any]:
    """What an agent on the SDK 2.x sees through the gateway."""
    seen: dict[str, Any] = {}
    async with (
        asyncio.timeout(SESSION_SECONDS),
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        seen["protocol"] = (await session.initialize()).protocol_version
        seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
        weather = await session.call_tool("get_weather", {"city": "Paris"})
        seen["allowed"] = first_text(weather.content)
        customer = await session.call_tool("lookup_customer", {"customer_id": "c-1"})
        seen["redacted"] = customer.structured_content
        with pytest.raises(MCPError) as denied:
            await session.call_tool("delete_records", {"table": "users"})
        seen["denied"] = denied.value.error
    return seen


def test_an_sdk_1x_upstream_serves_the_gateway(tmp_path: Path) -> None:
    upstream = start_upstream_v1(tmp_path)
    try:
        gateway = start_gateway(write_config(tmp_path, upstream.url))
        try:
            seen = asyncio.run(sdk_2x_session(gateway.url))
            claim = verified_claim(gateway)  # the client's DELETE wrote it, not the shutdown
        finally:
            gateway.stop()
    finally:
        upstream.stop()
    assert seen["protocol"] == "2025-11-25"
    assert seen["tools"] == LISTED_TOOLS
    assert seen["allowed"] == "Sunny, 21 C in Paris"
    assert seen["redacted"] == {"customer": REDACTED_CUSTOMER}
    assert seen["denied"].code == POLICY_DENIED
    assert seen["denied"].data["decision"] == "deny"

    served = upstream_v1_requests(upstream)
    assert [(r["method"], r["tool"]) for r in served] == [
        ("tools/list", None),
        ("tools/call", "get_weather"),
        ("tools/call", "lookup_customer"),
    ]  # the denied call never reached the upstream
    for seen_by_upstream in served:
        assert seen_by_upstream["client_name"] == "cmcp-gateway"
        assert seen_by_upstream["initialize_protocol_version"] == "2025-11-25"
        assert seen_by_upstream["header_protocol_version"] == "2025-11-25"
        assert seen_by_upstream["host"] == f"127.0.0.1:{upstream.port}"

    assert claim["gateway"]["catalog"]["drift_detected"] is False
    summary = claim["gateway"]["call_summary"]["by_kind"]["call_tool"]
    assert (summary["allowed"], summary["redacted"], summary["denied"]) == (1, 1, 1)


async def fastmcp_session(url: str, mode: str | None) -> dict[str, Any]:
    """What an agent on the FastMCP client sees through the gateway."""
    seen: dict[str, Any] = {}
    client = FastMCPClient(url) if mode is None else FastMCPClient(url, mode=mode)
    async with asyncio.timeout(SESSION_SECONDS), client:
        seen["protocol"] = client.protocol_version
        seen["initialized"] = client.initialize_result is not None
        seen["tools"] = sorted(t.name for t in await client.list_tools())
        weather = await client.call_tool("get_weather", {"city": "Paris"})
        seen["allowed"] = first_text(weather.content)
        customer = await client.call_tool("lookup_customer", {"customer_id": "c-1"})
        seen["redacted"] = customer.structured_content
        with pytest.raises(MCPError) as denied:
            await client.call_tool("delete_records", {"table": "users"})
        seen["denied"] = denied.value.error
        again = await client.call_tool("get_weather", {"city": "Oslo"})
        seen["after_denial"] = first_text(again.content)
        # a 2026-07-28 answer names the gateway session it was answered in
        seen["stateless_session"] = (again.meta or {}).get("_cmcp.session_id")
    return seen


@pytest.mark.parametrize(
    ("mode", "protocol"),
    [
        # the default, auto: the gateway answers server/discover, so the client speaks the
        # stateless revision (no initialize, no Mcp-Session-Id)
        (None, "2026-07-28"),
        # the initialize handshake, with an Mcp-Session-Id that leaving DELETEs
        ("legacy", "2025-11-25"),
    ],
    ids=["auto", "legacy"],
)
def test_the_fastmcp_client_survives_a_denial(
    gateway: Served, mode: str | None, protocol: str
) -> None:
    stateless = protocol == "2026-07-28"
    seen = asyncio.run(fastmcp_session(gateway.url, mode))
    assert seen["protocol"] == protocol
    assert seen["initialized"] is not stateless
    assert seen["tools"] == LISTED_TOOLS
    assert seen["allowed"] == "Sunny, 21 C in Paris"
    assert seen["redacted"] == {"customer": REDACTED_CUSTOMER}
    assert seen["denied"].code == POLICY_DENIED
    assert seen["denied"].data["decision"] == "deny"
    assert seen["denied"].data["policy_ids"] == ["no-destructive-tools"]
    assert seen["after_denial"] == "Sunny, 21 C in Oslo"

    session = seen["stateless_session"]
    assert (session is not None) is stateless
    if stateless:  # such a client never sends DELETE: the agent closes its session itself
        status, _, body = request(gateway.port, "POST", f"/sessions/{session}/close")
        assert status == 200, body
    claim = verified_claim(gateway)
    if stateless:
        assert claim["gateway"]["session_id"] == session
    summary = claim["gateway"]["call_summary"]["by_kind"]["call_tool"]
    assert (summary["total"], summary["allowed"], summary["denied"]) == (4, 2, 1)
