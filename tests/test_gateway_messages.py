"""Messages other than tool calls, governed end to end: `cmcp start` in front of two
official-SDK upstreams, an SDK client, then `cmcp verify` and `cmcp replay-audit` on the
session's claim and log."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.gateway_support import start_gateway, start_upstream, write_config
from tests.support import QUICKSTART, run_cmcp

MESSAGES = """
@id("list-tools")
permit (principal, action == Action::"list_tools", resource);

@id("no-tools-of-other")
forbid (principal, action == Action::"list_tools", resource == Server::"other");

@id("read-redacted")
@redact("email")
permit (principal, action == Action::"read_resource", resource);

@id("get-prompts")
permit (principal, action == Action::"get_prompt", resource);

@id("no-weather-prompt")
forbid (principal, action == Action::"get_prompt", resource == Prompt::"weather_report");
"""


def bundle_and_catalog(folder: Path) -> tuple[Path, Path]:
    """The quickstart bundle with this test's message policies, and its catalog with
    get_weather served by a second upstream, `other`."""
    bundle = folder / "policies"
    shutil.copytree(QUICKSTART / "policies", bundle)
    (bundle / "messages.cedar").write_text(MESSAGES)
    catalog = json.loads((QUICKSTART / "catalog.json").read_text())
    for tool in catalog["tools"]:
        if tool["name"] == "get_weather":
            tool["server"] = "other"
    path = folder / "catalog.json"
    path.write_text(json.dumps(catalog))
    return bundle, path


async def agent(url: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        seen["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
        resources = (await client.list_resources()).resources
        notes = await client.read_resource(str(resources[0].uri))
        seen["notes"] = notes.contents[0].text  # type: ignore[union-attr]
        prompts = (await client.list_prompts()).prompts  # routes each name to its upstream
        with pytest.raises(MCPError) as denied:
            await client.get_prompt(prompts[0].name, {"city": "Bergen"})
        seen["prompt"] = denied.value.error
        seen["still_usable"] = (await client.list_prompts()).prompts[0].name
    return seen


def test_reads_prompts_and_listings_are_decided_redacted_and_claimed(tmp_path: Path) -> None:
    bundle, catalog = bundle_and_catalog(tmp_path)
    demo, other = start_upstream(tmp_path), start_upstream(tmp_path)
    try:
        config = write_config(
            tmp_path,
            demo.url,
            policy_bundle_path=str(bundle),
            catalog_path=str(catalog),
            upstreams={
                "demo": {"transport": "streamable-http", "url": demo.url},
                "other": {"transport": "streamable-http", "url": other.url},
            },
        )
        gateway = start_gateway(config)
        try:
            seen = asyncio.run(agent(gateway.url))
        finally:
            gateway.stop()
    finally:
        demo.stop()
        other.stop()

    # other's listing is denied, so get_weather (served by other) is not shown
    assert seen["tools"] == ["lookup_customer"]
    assert seen["notes"].endswith("Reply to [REDACTED:email].")
    assert "ada@example.org" not in seen["notes"]
    denied = seen["prompt"]
    assert denied.code == -32040  # a clean JSON-RPC error; the session goes on
    assert denied.data["kind"] == "get_prompt"
    assert denied.data["policy_ids"] == ["no-weather-prompt"]
    assert seen["still_usable"] == "weather_report"

    (claim,) = (tmp_path / "claims").glob("*.claim.json")
    audit = tmp_path / "audit.db"
    summary = json.loads(claim.read_text())["gateway"]["call_summary"]
    by_kind = summary["by_kind"]
    listed = by_kind["list_tools"]
    assert (listed["allowed"], listed["denied"]) == (listed["total"] // 2,) * 2  # per server
    assert (by_kind["read_resource"]["redacted"], by_kind["get_prompt"]["denied"]) == (1, 1)
    assert summary["total"] == sum(counts["total"] for counts in by_kind.values())

    verified = run_cmcp("verify", claim, "--allow-software", "--audit-log", audit, "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    (check,) = [c for c in verified.json()["checks"] if c["name"] == "audit log"]
    assert check["status"] == "pass"
    assert "read_resource 1" in check["reason"], check["reason"]
    replayed = run_cmcp(
        "replay-audit", "--db", audit, "--all", "--claim", claim, "--bundle", bundle, "--json"
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    (session,) = replayed.json()["sessions"]
    assert session["ok"] is True
    assert session["call_summary"]["by_kind"] == by_kind
    assert session["decisions_checked"] == summary["total"]  # every kind decided again


async def list_tool_names(url: str) -> list[str]:
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        return sorted(t.name for t in (await client.list_tools()).tools)


def test_an_unreachable_server_is_a_fault_of_its_listing_not_of_the_others(
    tmp_path: Path,
) -> None:
    _, catalog = bundle_and_catalog(tmp_path)  # get_weather is served by `other`
    demo, other = start_upstream(tmp_path), start_upstream(tmp_path)
    other.stop()
    try:
        config = write_config(
            tmp_path,
            demo.url,
            catalog_path=str(catalog),  # the quickstart bundle: every listing permitted
            upstreams={
                "demo": {"transport": "streamable-http", "url": demo.url},
                "other": {"transport": "streamable-http", "url": other.url},
            },
        )
        gateway = start_gateway(config)
        try:
            tools = asyncio.run(list_tool_names(gateway.url))
        finally:
            gateway.stop()
    finally:
        demo.stop()

    assert tools == ["lookup_customer"]
    (claim,) = (tmp_path / "claims").glob("*.claim.json")
    listed = json.loads(claim.read_text())["gateway"]["call_summary"]["by_kind"]["list_tools"]
    assert (listed["total"], listed["allowed"], listed["faulted"]) == (2, 2, 1)
    verified = run_cmcp(
        "verify", claim, "--allow-software", "--audit-log", tmp_path / "audit.db", "--json"
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
