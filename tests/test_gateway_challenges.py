"""Verifier challenges through a served gateway: `cmcp start` (dev mode) in front of the
SDK demo upstream, the official MCP SDK as the agent (the `Cmcp-Challenge` header set on
its HTTP client), raw JSON-RPC for `_meta` and for every refusal, and the real `cmcp
verify` as the auditor. Every refusal opens nothing."""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from cmcp_cli.claim.challenge import CHALLENGE_META_KEY
from cmcp_cli.gateway.downstream import gateway_params
from cmcp_cli.wire.jsonrpc import parse_message
from cmcp_cli.wire.mcp import forwardable_meta
from tests.gateway_support import (
    INIT,
    Served,
    request,
    start_gateway,
    statuses,
    verify,
    weather_session,
    write_config,
)
from tests.support import challenge, claim_binding

MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}
WAIT_SECONDS = 10.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Served) -> Iterator[Served]:
    served = start_gateway(write_config(tmp_path_factory.mktemp("challenges"), upstream.url))
    yield served
    served.stop()


def state(served: Served) -> Path:
    return served.log.parent


def open_sessions(served: Served) -> int:
    status, _, body = request(served.port, "GET", "/readyz")
    assert status == 200
    return int(json.loads(body)["sessions"])


def claim_of(served: Served, session_id: str) -> dict[str, Any]:
    """The session's claim, waiting (bounded) for the gateway to write it."""
    path = state(served) / "claims" / f"{session_id}.claim.json"
    deadline = time.monotonic() + WAIT_SECONDS
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def claim_with(served: Served, nonce: str) -> tuple[Path, dict[str, Any]]:
    """The one claim stating `nonce`, waiting (bounded) for the gateway to write it."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        found = [
            (path, claim)
            for path in sorted((state(served) / "claims").glob("*.claim.json"))
            if (claim := json.loads(path.read_text()))["trace"]["runtime"].get("nonce") == nonce
        ]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(found) == 1, found
    return found[0]


def session_start(served: Served, session_id: str) -> dict[str, Any]:
    status, _, body = request(served.port, "GET", f"/audit/{session_id}")
    assert status == 200, body
    first = json.loads(body.splitlines()[0])
    assert first["type"] == "session_start"
    return dict(first)


def post(
    served: Served, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, answered, raw = request(served.port, "POST", "/mcp", body, headers)
    return status, answered, json.loads(raw) if raw.strip() else {}


def initialize(meta: dict[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    params = dict(cast("dict[str, Any]", INIT["params"]))
    if meta is not None:
        params["_meta"] = meta
    return {**INIT, "id": request_id, "params": params}


def ping(request_id: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": "ping"}
    if meta is not None:
        message["params"] = {"_meta": meta}
    return message


def modern(method: str, params: dict[str, Any], meta: dict[str, Any] | None = None) -> Any:
    body = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": method,
        "params": {**params, "_meta": {**ENVELOPE, **(meta or {})}},
    }
    headers = {"mcp-protocol-version": MODERN, "mcp-method": method}
    if "name" in params:
        headers["mcp-name"] = params["name"]
    return body, headers


def audited(claim_path: Path, served: Served, *args: str) -> tuple[int, dict[str, Any]]:
    return verify(claim_path, "--allow-software", "--audit-log", state(served) / "audit.db", *args)


def test_an_sdk_client_gives_a_challenge_in_a_header_and_the_auditor_checks_it(
    gateway: Served,
) -> None:
    nonce = challenge()
    # the SDK client sends the header on every request of the session
    assert asyncio.run(weather_session(gateway.url, nonce)) == "Sunny, 21 C in Paris"
    path, claim = claim_with(gateway, nonce)
    assert claim["gateway"]["attestation"]["binding"] == claim_binding(claim, nonce)
    assert claim["gateway"]["attestation"]["evidence"]["binding"] == claim_binding(claim, nonce)
    assert session_start(gateway, claim["gateway"]["session_id"])["challenge"] == nonce
    record = json.loads(path.with_name(path.name.replace(".claim.", ".record.")).read_text())
    assert record["runtime"]["nonce"] == nonce

    code, report = audited(path, gateway, "--expected-nonce", nonce)
    assert code == 0, report
    checks = statuses(report)
    assert checks["nonce"] == checks["binding"] == checks["audit log"] == "pass"
    code, report = audited(path, gateway, "--expected-nonce", challenge())
    assert code == 1 and statuses(report)["nonce"] == "fail"
    code, report = audited(path, gateway)
    assert code == 0 and statuses(report)["nonce"] == "skip"
    (skipped,) = [check for check in report["checks"] if check["name"] == "nonce"]
    assert nonce in skipped["reason"]


def test_a_challenge_in_meta_on_initialize_is_bound_and_later_requests_may_repeat_it(
    gateway: Served,
) -> None:
    nonce = challenge()
    status, headers, answer = post(gateway, initialize({CHALLENGE_META_KEY: nonce}))
    assert status == 200 and "result" in answer, answer
    session = headers["mcp-session-id"]
    sent = {"mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
    # the same value, by header or in _meta, is taken on any later request
    assert post(gateway, ping(2), {**sent, "cmcp-challenge": nonce})[2]["result"] == {}
    assert post(gateway, ping(3, {CHALLENGE_META_KEY: nonce}), sent)[2]["result"] == {}
    # another one is not: the evidence was collected before it was given
    status, _, refused = post(gateway, ping(4), {**sent, "cmcp-challenge": challenge()})
    assert status == 400 and refused["error"]["code"] == -32602
    assert refused["error"]["message"] == (
        f"a challenge is bound when its session opens: session {session} was opened with "
        "another challenge; open a new session with it (initialize a new session, giving the "
        "challenge with initialize)"
    )
    assert request(gateway.port, "DELETE", "/mcp", None, sent)[0] == 200
    claim = claim_of(gateway, session)
    assert claim["trace"]["runtime"]["nonce"] == nonce
    assert claim["gateway"]["call_summary"]["total"] == 0  # the refused ping went nowhere

    # header and _meta agreeing are one challenge
    status, headers, _ = post(
        gateway, initialize({CHALLENGE_META_KEY: nonce}), {"cmcp-challenge": nonce}
    )
    assert status == 200
    both = headers["mcp-session-id"]
    assert session_start(gateway, both)["challenge"] == nonce
    request(gateway.port, "DELETE", "/mcp", None, {"mcp-session-id": both})


def test_a_stream_or_end_of_a_session_with_another_challenge_is_refused(gateway: Served) -> None:
    """GET (the session's stream) and DELETE carry no message, so they open nothing: a
    challenge on them must be the session's own, or they are refused and change nothing."""
    nonce = challenge()
    status, headers, _ = post(gateway, initialize(), {"cmcp-challenge": nonce})
    assert status == 200
    session = headers["mcp-session-id"]
    sent = {"mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
    for method in ("GET", "DELETE"):
        for given, expected in (
            (challenge(), f"session {session} was opened with another challenge"),
            ("c2hvcnQ", "the Cmcp-Challenge header is refused: a challenge encodes"),
        ):
            status, _, body = request(
                gateway.port, method, "/mcp", None, {**sent, "cmcp-challenge": given}
            )
            refused = json.loads(body)
            assert status == 400 and refused["error"]["code"] == -32602, (method, body)
            assert expected in refused["error"]["message"], refused
    assert post(gateway, ping(2), sent)[2]["result"] == {}  # the session is still open
    status = request(gateway.port, "DELETE", "/mcp", None, {**sent, "cmcp-challenge": nonce})[0]
    assert status == 200
    assert claim_of(gateway, session)["trace"]["runtime"]["nonce"] == nonce


def test_a_session_opened_without_a_challenge_takes_none_later(gateway: Served) -> None:
    status, headers, _ = post(gateway, initialize())
    assert status == 200
    session = headers["mcp-session-id"]
    assert "challenge" not in session_start(gateway, session)
    sent = {"mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
    status, _, refused = post(gateway, ping(2, {CHALLENGE_META_KEY: challenge()}), sent)
    assert status == 400 and refused["error"]["code"] == -32602
    assert f"session {session} was opened without a challenge" in refused["error"]["message"]
    assert post(gateway, ping(3), sent)[2]["result"] == {}  # the session goes on
    request(gateway.port, "DELETE", "/mcp", None, sent)
    claim = claim_of(gateway, session)
    assert "nonce" not in claim["trace"]["runtime"]
    assert claim["gateway"]["attestation"]["binding"] == claim_binding(claim, None)  # version 1


def test_a_2026_07_28_session_binds_the_challenge_of_its_first_request(gateway: Served) -> None:
    nonce = challenge()

    async def opened() -> str:
        async with (
            httpx2.AsyncClient(headers={"Cmcp-Challenge": nonce}) as http,
            Client(streamable_http_client(gateway.url, http_client=http)) as client,
        ):
            weather = await client.call_tool("get_weather", {"city": "Rome"})
            assert weather.content[0].text == "Sunny, 21 C in Rome"  # type: ignore[union-attr]
            return str((weather.meta or {})["_cmcp.session_id"])

    session = asyncio.run(opened())
    assert session_start(gateway, session)["challenge"] == nonce
    # a later request of the agent's default session with another challenge is refused
    body, headers = modern("tools/call", {"name": "get_weather", "arguments": {"city": "Oslo"}})
    status, _, refused = post(gateway, body, {**headers, "cmcp-challenge": challenge()})
    assert status == 400 and refused["error"]["code"] == -32602
    assert f"session {session} was opened with another challenge" in refused["error"]["message"]
    assert "end the open one with DELETE /mcp" in refused["error"]["message"]
    status, _, answer = post(gateway, body, {**headers, "cmcp-challenge": nonce})
    assert status == 200 and answer["result"]["_meta"]["_cmcp.session_id"] == session
    assert request(gateway.port, "DELETE", "/mcp", None, {"mcp-session-id": session})[0] == 200
    claim = claim_of(gateway, session)
    assert claim["trace"]["runtime"]["nonce"] == nonce
    assert claim["gateway"]["attestation"]["binding"] == claim_binding(claim, nonce)
    # two calls answered (one refused before anything), one listing
    assert claim["gateway"]["call_summary"]["by_kind"]["call_tool"]["total"] == 2

    # with the default session ended, the next request opens a new one with its challenge
    fresh = challenge()
    body, headers = modern("tools/call", {"name": "get_weather", "arguments": {"city": "Lima"}})
    status, _, answer = post(gateway, body, {**headers, "cmcp-challenge": fresh})
    assert status == 200, answer
    reopened = answer["result"]["_meta"]["_cmcp.session_id"]
    assert reopened != session and session_start(gateway, reopened)["challenge"] == fresh
    request(gateway.port, "DELETE", "/mcp", None, {"mcp-session-id": reopened})


def test_a_plain_call_opens_its_named_session_with_its_challenge(gateway: Served) -> None:
    nonce, name = challenge(), f"plain-{secrets.token_hex(4)}"
    call: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "get_weather",
            "arguments": {"city": "Kyiv"},
            "_cmcp": {"session_id": name},
            "_meta": {CHALLENGE_META_KEY: nonce},
        },
    }
    status, headers, answer = post(gateway, call)
    assert status == 200 and headers["cmcp-session-id"] == name, answer
    assert session_start(gateway, name)["challenge"] == nonce
    call["params"]["_meta"] = {CHALLENGE_META_KEY: challenge()}
    status, _, refused = post(gateway, call)
    assert status == 400 and refused["error"]["code"] == -32602
    assert "name a new session in params._cmcp.session_id" in refused["error"]["message"]
    assert request(gateway.port, "POST", f"/sessions/{name}/close")[0] == 200
    assert claim_of(gateway, name)["trace"]["runtime"]["nonce"] == nonce


NOT_BASE64URL = "a challenge is base64url without padding (A-Z a-z 0-9 - _)"
REFUSALS: dict[str, tuple[dict[str, str], Any, str]] = {
    "not base64url": ({"cmcp-challenge": "not+base64/url" * 3}, None, NOT_BASE64URL),
    "padded": ({"cmcp-challenge": secrets.token_urlsafe(16) + "=="}, None, NOT_BASE64URL),
    "too short": (
        {"cmcp-challenge": secrets.token_urlsafe(15)},
        None,
        "a challenge encodes 15 bytes; it must encode 16 to 64 random bytes",
    ),
    "too long": (
        {"cmcp-challenge": secrets.token_urlsafe(65)},
        None,
        "a challenge encodes 65 bytes; it must encode 16 to 64 random bytes",
    ),
    "impossible length": (
        {"cmcp-challenge": "A" * 25},
        None,
        "a challenge's length is not that of any base64url encoding",
    ),
    "not a string": ({}, 12345678901234567890, "a challenge is a string, not int"),
    "disagreeing": (
        {"cmcp-challenge": challenge()},
        challenge(),
        "the challenge is given twice, differently (the Cmcp-Challenge header and "
        f"params._meta[{CHALLENGE_META_KEY!r}]): send it once, or the same in each",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
@pytest.mark.parametrize("opening", ["initialize", "2026-07-28", "plain call"])
def test_a_challenge_that_is_not_one_is_refused_and_opens_nothing(
    gateway: Served, case: str, opening: str
) -> None:
    headers, in_meta, expected = REFUSALS[case]
    meta = {} if in_meta is None else {CHALLENGE_META_KEY: in_meta}
    before = open_sessions(gateway)
    if opening == "initialize":
        body, sent = initialize(meta), dict(headers)
    elif opening == "2026-07-28":
        body, sent = modern("tools/list", {}, meta)
        sent.update(headers)
    else:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/list",
            "params": {"_cmcp": {"session_id": f"never-{secrets.token_hex(4)}"}, "_meta": meta},
        }
        sent = dict(headers)
    status, answered, refused = post(gateway, body, sent)
    assert status == 400, refused
    assert refused["error"]["code"] == -32602
    assert expected in refused["error"]["message"]
    assert "mcp-session-id" not in answered and "cmcp-session-id" not in answered
    assert open_sessions(gateway) == before


def test_a_repeated_challenge_header_is_refused(gateway: Served) -> None:
    before = open_sessions(gateway)
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        connection.putrequest("POST", "/mcp")
        data = json.dumps(initialize()).encode()
        for name, value in (
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("content-length", str(len(data))),
            ("cmcp-challenge", challenge()),
            ("cmcp-challenge", challenge()),
        ):
            connection.putheader(name, value)
        connection.endheaders(data)
        response = connection.getresponse()
        refused = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 400 and refused["error"]["code"] == -32600
    assert refused["error"]["message"] == (
        "the cmcp-challenge header appears more than once: send it once"
    )
    assert open_sessions(gateway) == before


def test_a_request_without_a_challenge_is_taken_as_before() -> None:
    """No challenge: `take` hands back the very message and the shared empty parameters,
    as for any request that says nothing to the gateway (one header scan, no copy)."""
    message = parse_message(json.dumps(ping(1, {"progressToken": 3})).encode(), max_depth=64)
    scope = {"headers": [(b"content-type", b"application/json"), (b"mcp-session-id", b"s")]}
    taken, own = gateway_params.take(scope, message)
    assert taken is message and own is gateway_params.NONE
    nonce = challenge()
    scope["headers"].append((b"Cmcp-Challenge", nonce.encode()))
    assert gateway_params.take(scope, message)[1].challenge == nonce


def test_the_challenge_in_meta_is_never_forwarded_upstream() -> None:
    meta = {CHALLENGE_META_KEY: challenge(), "progressToken": 3, "_cmcp.workflow_id": "w"}
    assert forwardable_meta(meta) == {"progressToken": 3}
    assert forwardable_meta({CHALLENGE_META_KEY: challenge()}) is None


def test_a_gateway_killed_with_a_challenged_session_recovers_it_with_the_challenge(
    tmp_path: Path, upstream: Served
) -> None:
    nonce = challenge()
    config = write_config(tmp_path, upstream.url)
    first = start_gateway(config)
    try:
        status, headers, _ = post(first, initialize(), {"cmcp-challenge": nonce})
        assert status == 200
        session = headers["mcp-session-id"]
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "get_weather", "arguments": {"city": "Oslo"}},
        }
        sent = {"mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
        assert "result" in post(first, call, sent)[2]
    finally:
        first.stop(signal.SIGKILL)
    second = start_gateway(config)  # recovers the session before it serves
    try:
        claim = claim_of(second, session)
    finally:
        assert second.stop() == 0, second.output()
    assert (
        claim["gateway"]["recovery"]["interrupted_process"]
        != claim["gateway"]["recovery"]["process"]
    )
    assert claim["trace"]["runtime"]["nonce"] == nonce
    # the recovering process's own key, bound with the session's challenge
    assert claim["gateway"]["attestation"]["binding"] == claim_binding(claim, nonce)
    path = tmp_path / "claims" / f"{session}.claim.json"
    code, report = verify(
        path, "--allow-software", "--audit-log", tmp_path / "audit.db", "--expected-nonce", nonce
    )
    assert code == 0, report
    assert statuses(report)["recovery"] == statuses(report)["nonce"] == "pass"
