"""The curl quick start and plain JSON-RPC one-shot calls, through `cmcp start` on
loopback in front of official SDK upstreams: the call is served in the session
`params._cmcp.session_id` names (its agent's only; an ended one is refused, also after a
restart), the workflow id reaches the policy from `params._cmcp`, the `Cmcp-Workflow-Id`
header and `_meta` (official SDK clients of both eras), `params._cmcp` reaches neither the
policy's arguments nor an upstream, the claim is retrievable, and what a request lacks is
named as missing."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import RequestParamsMeta

from cmcp_cli.gateway.downstream import gateway_params
from cmcp_cli.wire.jsonrpc import Message, ProtocolError
from tests.gateway_support import (
    INIT,
    Served,
    free_port,
    request,
    start_gateway,
    write_config,
)
from tests.support import run_cmcp
from tests.test_gateway_methods import start_stack, upstream_events

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


@pytest.fixture
def two_agents(tmp_path: Path, upstream: Served) -> Iterator[Served]:
    auth = {
        "bearer_tokens": [
            {"agent": ALICE, "token_env": "ALICE_TOKEN"},
            {"agent": BOB, "token_env": "BOB_TOKEN"},
        ]
    }
    config = write_config(tmp_path, upstream.url, auth=auth)
    gateway = start_gateway(config, {"ALICE_TOKEN": ALICE_TOKEN, "BOB_TOKEN": BOB_TOKEN})
    yield gateway
    gateway.stop()


def plain_call(
    port: int, session_id: str | None, caller: dict[str, str] | None, **params: Any
) -> tuple[int, dict[str, str], dict[str, Any]]:
    call: dict[str, Any] = {"name": "get_weather", "arguments": {"city": "Lyon"}, **params}
    if session_id is not None:
        call["_cmcp"] = {"session_id": session_id}
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": call}
    status, headers, answer = request(port, "POST", "/mcp", body, caller)
    return status, headers, json.loads(answer)


def test_a_session_id_is_its_agents_alone(two_agents: Served) -> None:
    port = two_agents.port
    status, _, answer = plain_call(port, "shared-name", AS_ALICE)
    assert status == 200, answer
    not_available = {
        "code": -32602,
        "message": "session id 'shared-name' is not available to this agent: pick another "
        "params._cmcp.session_id",
    }
    status, _, answer = plain_call(port, "shared-name", AS_BOB)
    assert (status, answer["error"]) == (409, not_available)
    assert request(port, "GET", "/trace/shared-name", None, AS_BOB)[0] == 404
    assert request(port, "POST", "/sessions/shared-name/close", None, AS_BOB)[0] == 404
    # its own agent goes on in it, and ends it
    assert plain_call(port, "shared-name", AS_ALICE)[0] == 200
    assert request(port, "POST", "/sessions/shared-name/close", None, AS_ALICE)[0] == 200
    status, _, answer = plain_call(port, "shared-name", AS_ALICE)
    assert (status, answer["error"]["code"]) == (404, -32043)
    assert "has ended: its claim is at GET /trace/shared-name" in answer["error"]["message"]
    # to another agent, an ended session is as unavailable as an open one: nothing more
    status, _, answer = plain_call(port, "shared-name", AS_BOB)
    assert (status, answer["error"]) == (409, not_available)
    # each agent's latest is its own
    status, _, claim = request(port, "GET", "/trace/latest", None, AS_ALICE)
    assert (status, json.loads(claim)["gateway"]["session_id"]) == (200, "shared-name")
    status, _, body = request(port, "GET", "/trace/latest", None, AS_BOB)
    assert status == 404
    assert json.loads(body)["error"].startswith("no session of yours yet")
    # two agents naming one new id at once: exactly one gets it; one agent's concurrent
    # first calls share the one session they open
    callers = [AS_ALICE, AS_BOB, AS_ALICE, AS_ALICE, AS_BOB]
    with ThreadPoolExecutor(len(callers)) as pool:
        raced = list(pool.map(lambda who: plain_call(port, "raced", who)[0], callers))
    alice, bob = [raced[0], *raced[2:4]], [raced[1], raced[4]]
    assert (alice, bob) in (([200] * 3, [409] * 2), ([409] * 3, [200] * 2)), raced
    winner = AS_ALICE if alice[0] == 200 else AS_BOB
    decided = call_decisions(audit(port, "raced", winner))
    assert len(decided) == len(alice if winner is AS_ALICE else bob)
    # without a token, the missing header is named
    status, _, answer = plain_call(port, "s2", None)
    assert (status, answer["error"]["message"]) == (
        401,
        "the Authorization header is missing: send Authorization: Bearer <token>",
    )
    status, _, answer = plain_call(port, "s2", {"authorization": "Bearer " + "x" * 40})
    assert (status, answer["error"]["message"]) == (
        401,
        "the bearer token is not valid: send one of the gateway's agent tokens",
    )


def test_gateway_params_reach_neither_the_policy_nor_an_upstream(tmp_path: Path) -> None:
    upstream, gateway = start_stack(tmp_path, record=True)
    try:
        port = gateway.port
        own = {"session_id": "mine", "workflow_id": "wf-1"}
        call = {"name": "zeta_echo", "arguments": {"text": "hi"}, "_cmcp": own}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}
        status, _, answer = request(port, "POST", "/mcp", body)
        assert status == 200, answer
        assert json.loads(answer)["result"]["content"][0]["text"] == "zeta_echo: hi"
        read = {"jsonrpc": "2.0", "id": 2, "method": "resources/read"}
        read["params"] = {"uri": "test://doc", "_cmcp": own}
        status, _, answer = request(port, "POST", "/mcp", read)
        assert status == 200, answer
        # the session era: the same params, and the workflow id in _meta too
        status, headers, _ = request(port, "POST", "/mcp", INIT)
        session = {"mcp-session-id": headers["mcp-session-id"]}
        era = {"_cmcp": {"workflow_id": "wf-1"}, "_meta": {"_cmcp.workflow_id": "wf-1"}}
        for message in (
            {**body, "params": {**call, **era}},
            {**read, "params": {"uri": "test://doc", **era}},
        ):
            status, _, answer = request(port, "POST", "/mcp", message, session)
            assert status == 200, answer
            assert "result" in json.loads(answer), answer
        received = [e["body"] for e in upstream_events(upstream, "received")]
        assert sum("zeta_echo" in b for b in received) == 2
        assert sum("test://doc" in b for b in received) == 2
        assert not [b for b in received if "_cmcp" in b]
        for session_id in ("mine", headers["mcp-session-id"]):
            entries = audit(port, session_id)
            calls = [e for e in entries if e.get("tool") == "zeta_echo" and "cedar_request" in e]
            (decided,) = calls
            context = decided["cedar_request"]["context"]
            assert context["arguments"] == {"text": "hi"}
            assert context["workflow_id"] == "wf-1"
    finally:
        gateway.stop()
        upstream.stop()


def refused(
    port: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, int, str]:
    status, _, answer = request(port, "POST", "/mcp", body, headers)
    error = json.loads(answer)["error"]
    return status, error["code"], error["message"]


def test_what_a_request_lacks_is_named_as_missing(gateway: Served) -> None:
    port = gateway.port
    call = {"name": "get_weather", "arguments": {"city": "Lima"}}
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": call}
    # a session-era request without its session: the three ways to be served
    assert refused(port, body, {"mcp-protocol-version": "2025-06-18"}) == (
        400,
        -32600,
        "Mcp-Session-Id is missing. Either initialize first and send the Mcp-Session-Id it "
        "answers with; or speak 2026-07-28 (the protocol version in params._meta and the "
        "MCP-Protocol-Version header); or send a plain JSON-RPC call, without the "
        "MCP-Protocol-Version header, naming its session in params._cmcp.session_id",
    )
    # following the 2026-07-28 hint one step at a time: each step names what is missing
    modern = {"mcp-protocol-version": MODERN}
    assert refused(port, body, modern) == (
        400,
        -32602,
        "params._meta is missing: a 2026-07-28 request carries "
        "'io.modelcontextprotocol/protocolVersion' and "
        "'io.modelcontextprotocol/clientCapabilities' in it (the capabilities may be {})",
    )
    version_only = {"io.modelcontextprotocol/protocolVersion": MODERN}
    with_version = {**body, "params": {**call, "_meta": version_only}}
    assert refused(port, with_version) == (
        400,
        -32602,
        "params._meta is missing 'io.modelcontextprotocol/clientCapabilities': a 2026-07-28 "
        "request carries 'io.modelcontextprotocol/protocolVersion' and "
        "'io.modelcontextprotocol/clientCapabilities' (the capabilities may be {})",
    )
    enveloped = {**body, "params": {**call, "_meta": ENVELOPE}}
    assert refused(port, enveloped) == (
        400,
        -32020,
        "the MCP-Protocol-Version header is missing: a 2026-07-28 request repeats "
        "params._meta's protocol version in it (MCP-Protocol-Version: 2026-07-28)",
    )
    assert refused(port, enveloped, modern) == (
        400,
        -32020,
        "the Mcp-Method header is missing: a 2026-07-28 request repeats the body's method "
        "in it (Mcp-Method: tools/call)",
    )
    routed = {**modern, "mcp-method": "tools/call"}
    assert refused(port, enveloped, routed) == (
        400,
        -32020,
        "the Mcp-Name header is missing: a 2026-07-28 request repeats the body's 'name' in "
        "it (Mcp-Name: get_weather)",
    )
    # present and different is still a mismatch
    assert refused(port, enveloped, {**routed, "mcp-name": "delete_records"}) == (
        400,
        -32020,
        "the Mcp-Name header does not match the body's 'name'",
    )
    status, _, answer = request(
        port, "POST", "/mcp", enveloped, {**routed, "mcp-name": "get_weather"}
    )
    assert status == 200, answer

    # the session's own stream and its end need the session's id
    status, _, answer = request(port, "GET", "/mcp", None, {"accept": "text/event-stream"})
    assert (status, json.loads(answer)["error"]["message"]) == (
        400,
        "Mcp-Session-Id is missing: a stream is a session's; send the Mcp-Session-Id that "
        "initialize answered with",
    )
    status, _, answer = request(port, "DELETE", "/mcp")
    assert (status, json.loads(answer)["error"]["message"]) == (
        400,
        "Mcp-Session-Id is missing: DELETE ends the session that header names",
    )


def test_gateway_params_are_checked(gateway: Served) -> None:
    port = gateway.port
    call = {"name": "get_weather", "arguments": {"city": "Lima"}}

    def with_own(own: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {**call, "_cmcp": own}}

    known = "the known keys are session_id, workflow_id"
    assert refused(port, with_own("s1")) == (
        400,
        -32602,
        "params._cmcp must be an object with any of session_id, workflow_id",
    )
    assert refused(port, with_own({"session": "s1"})) == (
        400,
        -32602,
        f"params._cmcp has unknown key(s) 'session': {known}",
    )
    bad: object
    for bad in ("a/b", "", "x" * 65, 7, "latest"):
        status, code, text = refused(port, with_own({"session_id": bad}))
        assert (status, code) == (400, -32602), bad
        assert text.startswith("params._cmcp.session_id must be 1 to 64 letters"), bad
    for bad in ("", " padded", "tab\there", "é", "x" * 129, None):
        status, code, text = refused(port, with_own({"workflow_id": bad}))
        assert (status, code) == (400, -32602), bad
        assert text.startswith("params._cmcp.workflow_id must be 1 to 128 printable ASCII")
    # a session-era request names its session with its header, not with _cmcp
    status, headers, _ = request(port, "POST", "/mcp", INIT)
    session = {"mcp-session-id": headers["mcp-session-id"]}
    assert refused(port, with_own({"session_id": "s1"}), session) == (
        400,
        -32602,
        "params._cmcp.session_id names the session of a plain JSON-RPC call only; this "
        "request's session is its Mcp-Session-Id",
    )
    # methods the stateless revision removed are not served to a plain call either
    ping = {"jsonrpc": "2.0", "id": 4, "method": "ping", "params": {}}
    assert refused(port, ping) == (
        404,
        -32601,
        "ping is not served to a plain JSON-RPC call (it belongs to sessions of 2025-11-25 "
        "and earlier: initialize one to use it)",
    )


def test_a_request_without_gateway_params_is_passed_as_it_is() -> None:
    message = Message("tools/call", {"name": "t", "arguments": {}}, 1)
    scope: dict[str, Any] = {"headers": [(b"content-type", b"application/json")]}
    taken, own = gateway_params.take(scope, message)
    assert taken is message
    assert own == gateway_params.GatewayParams()
    scope["headers"].append((b"cmcp-workflow-id", b"wf"))
    taken, own = gateway_params.take(scope, message)
    assert (taken, own.workflow_id) == (message, "wf")
    with pytest.raises(ProtocolError):
        gateway_params.take(scope, Message("tools/call", {"_meta": {"_cmcp.workflow_id": 1}}, 1))
