"""The curl quick start and plain JSON-RPC one-shot calls, through `cmcp start` on
loopback in front of official SDK upstreams: the call is served in the session
`params._cmcp.session_id` names (an ended one is refused, also after a restart), the
workflow id reaches the policy from `params._cmcp`, the `Cmcp-Workflow-Id` header and
`_meta` (official SDK clients of both eras) and binds operator approvals, and the claim is
retrievable. The checks on such requests: test_gateway_plain_call_checks.py."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import RequestParamsMeta

from tests.gateway_support import (
    Served,
    free_port,
    request,
    start_gateway,
)
from tests.support import run_cmcp

# The quick start of the issue, byte for byte.
CURL_BODY = (
    '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather",'
    '"arguments":{"city":"Paris"},"_cmcp":{"session_id":"s1","workflow_id":"demo-agent"}}}'
)
CURL = shutil.which("curl")
WORKFLOW_POLICY = """
// get_weather only inside the demo-agent workflow
@id("weather-in-demo-workflow")
forbid (
  principal,
  action == Action::"call_tool",
  resource == Tool::"get_weather"
) unless { context.workflow_id == "demo-agent" };
"""
ALICE, BOB = "spiffe://example.org/agent/alice", "spiffe://example.org/agent/bob"
ALICE_TOKEN, BOB_TOKEN = "a" * 40, "b" * 40
AS_ALICE = {"authorization": f"Bearer {ALICE_TOKEN}"}
AS_BOB = {"authorization": f"Bearer {BOB_TOKEN}"}
MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


def curl(port: int, body: str = CURL_BODY) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The quick start's curl command, run as a user runs it (real curl where the machine
    has it; otherwise http.client sending what curl sends: Host, Accept: */*)."""
    url = f"http://localhost:{port}/mcp"
    if CURL is None:
        status, headers, answer = request(
            port,
            "POST",
            "/mcp",
            body.encode(),
            {"host": f"localhost:{port}", "accept": "*/*", "user-agent": "curl/8"},
        )
        return status, headers, json.loads(answer)
    command = [CURL, "-X", "POST", url, "-H", "Content-Type: application/json", "-d", body]
    # output options only: what is sent is the command above
    completed = subprocess.run(
        [*command, "--silent", "--include", "--max-time", "30"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    head, _, payload = completed.stdout.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, json.loads(payload)


def quickstart_gateway(quickstart: Path, upstream: Served) -> Served:
    """`cmcp start` on the quickstart's own config, in dev mode without a token; only its
    port (taken from the OS) and the upstream's address (the test's) changed."""
    config = quickstart / "cmcp-config.yaml"
    text = config.read_text()
    assert "127.0.0.1:8443" in text and "http://127.0.0.1:8765/mcp" in text
    text = text.replace("127.0.0.1:8443", f"127.0.0.1:{free_port()}")
    config.write_text(text.replace("http://127.0.0.1:8765/mcp", upstream.url))
    return start_gateway(config)


def audit(port: int, session_id: str, caller: dict[str, str] | None = None) -> list[Any]:
    status, _, body = request(port, "GET", f"/audit/{session_id}", None, caller)
    assert status == 200, body
    return [json.loads(line) for line in body.splitlines()]


def call_decisions(entries: list[Any]) -> list[tuple[str, str, str]]:
    """(tool, decision, context.workflow_id) of each tool call decided."""
    return [
        (e["tool"], e["decision"], e["cedar_request"]["context"]["workflow_id"])
        for e in entries
        if e.get("phase") == "decision" and "cedar_request" in e and "kind" not in e
    ]


def check_claim(claim: bytes, folder: Path, audit_db: Path, bundle: Path) -> None:
    """The claim verifies against the audit log, and the log's decisions replay the same."""
    path = folder / "fetched.claim.json"
    path.write_bytes(claim)
    verified = run_cmcp("verify", path, "--allow-software", "--audit-log", audit_db, "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    replayed = run_cmcp(
        "replay-audit", "--db", audit_db, "--all", "--claim", path, "--bundle", bundle, "--json"
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr


def test_the_curl_quick_start_is_served_and_its_claim_retrieved(
    quickstart: Path, upstream: Served
) -> None:
    gateway = quickstart_gateway(quickstart, upstream)
    state = quickstart / ".state"
    try:
        port = gateway.port
        status, headers, answer = curl(port)
        assert status == 200, answer
        assert answer["id"] == 1
        assert answer["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
        assert headers["cmcp-session-id"] == "s1"
        # the session is the one named, the agent's own; the policy saw the workflow id
        assert call_decisions(audit(port, "s1")) == [("get_weather", "allow", "demo-agent")]

        # while it is open, the claim is not there yet: the answer says how to get one
        for path in ("/trace/latest", "/trace/s1"):
            status, _, body = request(port, "GET", path)
            assert status == 409, path
            said = json.loads(body)
            assert said["error"] == (
                "session 's1' is still open and has no claim yet: close it "
                "(POST /sessions/s1/close), then GET /trace/s1; or run the gateway with "
                "claims.per_call: true for a claim after every tool call"
            )
            assert (said["session_id"], said["open"]) == ("s1", True)

        status, _, closed = request(port, "POST", "/sessions/s1/close")
        assert (status, json.loads(closed)) == (200, {"session_id": "s1", "claim": "/trace/s1"})
        status, _, claim = request(port, "GET", "/trace/latest")
        assert status == 200, claim
        assert json.loads(claim)["gateway"]["session_id"] == "s1"
        check_claim(claim, quickstart, state / "audit.db", quickstart / "policies")

        ended = (
            "session 's1' has ended: its claim is at GET /trace/s1; pick a new "
            "params._cmcp.session_id for new calls"
        )
        status, _, answer = curl(port)
        assert (status, answer["error"]["code"], answer["error"]["message"]) == (
            404,
            -32043,
            ended,
        )
    finally:
        gateway.stop()
    claim_before = (state / "claims" / "s1.claim.json").read_bytes()

    # a later gateway process knows the id from the audit store: still refused, claim kept
    again = start_gateway(quickstart / "cmcp-config.yaml")
    try:
        status, _, answer = curl(again.port)
        assert (status, answer["error"]["message"]) == (404, ended)
        assert (state / "claims" / "s1.claim.json").read_bytes() == claim_before
        # without a session id: the agent's default session, named in the answer
        status, headers, answer = curl(again.port, CURL_BODY.replace('"session_id":"s1",', ""))
        assert status == 200, answer
        assert headers["cmcp-session-id"] not in ("", "s1")
    finally:
        again.stop()


@pytest.fixture
def workflow_gateway(quickstart: Path, upstream: Served) -> Iterator[Served]:
    """The quickstart, its bundle with one more policy: get_weather in demo-agent only."""
    (quickstart / "policies" / "workflow.cedar").write_text(WORKFLOW_POLICY)
    gateway = quickstart_gateway(quickstart, upstream)
    yield gateway
    gateway.stop()


def test_a_policy_on_the_workflow_id_decides_plain_calls(
    workflow_gateway: Served, quickstart: Path
) -> None:
    port = workflow_gateway.port
    status, _, answer = curl(port)
    assert status == 200, answer
    assert answer["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
    # the same call outside the workflow: denied by the workflow's policy
    status, _, answer = curl(port, CURL_BODY.replace(',"workflow_id":"demo-agent"', ""))
    assert (status, answer["error"]["code"]) == (200, -32040)
    assert answer["error"]["data"]["policy_ids"] == ["weather-in-demo-workflow"]
    # from the header instead
    status, _, sent = request(
        port,
        "POST",
        "/mcp",
        CURL_BODY.replace(',"workflow_id":"demo-agent"', "").encode(),
        {"cmcp-workflow-id": "demo-agent"},
    )
    assert status == 200, sent
    # two sources that disagree are refused, whichever would allow
    status, _, refused = request(
        port, "POST", "/mcp", CURL_BODY.encode(), {"cmcp-workflow-id": "other"}
    )
    error = json.loads(refused)["error"]
    assert (status, error["code"]) == (400, -32020)
    assert error["message"] == (
        "the workflow id is given twice, differently (params._cmcp.workflow_id and the "
        "Cmcp-Workflow-Id header): send it once, or the same in each"
    )
    assert call_decisions(audit(port, "s1")) == [
        ("get_weather", "allow", "demo-agent"),
        ("get_weather", "deny", ""),
        ("get_weather", "allow", "demo-agent"),
    ]
    assert request(port, "POST", "/sessions/s1/close")[0] == 200
    status, _, claim = request(port, "GET", "/trace/s1")
    assert status == 200
    check_claim(claim, quickstart, quickstart / ".state" / "audit.db", quickstart / "policies")


HELD_WEATHER = """
@id("weather-held")
@escalate("weather waits for an operator")
forbid (principal, action == Action::"call_tool", resource == Tool::"get_weather");
"""
OPERATOR_TOKEN = "o" * 40


def test_an_approval_runs_the_call_only_in_the_workflow_it_was_held_in(
    quickstart: Path, upstream: Served
) -> None:
    (quickstart / "policies" / "held.cedar").write_text(HELD_WEATHER)
    config = quickstart / "cmcp-config.yaml"
    text = config.read_text().replace("127.0.0.1:8443", f"127.0.0.1:{free_port()}")
    config.write_text(text.replace("http://127.0.0.1:8765/mcp", upstream.url))
    gateway = start_gateway(config, {"CMCP_OPERATOR_TOKEN": OPERATOR_TOKEN})
    as_operator = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
    in_other_workflow = CURL_BODY.replace('"demo-agent"', '"other-workflow"')
    try:
        status, _, held = curl(gateway.port)
        assert (status, held["error"]["code"]) == (200, -32041), held
        approval = held["error"]["data"]["approval_id"]
        status, _, body = request(
            gateway.port, "POST", f"/approvals/{approval}", {"decision": "approve"}, as_operator
        )
        assert status == 200, body
        assert json.loads(body)["workflow_id"] == "demo-agent"
        # the approved call, claimed for another workflow: held again, the approval unused
        status, _, again = curl(gateway.port, in_other_workflow)
        assert again["error"]["code"] == -32041
        assert again["error"]["data"]["approval_id"] != approval
        status, _, ran = curl(gateway.port)
        assert ran["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
        assert call_decisions(audit(gateway.port, "s1", as_operator)) == [
            ("get_weather", "escalate", "demo-agent"),
            ("get_weather", "escalate", "other-workflow"),
            ("get_weather", "escalate", "demo-agent"),
        ]
    finally:
        gateway.stop()


def workflow_meta(workflow_id: str) -> RequestParamsMeta:
    """A call's `_meta` naming its workflow (an open map: any key is carried)."""
    return cast("RequestParamsMeta", {"_cmcp.workflow_id": workflow_id})


async def session_era_calls(url: str) -> tuple[list[Any], str]:
    """get_weather from the SDK's session-era client: the workflow id in a header (the
    HTTP client's), in `_meta`, in both; and without one."""
    outcomes: list[Any] = []
    async with (
        httpx2.AsyncClient(headers={"Cmcp-Workflow-Id": "demo-agent"}) as tagged,
        streamable_http_client(url, http_client=tagged) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        weather = await client.call_tool("get_weather", {"city": "Oslo"})
        outcomes.append(weather.content[0].text)  # type: ignore[union-attr]
        with pytest.raises(MCPError) as disagreeing:
            await client.call_tool("get_weather", {"city": "Oslo"}, meta=workflow_meta("other"))
        outcomes.append(disagreeing.value.error)
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        weather = await client.call_tool(
            "get_weather", {"city": "Bergen"}, meta=workflow_meta("demo-agent")
        )
        outcomes.append(weather.content[0].text)  # type: ignore[union-attr]
        with pytest.raises(MCPError) as outside:
            await client.call_tool("get_weather", {"city": "Bergen"})
        outcomes.append(outside.value.error)
    async with Client(url) as modern:  # the 2026-07-28 revision, auto mode
        weather = await modern.call_tool(
            "get_weather", {"city": "Turin"}, meta=workflow_meta("demo-agent")
        )
        outcomes.append(weather.content[0].text)  # type: ignore[union-attr]
        session = str((weather.meta or {})["_cmcp.session_id"])
    return outcomes, session


def test_sdk_clients_set_the_workflow_id_by_header_and_meta(workflow_gateway: Served) -> None:
    outcomes, modern_session = asyncio.run(session_era_calls(workflow_gateway.url))
    header_ok, disagreeing, meta_ok, outside, modern_ok = outcomes
    assert header_ok == "Sunny, 21 C in Oslo"
    assert disagreeing.code == -32020
    assert disagreeing.message == (
        "the workflow id is given twice, differently (the Cmcp-Workflow-Id header and "
        "params._meta['_cmcp.workflow_id']): send it once, or the same in each"
    )
    assert meta_ok == "Sunny, 21 C in Bergen"
    assert outside.code == -32040
    assert outside.data["policy_ids"] == ["weather-in-demo-workflow"]
    assert modern_ok == "Sunny, 21 C in Turin"
    decided = call_decisions(audit(workflow_gateway.port, modern_session))
    assert decided == [("get_weather", "allow", "demo-agent")]
