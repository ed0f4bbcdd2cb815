"""Escalation never grants what no permit allows: through the gateway (`cmcp start`, the
SDK demo upstream and official SDK clients, on loopback) and when a recorded chain is
decided again by `cmcp replay-audit --bundle`."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_cli.attestation import software
from cmcp_cli.audit.session_record import SessionPolicy
from cmcp_cli.audit.store import AuditStore, iter_lines
from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.claim.canonical import canonical_sha256
from cmcp_cli.evidence.attesting import Attestor
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.gateway.enforcement.wiring import tool_resources
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.policy.request import tool_call_request
from tests.gateway_support import Served, request, start_gateway, write_config
from tests.support import QUICKSTART, run_cmcp

CREDIT_RISK = "spiffe://trust.example.org/agent/credit-risk"  # the quickstart's finance permit
INTERN = "spiffe://trust.example.org/agent/intern"  # no permit for financial tools
TOKENS = {CREDIT_RISK: "c" * 40, INTERN: "i" * 40}
OPERATOR = {"authorization": "Bearer " + "o" * 40}
FORBID = "large-transfer-needs-approval"
FINANCE_PERMIT = "finance.cedar:policy0"
# Added to the quickstart: a lookup its redacting permit allows, held for an operator.
VIP_LOOKUP = """
@id("vip-lookup-needs-approval")
@escalate("the record of customer c-1 needs an operator")
forbid (principal, action == Action::"call_tool", resource == Tool::"lookup_customer")
when { context.arguments has customer_id && context.arguments.customer_id == "c-1" };
"""


def serve(folder: Path, quickstart: Path, upstream: Served, mode: str) -> Served:
    """A gateway for two agents, one with the finance permit, and an operator."""
    with (quickstart / "policies" / "tools.cedar").open("a") as policies:
        policies.write(VIP_LOOKUP)
    tokens = [
        {"agent": agent, "token_sha256": "sha256:" + hashlib.sha256(token.encode()).hexdigest()}
        for agent, token in TOKENS.items()
    ]
    config = write_config(
        folder,
        upstream.url,
        auth={"bearer_tokens": tokens},
        policy_bundle_path=str(quickstart / "policies"),
        attestation={"enforcement_mode": mode},
    )
    return start_gateway(config, {"CMCP_OPERATOR_TOKEN": "o" * 40})


@pytest.fixture
def two_agents(tmp_path: Path, quickstart: Path, upstream: Served) -> Iterator[Served]:
    served = serve(tmp_path, quickstart, upstream, "enforcing")
    yield served
    served.stop()


def operator(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    status, _, answer = request(port, method, path, body, OPERATOR)
    assert status == 200, answer
    return json.loads(answer)


async def attempt(client: ClientSession, tool: str, arguments: dict[str, Any]) -> Any:
    """The call's result, or the gateway's error for it."""
    try:
        return await client.call_tool(tool, arguments)
    except MCPError as exc:
        return exc.error


async def as_intern(url: str, port: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    headers = {"authorization": f"Bearer {TOKENS[INTERN]}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        seen["small"] = await attempt(client, "transfer_funds", {"account_id": "a", "amount": 50})
        large = {"account_id": "a", "amount": 20_000}
        seen["large"] = await attempt(client, "transfer_funds", large)
        # nothing waits for the operator while the session is still open
        seen["approvals"] = await asyncio.to_thread(operator, port, "GET", "/approvals")
        seen["again"] = await attempt(client, "transfer_funds", large)
    return seen


async def as_credit_risk(url: str, port: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    headers = {"authorization": f"Bearer {TOKENS[CREDIT_RISK]}"}
    calls: dict[str, tuple[str, dict[str, Any]]] = {
        "transfer": ("transfer_funds", {"account_id": "a", "amount": 20_000}),
        "lookup": ("lookup_customer", {"customer_id": "c-1"}),
    }
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        for name, (tool, arguments) in calls.items():
            held = seen[f"{name} held"] = await attempt(client, tool, arguments)
            path = f"/approvals/{held.data['approval_id']}"
            approve = {"decision": "approve", "note": "checked"}
            seen[f"{name} approval"] = await asyncio.to_thread(
                operator, port, "POST", path, approve
            )
            seen[f"{name} ran"] = await attempt(client, tool, arguments)
    return seen


def entries(db: Path, call_id: str) -> list[dict[str, Any]]:
    """The audit entries of the session that `call_id` belongs to."""
    return [orjson.loads(line) for line in iter_lines(db, call_id.rsplit("/", 1)[0])]


def test_no_permit_means_no_escalation_and_nothing_to_approve(
    two_agents: Served, quickstart: Path
) -> None:
    intern = asyncio.run(as_intern(two_agents.url, two_agents.port))
    small, large, again = intern["small"], intern["large"], intern["again"]
    assert (small.code, small.data["decision"], small.data["policy_ids"]) == (-32040, "deny", [])
    # the large transfer is denied like the small one: not held, nothing to approve
    assert large.code == -32040
    assert (large.data["decision"], large.data["policy_ids"]) == ("deny", [FORBID])
    assert "approval_id" not in large.data
    assert "no permit policy applies" in large.message
    assert "an operator's approval cannot allow it" in large.message
    assert intern["approvals"] == {"approvals": []}
    assert (again.code, again.data["decision"]) == (-32040, "deny")
    db = two_agents.log.parent / "audit.db"
    recorded = [e for e in entries(db, large.data["call_id"]) if e.get("tool")]
    assert [(e["decision"], e["forwarded"], "approval" in e) for e in recorded] == [
        ("deny", False, False)
    ] * 3

    credit_risk = asyncio.run(as_credit_risk(two_agents.url, two_agents.port))
    held = credit_risk["transfer held"]
    assert (held.code, held.data["decision"]) == (-32041, "escalate")
    assert held.data["policy_ids"] == [FINANCE_PERMIT, FORBID]
    assert credit_risk["transfer approval"]["status"] == "approved"
    assert credit_risk["transfer ran"].content[0].text == "transferred 20000 EUR"

    # an approval lifts the hold, not the redaction of the permit the call runs under
    lookup = credit_risk["lookup held"]
    assert (lookup.code, lookup.data["decision"]) == (-32041, "escalate")
    assert lookup.data["policy_ids"] == ["customer-lookup-redacted", "vip-lookup-needs-approval"]
    ran = credit_risk["lookup ran"]
    assert not ran.is_error
    assert ran.structured_content == {
        "customer": {
            "name": "Ada Lovelace",
            "email": "[REDACTED:email]",
            "phone": "[REDACTED:phone]",
            "ssn": "[REDACTED:pointer]",
        }
    }
    assert "ada@example.org" not in ran.content[0].text
    assert "078-05-1120" not in ran.content[0].text

    session = entries(db, held.data["call_id"])
    outcomes = {e["call_id"]: e for e in session if e.get("phase") == "outcome"}
    (approved,) = [e for e in session if e.get("tool") == "lookup_customer" and e["forwarded"]]
    assert approved["approval"]["status"] == "approved"
    # the text content and structuredContent, each redacted
    assert outcomes[approved["call_id"]]["redactions"] == {
        "email": 2,
        "phone": 2,
        "pointer:/customer/ssn": 1,
    }

    # the recorded decisions are the ones the bundle makes again
    replayed = run_cmcp(
        "replay-audit", "--db", db, "--all", "--bundle", quickstart / "policies", "--json"
    )
    assert replayed.returncode == 0, replayed.stdout
    recorded_decisions = sum(
        orjson.loads(line).get("phase") == "decision" for line in iter_lines(db)
    )
    checked = [s["decisions_checked"] for s in replayed.json()["sessions"]]
    assert (len(checked), sum(checked)) == (2, recorded_decisions)


NOTES_ESCALATE = """
@id("notes-need-approval")
@escalate("desk notes need an operator")
forbid (principal, action == Action::"read_resource", resource);
"""


def test_an_escalation_forwarded_in_advisory_mode_keeps_its_redaction(
    tmp_path: Path, quickstart: Path, upstream: Served
) -> None:
    """`advisory` forwards what enforcing would hold, without an approval: under the
    permits that allow it, redacted as they say (a tool call, and a resource read)."""
    with (quickstart / "policies" / "messages.cedar").open("a") as policies:
        policies.write(NOTES_ESCALATE)

    async def lookup(url: str) -> tuple[Any, Any]:
        headers = {"authorization": f"Bearer {TOKENS[INTERN]}"}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            customer = await client.call_tool("lookup_customer", {"customer_id": "c-1"})
            notes = await client.read_resource("notes://desk/today")
            return customer, notes.contents[0]

    served = serve(tmp_path, quickstart, upstream, "advisory")
    try:
        customer, notes = asyncio.run(lookup(served.url))
    finally:
        served.stop()
    assert customer.structured_content == {
        "customer": {
            "name": "Ada Lovelace",
            "email": "[REDACTED:email]",
            "phone": "[REDACTED:phone]",
            "ssn": "[REDACTED:pointer]",
        }
    }
    assert notes.text.endswith("Reply to [REDACTED:email].")  # the read_resource permit's
    recorded = [orjson.loads(line) for line in iter_lines(tmp_path / "audit.db")]
    decided = [
        (e.get("tool") or e["kind"], e["decision"], e["forwarded"], "approval" in e)
        for e in recorded
        if e.get("phase") == "decision" and e.get("kind") != "list_tools"
    ]
    assert decided == [
        ("lookup_customer", "escalate", True, False),
        ("read_resource", "escalate", True, False),
    ]


def test_replay_reports_an_escalation_recorded_without_a_permit(tmp_path: Path) -> None:
    """A chain and claim an earlier gateway made, consistent in every other way, with a
    large transfer of an agent without a permit recorded as `escalate`."""
    bundle = compile_bundle(read_bundle(QUICKSTART / "policies"))
    catalog = load_catalog(QUICKSTART / "catalog.json")
    transfer = {tool.name: tool for tool in tool_resources(catalog)}["transfer_funds"]
    arguments = {"account_id": "a", "amount": 20_000}
    db = tmp_path / "audit.db"
    policy = SessionPolicy(
        bundle_hash=bundle.hash,
        policy_version=bundle.source.manifest.version,
        catalog_hash=catalog.hash,
        enforcement_mode="enforcing",
        data_class_order=("public", "internal", "confidential", "restricted", "secret"),
    )
    with AuditStore(db) as store:
        session = EvidenceSession(
            store=store,
            session_id="old",
            policy=policy,
            attestor=Attestor.load(software.SPEC, "0.1.0"),
            agent=INTERN,
        )
        cedar_request = tool_call_request(
            agent_id=INTERN,
            tool=transfer.name,
            arguments=arguments,
            data_class=transfer.data_class,
            session_max_sensitivity="public",
            platform=session.evidence.platform,
        )
        held = session.recorder.decision(
            call_id="old/0",
            tool=transfer.name,
            decision="escalate",
            policy_ids=[FORBID],
            request_sha256=canonical_sha256({"name": transfer.name, "arguments": arguments}),
            data_class=transfer.data_class,
            forwarded=False,
            cedar_request=cedar_request.to_record(transfer),
            approval={"approval_id": "a-1", "status": "pending", "expires_at": 2_000_000_000},
        )
        closed = session.close(reason="client closed the session")
    claim = tmp_path / "old.claim.json"
    claim.write_text(json.dumps(closed.claim))
    assert closed.claim["gateway"]["call_summary"]["escalated"] == 1

    untouched = run_cmcp("replay-audit", "--db", db, "--claim", claim, "--json")
    assert untouched.returncode == 0, untouched.stdout  # the chain and claim agree
    result = run_cmcp(
        "replay-audit", "--db", db, "--claim", claim, "--bundle", QUICKSTART / "policies", "--json"
    )
    assert result.returncode == 1, result.stdout
    (replayed,) = result.json()["sessions"]
    (problem,) = replayed["problems"]
    assert (problem["kind"], problem["seq"]) == ("decision_mismatch", held.seq)
    assert problem["message"] == (
        f"seq {held.seq}: recorded escalate by ['{FORBID}'], "
        f"but the bundle decides deny by ['{FORBID}']"
    )
