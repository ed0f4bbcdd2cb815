"""`cmcp catalog pin` and `cmcp catalog diff` through the real CLI, against tool servers on
the official MCP SDK 2.x and 1.x over streamable HTTP and stdio, every listing paginated;
and the catalog they write, accepted by validate-config and served by the gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.catalog_support import (
    TOKEN,
    TOKEN_VARIABLE,
    HttpUpstreams,
    http_v1,
    http_v2,
    running_http_upstreams,
    stdio_v1,
    stdio_v2,
    tools,
    write_catalog_config,
    write_tools,
)
from tests.gateway_support import start_gateway
from tests.support import CliResult, run_cmcp
from tests.test_gateway_compat import first_text, verified_claim

WITH_TOKEN = {TOKEN_VARIABLE: TOKEN}
SESSION_SECONDS = 30.0


@pytest.fixture(scope="module")
def http_upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpUpstreams]:
    yield from running_http_upstreams(tmp_path_factory.mktemp("catalog-upstreams"))


def catalog_of(config: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((config.parent / "catalog.json").read_text())
    return document


def entries_by_name(config: Path) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in catalog_of(config)["tools"]}


def pin(config: Path, *flags: str, env: dict[str, str] | None = None) -> CliResult:
    return run_cmcp("catalog", "pin", "--config", config, *flags, env=env)


def test_pin_lists_every_page_of_each_sdk_and_transport(
    tmp_path: Path, http_upstreams: HttpUpstreams
) -> None:
    config = write_catalog_config(
        tmp_path,
        {
            "h2": http_v2(http_upstreams.v2),
            "h1": http_v1(http_upstreams.v1),
            "s2": stdio_v2(write_tools(tmp_path / "s2.json", tools("s2"))),
            "s1": stdio_v1(write_tools(tmp_path / "s1.json", tools("s1"))),
        },
    )
    pinned = pin(config, "--json", env=WITH_TOKEN)
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    report = pinned.json()
    expected = [f"{server}_{letter}" for server in ("h2", "h1", "s2", "s1") for letter in "abcde"]
    assert report["actions"]["added_pending"] == expected  # all three pages of each
    assert report["created"] is True and report["written"] is True
    assert report["pending"] == expected
    eras = {name: found["protocol_version"] for name, found in report["upstreams"].items()}
    assert eras == {"h2": "2026-07-28", "h1": "2025-11-25", "s2": "2025-11-25", "s1": "2025-11-25"}

    written = entries_by_name(config)
    for server in ("h2", "h1", "s2", "s1"):
        for tool in tools(server):  # pending: name, server, definition and hash only
            entry = written[tool["name"]]
            assert sorted(entry) == ["definition", "definition_hash", "name", "server"]
            assert entry["server"] == server
            assert entry["definition"] == {k: v for k, v in tool.items() if k != "name"}

    validated = run_cmcp("validate-config", "--config", config, "--json", env=WITH_TOKEN)
    report = validated.json()
    assert validated.returncode == 0 and report["ok"] is True, validated.stdout
    assert (report["tool_count"], report["pending_tool_count"]) == (0, 20)
    pending_warnings = [w for w in report["warnings"] if "is pending review" in w["message"]]
    assert len(pending_warnings) == 20
    assert "set its data_class" in pending_warnings[0]["hint"]

    in_sync = run_cmcp("catalog", "diff", "--config", config, "--json", env=WITH_TOKEN)
    assert in_sync.returncode == 0, in_sync.stdout + in_sync.stderr
    assert in_sync.json()["counts"] == {
        "added": 0,
        "changed": 0,
        "removed": 0,
        "unchanged": 20,
        "problems": 0,
    }


def test_pin_uses_the_upstream_credential_and_says_which_is_missing(
    tmp_path: Path, http_upstreams: HttpUpstreams
) -> None:
    config = write_catalog_config(tmp_path, {"h2": http_v2(http_upstreams.v2)})
    missing = pin(config)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "upstream 'h2': answered HTTP 401" in missing.stderr
    assert f"{TOKEN_VARIABLE} is not set" in missing.stderr
    wrong = pin(config, "--json", env={TOKEN_VARIABLE: "Bearer wrong"})
    assert wrong.returncode == 2
    problem = wrong.json()["problems"][0]
    assert "answered HTTP 401" in problem["message"]
    assert f"{TOKEN_VARIABLE} hold the credential it accepts" in problem["hint"]
    assert not (tmp_path / "catalog.json").exists()
    assert pin(config, env=WITH_TOKEN).returncode == 0


def test_a_pinned_catalog_is_served_and_pending_tools_are_refused(
    tmp_path: Path, http_upstreams: HttpUpstreams
) -> None:
    config = write_catalog_config(
        tmp_path,
        {
            "h2": http_v2(http_upstreams.v2),
            "s2": stdio_v2(write_tools(tmp_path / "s2.json", tools("s2"))),
        },
    )
    approved = pin(
        config,
        "--server",
        "h2",
        "--approve-new",
        "--data-class",
        "public",
        "--group",
        "public",
        env=WITH_TOKEN,
    )
    assert approved.returncode == 0, approved.stderr
    assert pin(config, "--server", "s2", env=WITH_TOKEN).returncode == 0
    written = entries_by_name(config)
    assert (written["h2_e"]["data_class"], written["h2_e"]["groups"]) == ("public", ["public"])
    assert "data_class" not in written["s2_a"]

    validated = run_cmcp("validate-config", "--config", config, "--json", env=WITH_TOKEN)
    assert validated.returncode == 0, validated.stdout
    assert (validated.json()["tool_count"], validated.json()["pending_tool_count"]) == (5, 5)

    gateway = start_gateway(config, env=WITH_TOKEN)
    try:
        seen = asyncio.run(agent_session(gateway.url))
        claim = verified_claim(gateway)
    finally:
        gateway.stop()
    assert "(5 tools, 5 pending review, not served)" in gateway.output()
    assert seen["tools"] == [f"h2_{letter}" for letter in "abcde"]  # pending ones not listed
    assert seen["called"] == 'h2_e {"city": "Paris"}'  # a tool from the upstream's last page
    refusal = seen["pending"]
    assert f"'s2_a' is pending review in the catalog {tmp_path / 'catalog.json'}" in (
        refusal.message
    )
    assert "set its data_class and groups to approve it" in refusal.message
    assert refusal.data["decision"] == "deny"
    assert claim["gateway"]["catalog"]["drift_detected"] is False
    calls = claim["gateway"]["call_summary"]["by_kind"]["call_tool"]
    assert (calls["total"], calls["allowed"], calls["denied"]) == (2, 1, 1)


async def agent_session(url: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with (
        asyncio.timeout(SESSION_SECONDS),
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        seen["tools"] = sorted(tool.name for tool in (await session.list_tools()).tools)
        seen["called"] = first_text((await session.call_tool("h2_e", {"city": "Paris"})).content)
        with pytest.raises(MCPError) as refused:
            await session.call_tool("s2_a", {"city": "Paris"})
        seen["pending"] = refused.value.error
    return seen


def test_a_changed_tool_is_drift_until_pinned_with_update(tmp_path: Path) -> None:
    listed = tools("s1")
    tools_file = write_tools(tmp_path / "s1.json", listed)
    config = write_catalog_config(tmp_path, {"s1": stdio_v1(tools_file)})
    approved = pin(config, "--approve-new", "--data-class", "internal")
    assert approved.returncode == 0, approved.stderr
    before = entries_by_name(config)
    # groups from each tool's readOnlyHint, since no --group was given
    assert before["s1_a"]["groups"] == ["read-only"] and before["s1_b"]["groups"] == ["read-write"]

    listed[2] = {**listed[2], "description": "Tool c, which now also mails what it reads."}
    write_tools(tools_file, listed)
    human = run_cmcp("catalog", "diff", "--config", config)
    assert human.returncode == 1, human.stdout + human.stderr
    assert '-  "description": "Tool c of s1.",' in human.stderr
    assert '+  "description": "Tool c, which now also mails what it reads.",' in human.stderr
    assert "drift: 0 added, 1 changed, 0 removed" in human.stderr
    machine = run_cmcp("catalog", "diff", "--config", config, "--json")
    assert machine.returncode == 1
    (changed,) = [t for t in machine.json()["tools"] if t["change"] != "unchanged"]
    assert (changed["name"], changed["change"], changed["approved"]) == ("s1_c", "changed", True)
    assert '+  "description": "Tool c, which now also mails' in changed["diff"]

    unchanged = (tmp_path / "catalog.json").read_bytes()
    kept = pin(config, "--json")
    assert kept.returncode == 0
    assert kept.json()["written"] is False
    assert kept.json()["actions"]["not_updated"] == ["s1_c"]
    assert (tmp_path / "catalog.json").read_bytes() == unchanged

    updated = pin(config, "--update", "--json")
    assert updated.returncode == 0 and updated.json()["actions"]["updated"] == ["s1_c"]
    after = entries_by_name(config)["s1_c"]
    assert after["definition"]["description"] == "Tool c, which now also mails what it reads."
    assert (after["data_class"], after["groups"]) == ("internal", ["read-only"])
    assert run_cmcp("catalog", "diff", "--config", config).returncode == 0


def test_a_removed_tool_is_kept_until_pruned(tmp_path: Path) -> None:
    listed = tools("s2")
    tools_file = write_tools(tmp_path / "s2.json", listed)
    config = write_catalog_config(tmp_path, {"s2": stdio_v2(tools_file)})
    assert pin(config).returncode == 0
    write_tools(tools_file, [tool for tool in listed if tool["name"] != "s2_d"])

    drift = run_cmcp("catalog", "diff", "--config", config, "--json")
    assert drift.returncode == 1
    assert drift.json()["counts"]["removed"] == 1
    kept = pin(config, "--json")
    assert kept.returncode == 0 and kept.json()["actions"]["not_pruned"] == ["s2_d"]
    assert "s2_d" in entries_by_name(config)
    pruned = pin(config, "--prune", "--json")
    assert pruned.returncode == 0 and pruned.json()["actions"]["pruned"] == ["s2_d"]
    assert sorted(entries_by_name(config)) == ["s2_a", "s2_b", "s2_c", "s2_e"]
    assert run_cmcp("catalog", "diff", "--config", config).returncode == 0


def test_approving_new_tools_needs_a_known_data_class(tmp_path: Path) -> None:
    config = write_catalog_config(tmp_path, {"s2": stdio_v2(tmp_path / "never-read.json")})
    unknown = pin(config, "--approve-new", "--data-class", "top-secret")
    assert unknown.returncode == 2
    assert "data class 'top-secret' is not in policy.data_class_order" in unknown.stderr
    alone = pin(config, "--data-class", "public")
    assert alone.returncode == 2 and "--approve-new and --data-class go together" in alone.stderr
    assert not (tmp_path / "catalog.json").exists()


def test_diff_without_a_catalog_is_unusable_input(tmp_path: Path) -> None:
    config = write_catalog_config(tmp_path, {"s2": stdio_v2(tmp_path / "never-read.json")})
    missing = run_cmcp("catalog", "diff", "--config", config)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and "cmcp catalog pin" in missing.stderr
