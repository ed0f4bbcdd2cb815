"""Plain JSON-RPC calls checked at the gateway, through `cmcp start` on loopback in front of
official SDK upstreams: a session id named in `params._cmcp` is its agent's alone (also in
a race for it), `params._cmcp` reaches neither the policy's arguments nor an upstream, what
a request lacks is named as missing, and malformed gateway parameters are refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.gateway.downstream import gateway_params
from cmcp_cli.wire.jsonrpc import Message, ProtocolError
from tests.gateway_support import (
    INIT,
    Served,
    request,
    start_gateway,
    write_config,
)
from tests.test_gateway_methods import start_stack, upstream_events
from tests.test_gateway_plain_calls import (
    ALICE,
    ALICE_TOKEN,
    AS_ALICE,
    AS_BOB,
    BOB,
    BOB_TOKEN,
    ENVELOPE,
    MODERN,
    audit,
    call_decisions,
)


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
