"""The gateway beyond one tool call: the stateless 2026-07-28 revision, resources and
prompts, operator approvals of escalated calls, audit export and metrics. Real processes
on loopback: `cmcp start`, the SDK demo upstream, official SDK clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_cli.gateway.enforcement.approvals import ApprovalDesk, ApprovalError, ApprovalStatus
from tests.gateway_support import Served, request, start_gateway, start_upstream, write_config
from tests.support import QUICKSTART, run_cmcp

CREDIT_RISK = "spiffe://trust.example.org/agent/credit-risk"
AGENT_TOKEN = "a" * 40
OPERATOR_TOKEN = "o" * 40
AGENT = {"authorization": f"Bearer {AGENT_TOKEN}"}
OPERATOR = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture
def guarded(tmp_path: Path, upstream: Served) -> Iterator[Served]:
    """A gateway whose token belongs to the credit-risk agent, with an operator token."""
    config = write_config(tmp_path, upstream.url, auth={"env_token_agent": CREDIT_RISK})
    served = start_gateway(
        config, {"CMCP_BEARER_TOKEN": AGENT_TOKEN, "CMCP_OPERATOR_TOKEN": OPERATOR_TOKEN}
    )
    yield served
    served.stop()


def modern_call(
    port: int,
    method: str,
    params: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    envelope: dict[str, Any] | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": method,
        "params": {**params, "_meta": ENVELOPE if envelope is None else envelope},
    }
    sent = {"mcp-protocol-version": MODERN, "mcp-method": method}
    if "name" in params:
        sent["mcp-name"] = params["name"]
    status, answer_headers, answer = request(
        port, "POST", "/mcp", body, {**sent, **(headers or {})}
    )
    return status, answer_headers, json.loads(answer)


def verify(claim: Path, audit: Path) -> None:
    verified = run_cmcp("verify", claim, "--allow-software", "--audit-log", audit, "--json")
    assert verified.returncode == 0, verified.stderr
    source = "--log" if audit.suffix == ".jsonl" else "--db"
    replayed = run_cmcp(
        "replay-audit", source, audit, "--all", "--claim", claim,
        "--bundle", QUICKSTART / "policies", "--json",
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout


def test_auto_mode_clients_speak_the_stateless_revision(gateway: Served) -> None:
    async def session() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with Client(gateway.url) as client:
            seen["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            weather = await client.call_tool("get_weather", {"city": "Rome"})
            seen["allowed"] = weather.content[0].text  # type: ignore[union-attr]
            seen["session"] = (weather.meta or {})["_cmcp.session_id"]
            with pytest.raises(MCPError) as denied:
                await client.call_tool("delete_records", {"table": "users"})
            seen["denied"] = denied.value.error
            again = await client.call_tool("get_weather", {"city": "Oslo"})
            seen["again"] = (again.meta or {})["_cmcp.session_id"]
        return seen

    seen = asyncio.run(session())
    assert seen["tools"] == ["get_weather", "lookup_customer"]
    assert seen["allowed"] == "Sunny, 21 C in Rome"
    assert seen["denied"].code == -32040
    assert seen["denied"].data["policy_ids"] == ["no-destructive-tools"]
    assert seen["again"] == seen["session"]  # one agent, one default session
    status, _, _ = request(gateway.port, "POST", f"/sessions/{seen['session']}/close")
    assert status == 200
    claim = gateway.log.parent / "claims" / f"{seen['session']}.claim.json"
    summary = json.loads(claim.read_text())["gateway"]["call_summary"]
    # two tool calls and one listing allowed, one tool call denied
    assert (summary["total"], summary["allowed"], summary["denied"]) == (4, 3, 1)
    assert summary["by_kind"]["list_tools"]["allowed"] == 1
    verify(claim, gateway.log.parent / "audit.db")


def test_stateless_requests_must_describe_themselves(gateway: Served) -> None:
    port = gateway.port
    status, _, discovered = modern_call(port, "server/discover", {})
    assert status == 200
    assert discovered["result"]["supportedVersions"] == [MODERN]
    assert discovered["result"]["resultType"] == "complete"

    status, _, answer = modern_call(port, "tools/list", {}, envelope={})
    assert (status, answer["error"]["code"]) == (400, -32602)
    assert "missing" in answer["error"]["message"]

    # the body decides; headers that say otherwise are refused, never believed
    status, _, answer = modern_call(
        port, "tools/call", {"name": "delete_records"}, headers={"mcp-name": "get_weather"}
    )
    assert (status, answer["error"]["code"]) == (400, -32020)
    assert "Mcp-Name" in answer["error"]["message"]
    status, _, answer = modern_call(port, "tools/list", {}, headers={"mcp-method": "ping"})
    assert (status, answer["error"]["code"]) == (400, -32020)

    older = {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2030-01-01"}
    status, _, answer = modern_call(
        port, "tools/list", {}, envelope=older, headers={"mcp-protocol-version": "2030-01-01"}
    )
    assert (status, answer["error"]["code"]) == (400, -32022)
    assert answer["error"]["data"] == {"supported": [MODERN], "requested": "2030-01-01"}

    named = {**ENVELOPE, "_cmcp.session_id": "not-a-session-of-yours"}
    status, _, answer = modern_call(port, "tools/list", {}, envelope=named)
    assert (status, answer["error"]["code"]) == (404, -32043)

    status, headers, answer = modern_call(
        port, "tools/call", {"name": "get_weather", "arguments": {"city": "Lima"}}
    )
    assert status == 200
    assert answer["result"]["resultType"] == "complete"
    assert answer["result"]["_meta"]["_cmcp.session_id"] == headers["cmcp-session-id"]
    chosen = {**ENVELOPE, "_cmcp.session_id": headers["cmcp-session-id"]}
    status, _, answer = modern_call(port, "tools/list", {}, envelope=chosen)
    assert (status, answer["result"]["_meta"]["_cmcp.session_id"]) == (
        200,
        headers["cmcp-session-id"],
    )
    # methods of the session era are not methods of this revision
    for removed in ("ping", "initialize", "logging/setLevel", "resources/subscribe"):
        status, _, answer = modern_call(port, removed, {})
        assert (status, answer["error"]["code"]) == (404, -32601), removed


def test_resources_and_prompts_are_relayed(gateway: Served) -> None:
    async def session() -> dict[str, Any]:
        async with (
            streamable_http_client(gateway.url) as (read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            resources = (await client.list_resources()).resources
            notes = await client.read_resource(str(resources[0].uri))
            prompts = (await client.list_prompts()).prompts
            prompt = await client.get_prompt("weather_report", {"city": "Bergen"})
            with pytest.raises(MCPError) as unknown:
                await client.read_resource("notes://desk/nowhere")
            return {
                "resources": [str(r.uri) for r in resources],
                "notes": notes.contents[0].text,  # type: ignore[union-attr]
                "prompts": [p.name for p in prompts],
                "prompt": prompt.messages[0].content.text,  # type: ignore[union-attr]
                "unknown": unknown.value.error,
            }

    seen = asyncio.run(session())
    assert seen["resources"] == ["notes://desk/today"]
    assert seen["notes"].startswith("Customer c-1 asked")
    assert seen["notes"].endswith("Reply to [REDACTED:email].")  # the quickstart's @redact
    assert seen["prompts"] == ["weather_report"]
    assert seen["prompt"] == "Give me the weather report for Bergen."
    # the upstream's own error, relayed as it was
    assert seen["unknown"].message == "unknown resource notes://desk/nowhere"


async def transfer(url: str, amounts: list[int]) -> list[Any]:
    """Each transfer's outcome, in one SDK session of the credit-risk agent."""
    outcomes: list[Any] = []
    async with (
        httpx2.AsyncClient(headers=AGENT) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        for amount in amounts:
            arguments = {"account_id": "acc-1", "amount": amount}
            try:
                result = await client.call_tool("transfer_funds", arguments)
                outcomes.append(result.content[0].text)  # type: ignore[union-attr]
            except MCPError as exc:
                outcomes.append(exc.error)
            if len(outcomes) == 1:
                outcomes.append(await asyncio.to_thread(approve, url, outcomes[0]))
    return outcomes


def approve(url: str, held: Any) -> str:
    """The operator's side, between the agent's attempts: approve the held call."""
    port = int(urlsplit(url).port or 0)
    approval_id = held.data["approval_id"]
    path = f"/approvals/{approval_id}"
    status, _, state = request(port, "GET", path, None, AGENT)
    assert (status, json.loads(state)["status"]) == (200, "pending")
    decision = {"decision": "approve", "note": "checked with the account owner"}
    assert request(port, "POST", path, decision, AGENT)[0] == 401  # agents cannot approve
    assert request(port, "POST", path, {"decision": "maybe"}, OPERATOR)[0] == 400
    status, _, answer = request(port, "POST", path, decision, OPERATOR)
    assert (status, json.loads(answer)["status"]) == (200, "approved")
    assert request(port, "POST", path, decision, OPERATOR)[0] == 409  # decided once
    return str(approval_id)


def test_an_escalated_call_runs_once_after_an_operator_approves_it(guarded: Served) -> None:
    held, approval_id, other, approved, again = asyncio.run(
        transfer(guarded.url, [20_000, 20_001, 20_000, 20_000])
    )
    assert held.code == -32041
    assert held.data["decision"] == "escalate"
    assert held.data["policy_ids"] == ["finance.cedar:policy0", "large-transfer-needs-approval"]
    assert "repeat this exact call" in held.message
    assert time.time() < held.data["expires_at"] <= time.time() + 900  # the default lifetime
    assert other.code == -32041  # another amount is another request: held again
    assert other.data["approval_id"] != approval_id
    assert approved == "transferred 20000 EUR"
    assert again.code == -32041  # single use: the same call needs a new approval
    assert again.data["approval_id"] not in (approval_id, other.data["approval_id"])

    status, _, listing = request(guarded.port, "GET", "/approvals", None, OPERATOR)
    assert status == 200
    assert request(guarded.port, "GET", "/approvals", None, AGENT)[0] == 401
    (claim,) = (guarded.log.parent / "claims").glob("*.claim.json")
    document = json.loads(claim.read_text())
    session_id = document["gateway"]["session_id"]
    assert json.loads(listing)["approvals"] == []  # a closed session's approvals are gone
    summary = document["gateway"]["call_summary"]
    assert (summary["escalated"], summary["tools_invoked"]) == (4, ["transfer_funds"])

    # the audit chain, exported by the operator (or the session's agent: the same bytes),
    # records who held what and which ran
    status, headers, exported = request(guarded.port, "GET", f"/audit/{session_id}", None, OPERATOR)
    assert (status, headers["content-type"]) == (200, "application/x-ndjson")
    assert request(guarded.port, "GET", f"/audit/{session_id}", None, AGENT)[2] == exported
    entries = [json.loads(line) for line in exported.splitlines()]
    decisions = [e for e in entries if e.get("phase") == "decision" and "tool" in e]
    assert [(e["forwarded"], e["approval"]["status"]) for e in decisions] == [
        (False, "pending"),
        (False, "pending"),
        (True, "approved"),
        (False, "pending"),
    ]
    assert decisions[2]["approval"]["approval_id"] == approval_id
    log = guarded.log.parent / "exported.jsonl"
    log.write_bytes(exported)
    verify(claim, log)


def test_metrics_count_calls_by_decision(gateway: Served) -> None:
    async def calls() -> None:
        async with Client(gateway.url) as client:
            await client.call_tool("get_weather", {"city": "Rome"})
            with pytest.raises(MCPError):
                await client.call_tool("delete_records", {"table": "users"})

    asyncio.run(calls())
    status, headers, body = request(gateway.port, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    values = dict(
        line.rsplit(" ", 1) for line in body.decode().splitlines() if not line.startswith("#")
    )
    assert values['cmcp_tool_calls_total{decision="allow"}'] == "1"
    assert values['cmcp_tool_calls_total{decision="deny"}'] == "1"
    assert values["cmcp_tool_call_duration_seconds_count"] == "2"
    assert values['cmcp_tool_call_duration_seconds_bucket{le="+Inf"}'] == "2"
    assert values["cmcp_sessions_open"] == "1"


def test_approvals_expire_and_are_bound_to_their_session() -> None:
    now = [1000.0]
    desk = ApprovalDesk(60, clock=lambda: now[0])
    held = desk.hold(
        session_id="s1", agent="a", call_id="s1/0", tool="t", request_sha256="sha256:1",
        reasons=("why",), policy_ids=("p",),
    )  # fmt: skip
    again = desk.hold(
        session_id="s1", agent="a", call_id="s1/1", tool="t", request_sha256="sha256:1",
        reasons=("why",), policy_ids=("p",),
    )  # fmt: skip
    assert again.id == held.id  # a retried held call does not pile up approvals
    desk.decide(held.id, approve=True)
    assert desk.consume("s2", "sha256:1") is None  # another session
    assert desk.consume("s1", "sha256:2") is None  # another request
    assert desk.consume("s1", "sha256:1", "other-workflow") is None  # another workflow
    now[0] += 61
    assert desk.consume("s1", "sha256:1") is None  # expired
    assert desk.listing()[0].status is ApprovalStatus.EXPIRED
    with pytest.raises(ApprovalError) as late:
        desk.decide(held.id, approve=True)
    assert late.value.status == 409


def test_an_approval_runs_its_call_only_under_the_workflow_it_was_held_in() -> None:
    desk = ApprovalDesk(60)
    held = desk.hold(
        session_id="s1", agent="a", call_id="s1/0", tool="t", request_sha256="sha256:1",
        reasons=("why",), policy_ids=("p",), workflow_id="nightly-report",
    )  # fmt: skip
    elsewhere = desk.hold(
        session_id="s1", agent="a", call_id="s1/1", tool="t", request_sha256="sha256:1",
        reasons=("why",), policy_ids=("p",), workflow_id="ad-hoc",
    )  # fmt: skip
    assert elsewhere.id != held.id  # the operator sees each workflow's call on its own
    assert held.to_json()["workflow_id"] == "nightly-report"
    desk.decide(held.id, approve=True)
    assert desk.consume("s1", "sha256:1", "ad-hoc") is None
    assert desk.consume("s1", "sha256:1") is None
    used = desk.consume("s1", "sha256:1", "nightly-report")
    assert used is not None and used.id == held.id
    assert desk.consume("s1", "sha256:1", "nightly-report") is None  # single use


def test_a_tool_that_changes_after_first_use_is_caught_and_announced(tmp_path: Path) -> None:
    upstream = start_upstream(tmp_path, drift_later="get_weather")
    gateway = start_gateway(write_config(tmp_path, upstream.url))
    notices: list[str] = []

    async def on_message(message: Any) -> None:
        method = getattr(getattr(message, "root", message), "method", None)
        if isinstance(method, str):
            notices.append(method)

    async def session() -> tuple[str, Any, list[str]]:
        async with (
            streamable_http_client(gateway.url) as (read, write),
            ClientSession(read, write, message_handler=on_message) as client,
        ):
            await client.initialize()
            first = await client.call_tool("get_weather", {"city": "Riga"})
            for _ in range(600):  # the upstream's change reaches the gateway, then us
                if "notifications/tools/list_changed" in notices:
                    break
                await asyncio.sleep(0.05)
            # the gateway re-pins before it forwards the notice: the call after it is judged
            # against the drifted definition (on a loaded machine the notice can take seconds)
            assert "notifications/tools/list_changed" in notices, "no list_changed in 30 s"
            with pytest.raises(MCPError) as drifted:
                await client.call_tool("get_weather", {"city": "Riga"})
            listed = sorted(t.name for t in (await client.list_tools()).tools)
            return first.content[0].text, drifted.value.error, listed  # type: ignore[union-attr]

    try:
        first, drifted, listed = asyncio.run(session())
    finally:
        gateway.stop()
        upstream.stop()
    assert first == "Sunny, 21 C in Riga"
    assert "notifications/tools/list_changed" in notices
    assert drifted.code == -32042
    assert listed == ["lookup_customer"]  # the drifted tool is not offered any more
    (claim,) = (tmp_path / "claims").glob("*.claim.json")
    assert json.loads(claim.read_text())["gateway"]["catalog"]["drift_detected"] is True
    verify(claim, tmp_path / "audit.db")
