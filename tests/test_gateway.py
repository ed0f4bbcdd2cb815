"""`cmcp start` as a real MCP proxy: the official SDK client, the real gateway process,
an upstream built on the official SDK, all over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_cli.attestation.manager import load_providers
from cmcp_cli.config import CmcpConfig, Environment
from cmcp_cli.gateway.runtime import StartupError, choose_attestor
from tests.gateway_support import (
    INIT,
    Served,
    request,
    start_gateway,
    start_upstream,
    write_config,
)
from tests.support import QUICKSTART, run_cmcp


def claims_of(served: Served) -> list[Path]:
    return sorted((served.log.parent / "claims").glob("*.claim.json"))


async def agent_session(url: str) -> dict[str, Any]:
    """What an agent sees through the gateway with the SDK's ClientSession."""
    seen: dict[str, Any] = {}
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        init = await session.initialize()
        seen["protocol"] = init.protocol_version
        seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
        weather = await session.call_tool("get_weather", {"city": "Paris"})
        seen["allowed"] = weather.content[0].text  # type: ignore[union-attr]
        customer = await session.call_tool("lookup_customer", {"customer_id": "c-1"})
        seen["redacted"] = customer.structured_content
        seen["redacted_text"] = customer.content[0].text  # type: ignore[union-attr]
        with pytest.raises(MCPError) as denied:
            await session.call_tool("delete_records", {"table": "users"})
        seen["denied"] = denied.value.error
        with pytest.raises(MCPError) as unlisted:
            await session.call_tool("format_disk", {})
        seen["unlisted"] = unlisted.value.error
        again = await session.call_tool("get_weather", {"city": "Oslo"})
        seen["after_deny"] = again.content[0].text  # type: ignore[union-attr]
    return seen


def test_an_agent_session_is_decided_enforced_and_claimed(gateway: Served) -> None:
    seen = asyncio.run(agent_session(gateway.url))
    assert seen["protocol"] == "2025-11-25"
    # only what the policy lets this (anonymous dev-mode) agent call is listed: the
    # financial tools are for the credit-risk agent, destructive ones for nobody
    assert seen["tools"] == ["get_weather", "lookup_customer"]
    assert seen["allowed"] == "Sunny, 21 C in Paris"
    customer = seen["redacted"]["customer"]
    assert customer["name"] == "Ada Lovelace"
    assert customer["email"] == "[REDACTED:email]"
    assert customer["phone"] == "[REDACTED:phone]"
    assert customer["ssn"] == "[REDACTED:pointer]"
    for secret in ("ada@example.org", "7946 0958", "078-05-1120"):
        assert secret not in seen["redacted_text"]
    denied = seen["denied"]
    assert denied.code == -32040
    assert denied.data["decision"] == "deny"
    assert denied.data["policy_ids"] == ["no-destructive-tools"]
    assert seen["unlisted"].data["decision"] == "deny"
    assert seen["after_deny"] == "Sunny, 21 C in Oslo"  # a deny never ends the session

    (claim,) = claims_of(gateway)  # the client's DELETE closed the session
    document = json.loads(claim.read_text())
    counts = {"escalated": 0, "faulted": 0}
    assert document["gateway"]["call_summary"] == {
        "total": 6,
        "allowed": 3,
        "denied": 2,
        "redacted": 1,
        **counts,
        "tools_invoked": ["get_weather", "lookup_customer"],
        "by_kind": {  # the listing is a decision of its own, per upstream server
            "call_tool": {"total": 5, "allowed": 2, "denied": 2, "redacted": 1, **counts},
            "list_tools": {"total": 1, "allowed": 1, "denied": 0, "redacted": 0, **counts},
        },
    }
    audit = gateway.log.parent / "audit.db"
    verified = run_cmcp("verify", claim, "--allow-software", "--audit-log", audit, "--json")
    assert verified.returncode == 0, verified.stderr
    replayed = run_cmcp(
        "replay-audit", "--db", audit, "--all", "--claim", claim,
        "--bundle", QUICKSTART / "policies", "--json",
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout
    # the call to a tool outside the catalog never reached Cedar: nothing to decide again
    assert replayed.json()["sessions"][0]["decisions_checked"] == 5


def test_bad_input_gets_clear_errors_and_nothing_500s(gateway: Served) -> None:
    port = gateway.port
    status, headers, _ = request(port, "POST", "/mcp", INIT)
    assert status == 200
    session = {"mcp-session-id": headers["mcp-session-id"]}
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    cases: list[tuple[str, bytes | dict[str, Any], dict[str, str], int, str]] = [
        ("not JSON", b"{nope", session, 400, "not JSON"),
        ("a batch", b"[" + json.dumps(ping).encode() + b"]", session, 400, "batches"),
        ("not an object", b"42", session, 400, "JSON object"),
        ("no jsonrpc", {"id": 3, "method": "ping"}, session, 400, '"2.0"'),
        ("no session", ping, {"mcp-protocol-version": "2025-06-18"}, 400,
         "Mcp-Session-Id is missing"),
        ("a plain ping", ping, {}, 404, "not served to a plain JSON-RPC call"),
        ("unknown session", ping, {"mcp-session-id": "nope"}, 404, "unknown"),
        ("bad version", ping, {**session, "mcp-protocol-version": "1999-01-01"}, 400, "1999"),
        ("too deep", b'{"jsonrpc":"2.0","id":4,"method":"ping","params":'
         + b'{"a":' * 80 + b"1" + b"}" * 81, session, 400, "deeper"),
        ("too large", b" " * (1024 * 1024 + 1), session, 413, "exceeds"),
        ("bad origin", ping, {**session, "origin": "https://evil.example"}, 403, "origin"),
        ("a modern version", ping, {**session, "mcp-protocol-version": "2026-07-28"}, 400,
         "params._meta"),
        ("bad params", {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": []},
         session, 400, "params"),
    ]  # fmt: skip
    for name, body, headers_sent, expected, words in cases:
        status, _, answer = request(port, "POST", "/mcp", body, headers_sent)
        assert status == expected, (name, status, answer)
        message = json.loads(answer)
        assert message["jsonrpc"] == "2.0", name
        assert words in message["error"]["message"], (name, message)
    assert request(port, "GET", "/mcp")[0] == 400  # a stream belongs to a session
    assert request(port, "PUT", "/mcp", None, session)[0] == 405
    status, _, answer = request(port, "POST", "/mcp", ping, session)
    assert (status, json.loads(answer)["result"]) == (200, {})  # the session survived it all
    # another revision of the session era is taken, as SDK servers take it
    other = {**session, "mcp-protocol-version": "2025-03-26"}
    status, _, answer = request(port, "POST", "/mcp", ping, other)
    assert (status, json.loads(answer)["result"]) == (200, {})
    assert "Traceback" not in gateway.output()


def test_a_drifted_tool_is_blocked_and_recorded(tmp_path: Path) -> None:
    drifting = start_upstream(tmp_path, drift="get_weather")
    gateway = start_gateway(write_config(tmp_path, drifting.url))
    try:

        async def session() -> tuple[list[str], Any, str]:
            async with (
                streamable_http_client(gateway.url) as (read, write),
                ClientSession(read, write) as client,
            ):
                await client.initialize()
                tools = sorted(t.name for t in (await client.list_tools()).tools)
                with pytest.raises(MCPError) as blocked:
                    await client.call_tool("get_weather", {"city": "Paris"})
                other = await client.call_tool("lookup_customer", {"customer_id": "c-1"})
                return tools, blocked.value.error, str(other.structured_content)

        tools, blocked, other = asyncio.run(session())
    finally:
        gateway.stop()
        drifting.stop()
    assert "get_weather" not in tools
    assert blocked.code == -32042
    assert "drift" in blocked.message
    assert "Ada Lovelace" in other
    (claim,) = claims_of(gateway)
    assert json.loads(claim.read_text())["gateway"]["catalog"]["drift_detected"] is True


def test_a_dead_upstream_is_a_recorded_fault(tmp_path: Path) -> None:
    dying = start_upstream(tmp_path)
    gateway = start_gateway(write_config(tmp_path, dying.url))
    try:

        async def session() -> Any:
            async with (
                streamable_http_client(gateway.url) as (read, write),
                ClientSession(read, write) as client,
            ):
                await client.initialize()
                await client.call_tool("get_weather", {"city": "Paris"})
                dying.stop()
                with pytest.raises(MCPError) as failed:
                    await client.call_tool("get_weather", {"city": "Oslo"})
                return failed.value.error

        failed = asyncio.run(session())
    finally:
        gateway.stop()
    assert failed.code == -32050
    assert failed.data == {"upstream": "demo"}
    (claim,) = claims_of(gateway)
    summary = json.loads(claim.read_text())["gateway"]["call_summary"]
    assert (summary["allowed"], summary["faulted"]) == (3, 1)  # two calls, one listing
    assert summary["by_kind"]["call_tool"]["faulted"] == 1


def test_shutdown_closes_open_sessions_and_writes_their_claims(gateway: Served) -> None:
    status, headers, _ = request(gateway.port, "POST", "/mcp", INIT)
    assert status == 200
    assert headers["mcp-session-id"]
    assert gateway.stop() == 0
    (claim,) = claims_of(gateway)
    document = json.loads(claim.read_text())
    assert document["gateway"]["session_id"] == headers["mcp-session-id"]
    assert "gateway stopped" in gateway.output()


def test_bearer_tokens_authenticate_agents(tmp_path: Path, upstream: Served) -> None:
    token = "t" * 40
    gateway = start_gateway(write_config(tmp_path, upstream.url), {"CMCP_BEARER_TOKEN": token})
    try:
        assert request(gateway.port, "POST", "/mcp", INIT)[0] == 401
        wrong = {"authorization": "Bearer " + "x" * 40}
        assert request(gateway.port, "POST", "/mcp", INIT, wrong)[0] == 401
        right = {"authorization": f"Bearer {token}"}
        status, headers, _ = request(gateway.port, "POST", "/mcp", INIT, right)
        assert status == 200
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        session = {"mcp-session-id": headers["mcp-session-id"]}
        assert request(gateway.port, "POST", "/mcp", ping, {**session, **wrong})[0] == 401
        assert request(gateway.port, "POST", "/mcp", ping, {**session, **right})[0] == 200
        path = f"/sessions/{headers['mcp-session-id']}/close"
        assert request(gateway.port, "POST", path, None, wrong)[0] == 404
        assert request(gateway.port, "POST", path, None, right)[0] == 200
        assert request(gateway.port, "GET", "/trace/latest")[0] == 401
        status, _, claim = request(gateway.port, "GET", "/trace/latest", None, right)
        assert status == 200
        assert json.loads(claim)["gateway"]["session_id"] == headers["mcp-session-id"]
        status, _, record = request(
            gateway.port,
            "GET",
            path.replace("/sessions/", "/trace/").removesuffix("/close") + "?format=record",
            None,
            right,
        )
        assert status == 200
        assert "signature" in json.loads(record)
    finally:
        gateway.stop()


def config_with(provider: str) -> CmcpConfig:
    return CmcpConfig.model_validate(
        {
            "policy_bundle_path": str(QUICKSTART / "policies"),
            "catalog_path": str(QUICKSTART / "catalog.json"),
            "attestation": {"provider": provider},
        }
    )


def test_the_attestation_provider_is_never_a_silent_fallback() -> None:
    registry = load_providers()  # the hardware plugins are installed; no TEE is here
    with pytest.raises(StartupError) as nothing:
        choose_attestor(config_with("auto"), Environment(dev_mode=False), registry)
    for reason in ("sev-snp: not an SEV-SNP guest", "tdx:", "tpm: no TPM device"):
        assert reason in nothing.value.message
    bare = load_providers(plugins=())  # a host with none of the plugins installed
    with pytest.raises(StartupError) as uninstalled:
        choose_attestor(config_with("auto"), Environment(dev_mode=False), bare)
    # each provider `auto` tries, in its order, with the wheel to install
    tried = uninstalled.value.message.partition("can run here (")[2][:-1].split("; ")
    assert tried == [
        "sev-snp: no plugin installed (pip install cmcp-sev)",
        "tdx: no plugin installed (pip install cmcp-tdx)",
        "azure-sev-snp: no plugin installed (pip install cmcp-azure)",
        "azure-tdx: no plugin installed (pip install cmcp-azure)",
        "tpm: no plugin installed (pip install cmcp-tpm)",
    ]
    with pytest.raises(StartupError, match="cmcp-opaque"):
        choose_attestor(config_with("opaque"), Environment(dev_mode=True), bare)
    with pytest.raises(StartupError, match="proves nothing"):
        choose_attestor(config_with("software-only"), Environment(dev_mode=False), registry)
    for provider in ("auto", "software-only"):
        chosen = choose_attestor(config_with(provider), Environment(dev_mode=True), registry)
        assert chosen.attestor.spec.name == "software-only"
