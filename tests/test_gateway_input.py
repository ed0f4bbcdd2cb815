"""Input handling at the gateway's door, against a real `cmcp start` spoken to in raw HTTP:
values the gateway could not write back, repeated headers, media types, the Host and
Origin of every route, and a connection that outlives a request timeout."""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gateway_support import (
    Served,
    free_port,
    request,
    start_gateway,
    start_process,
    write_config,
)
from tests.support import QUICKSTART, run_cmcp
from tests.test_gateway_stdio import SERVER, stdio_upstream

REQUEST_TIMEOUT_SECONDS = 3
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}
ROUTES = [
    ("POST", "/mcp"),
    ("GET", "/mcp"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/trace/latest"),
    ("POST", "/sessions/abc/close"),
    ("GET", "/approvals"),
    ("GET", "/audit/export"),
    ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("input")
    pids = folder / "pids"
    pids.mkdir()
    config = write_config(
        folder,
        "unused",
        upstreams={"demo": stdio_upstream(pids)},
        limits={"request_timeout_seconds": REQUEST_TIMEOUT_SECONDS},
    )
    served = start_gateway(config)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def http_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The same test server as an upstream over streamable HTTP (the h11 pool's path)."""
    folder = tmp_path_factory.mktemp("input-http")
    port = free_port()
    command = [sys.executable, str(SERVER), "--http", str(port)]
    upstream = start_process(command, port, folder / "upstream.log")
    config = write_config(
        folder,
        f"http://127.0.0.1:{port}/mcp",
        limits={"request_timeout_seconds": REQUEST_TIMEOUT_SECONDS},
    )
    served = start_gateway(config)
    yield served
    served.stop()
    upstream.stop()


BOTH = pytest.mark.parametrize("which", ["gateway", "http_gateway"], ids=["stdio", "http"])


def open_session(port: int) -> str:
    status, headers, body = request(port, "POST", "/mcp", INIT)
    assert status == 200, body
    session = headers["mcp-session-id"]
    status, _, _ = request(
        port,
        "POST",
        "/mcp",
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"mcp-session-id": session},
    )
    assert status == 202
    return session


def warm(port: int, session: str) -> None:
    """List the tools: the session's upstream child is started outside any call's timeout."""
    status, answer = post(port, session, {"jsonrpc": "2.0", "id": 0, "method": "tools/list"})
    assert status == 200 and answer["result"]["tools"], answer


def post(
    port: int, session: str, body: bytes | dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any]]:
    sent = {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25", **headers}
    status, _, answer = request(port, "POST", "/mcp", body, sent)
    return status, json.loads(answer)


def weather(call_id: int, city: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": call_id,
        "method": "tools/call",
        "params": {"name": "get_weather", "arguments": {"city": city}},
    }


def close_and_check_claim(gateway: Served, port: int, session: str) -> dict[str, Any]:
    """End the session; its claim verifies against its audit log, and every forwarded
    call in the chain has its outcome or fault (replay-audit checks the pairing)."""
    status, _, _ = request(port, "DELETE", "/mcp", None, {"mcp-session-id": session})
    assert status == 200
    claim = gateway.log.parent / "claims" / f"{session}.claim.json"
    audit = gateway.log.parent / "audit.db"
    verified = run_cmcp("verify", claim, "--allow-software", "--audit-log", audit, "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    replayed = run_cmcp(
        "replay-audit", "--db", audit, "--session", session, "--claim", claim,
        "--bundle", QUICKSTART / "policies", "--json",
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    summary: dict[str, Any] = json.loads(claim.read_text())["gateway"]["call_summary"]
    # tool calls only: the listings a client makes are decisions of their own kind
    calls: dict[str, Any] = summary["by_kind"].get("call_tool", {})
    return calls or {"total": 0, "allowed": 0, "faulted": 0}


def test_an_integer_id_past_64_bits_is_invalid_and_the_session_goes_on(gateway: Served) -> None:
    port = gateway.port
    session = open_session(port)
    raw = b'{"jsonrpc":"2.0","id":18446744073709551616,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris"}}}'  # fmt: skip
    status, answer = post(port, session, raw)
    assert status == 400
    assert answer["id"] is None and answer["error"]["code"] == -32600
    assert "id is an integer outside" in answer["error"]["message"]
    # the largest id orjson writes is fine, and answered with that id
    status, answer = post(port, session, weather(2**64 - 1, "Paris"))
    assert (status, answer["id"]) == (200, 2**64 - 1)
    assert answer["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
    summary = close_and_check_claim(gateway, port, session)
    assert (summary["total"], summary["allowed"], summary["faulted"]) == (1, 1, 0)


def test_a_huge_integer_in_arguments_or_meta_is_invalid_params_naming_its_path(
    gateway: Served,
) -> None:
    port = gateway.port
    session = open_session(port)
    raw = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris","n":[1,-9223372036854775809]}}}'  # fmt: skip
    status, answer = post(port, session, raw)
    assert status == 400
    assert (answer["id"], answer["error"]["code"]) == (3, -32602)
    assert answer["error"]["message"].startswith("params.arguments.n[1] is an integer outside")
    raw = b'{"jsonrpc":"2.0","id":4,"method":"ping","params":{"_meta":{"progressToken":99999999999999999999999}}}'  # fmt: skip
    status, answer = post(port, session, raw)
    assert (status, answer["id"], answer["error"]["code"]) == (400, 4, -32602)
    assert answer["error"]["message"].startswith("params._meta.progressToken is an integer")
    summary = close_and_check_claim(gateway, port, session)
    assert summary["total"] == 0  # nothing was decided, nothing forwarded


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":1e400}}',
        b'{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":NaN}}',
        b'{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":-Infinity}}',
        b'{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":"\\ud800"}}',
        b'{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":"\\udc00 alone"}}',
        b'{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":"\xed\xa0\x80"}}',
    ],
    ids=["1e400", "NaN", "Infinity", "high-surrogate", "low-surrogate", "utf8-surrogate"],
)
def test_json_outside_what_mcp_carries_is_a_parse_error(gateway: Served, body: bytes) -> None:
    port = gateway.port
    session = open_session(port)
    status, answer = post(port, session, body)
    assert (status, answer["id"], answer["error"]["code"]) == (400, None, -32700)
    assert "not JSON as MCP carries it" in answer["error"]["message"]


def test_a_repeated_member_name_is_decided_and_forwarded_as_its_last_value(
    gateway: Served,
) -> None:
    port = gateway.port
    session = open_session(port)
    raw = b'{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Oslo","city":"Paris"}}}'  # fmt: skip
    status, answer = post(port, session, raw)
    assert status == 200
    assert answer["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
    raw = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_weather","name":"delete_records","arguments":{"table":"t"}}}'  # fmt: skip
    status, answer = post(port, session, raw)
    assert (status, answer["error"]["code"]) == (200, -32040)  # the policy saw delete_records


@BOTH
def test_an_upstream_answer_with_a_huge_integer_is_a_recorded_fault(
    which: str, request: pytest.FixtureRequest
) -> None:
    gateway: Served = request.getfixturevalue(which)
    port = gateway.port
    session = open_session(port)
    warm(port, session)
    status, answer = post(port, session, weather(8, "huge"))
    assert (status, answer["id"], answer["error"]["code"]) == (200, 8, -32050)
    assert "structuredContent.n is an integer outside" in answer["error"]["message"]
    status, answer = post(port, session, weather(9, "Paris"))
    assert answer["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
    summary = close_and_check_claim(gateway, port, session)
    assert (summary["total"], summary["allowed"], summary["faulted"]) == (2, 2, 1)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("Mcp-Session-Id", -32600),
        ("MCP-Protocol-Version", -32020),
        ("Mcp-Method", -32020),
        ("Mcp-Name", -32020),
        ("Last-Event-ID", -32600),
        ("Origin", -32600),
    ],
)
def test_a_repeated_header_is_refused_naming_it(gateway: Served, name: str, code: int) -> None:
    port = gateway.port
    session = open_session(port)
    first = session if name == "Mcp-Session-Id" else "http://127.0.0.1"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("POST", "/mcp")
        for key, value in {**JSON_HEADERS, "mcp-session-id": session}.items():
            if key.lower() != name.lower():
                connection.putheader(key, value)
        connection.putheader(name, first)
        connection.putheader(name, "other")
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
        connection.putheader("content-length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 400
    assert answer["error"]["code"] == code
    assert answer["error"]["message"] == (
        f"the {name.lower()} header appears more than once: send it once"
    )


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("POST", {"content-type": "text/plain"}, 415),
        ("POST", {"content-type": "application/jsonx"}, 415),
        ("POST", {"accept": "application/json"}, 406),
        ("POST", {"accept": "text/event-stream"}, 406),
        ("GET", {"accept": "application/json"}, 406),
    ],
)
def test_media_types_are_those_of_the_transport(
    gateway: Served, method: str, headers: dict[str, str], status: int
) -> None:
    port = gateway.port
    session = open_session(port)
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"} if method == "POST" else None
    got, _, answer = request(port, method, "/mcp", body, {"mcp-session-id": session, **headers})
    assert got == status
    assert json.loads(answer)["error"]["code"] == -32600


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/json; charset=utf-8"},
        {"accept": "*/*"},
        {"accept": "application/*, text/*;q=0.5"},
    ],
)
def test_charset_and_wildcards_are_accepted(gateway: Served, headers: dict[str, str]) -> None:
    port = gateway.port
    session = open_session(port)
    status, answer = post(port, session, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, **headers)
    assert (status, answer["result"]) == (200, {})


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_foreign_host_or_origin_is_refused_on_every_route(
    gateway: Served, method: str, path: str
) -> None:
    port = gateway.port
    body = INIT if method == "POST" else None
    status, _, answer = request(port, method, path, body, {"host": "evil.example.com"})
    assert status == 421
    assert "does not name this gateway" in json.loads(answer)["error"]["message"]
    status, _, answer = request(port, method, path, body, {"host": f"localhost:{port + 1}"})
    assert status == 421
    status, _, answer = request(port, method, path, body, {"origin": "http://evil.example.com"})
    assert status == 403
    assert "is not allowed" in json.loads(answer)["error"]["message"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]"])
def test_the_loopback_names_at_the_listen_port_are_served(gateway: Served, host: str) -> None:
    port = gateway.port
    status, _, _ = request(port, "GET", "/healthz", None, {"host": f"{host}:{port}"})
    assert status == 200


@BOTH
def test_a_connection_stays_usable_after_a_request_timeout(
    which: str, request: pytest.FixtureRequest
) -> None:
    """Downstream, the client's connection carries the next request; upstream, the
    connection of the abandoned exchange is not reused half-read (the next call on the
    same session gets its own answer)."""
    gateway: Served = request.getfixturevalue(which)
    port = gateway.port
    session = open_session(port)
    warm(port, session)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS * 5)
    headers = {**JSON_HEADERS, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    try:
        started = time.monotonic()
        connection.request("POST", "/mcp", json.dumps(weather(10, "slow")), headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert time.monotonic() - started < REQUEST_TIMEOUT_SECONDS * 3
        assert (response.status, answer["error"]["code"]) == (200, -32052)
        closing = (response.getheader("connection") or "").lower() == "close"
        if not closing:  # kept alive: the same connection must serve the next request
            connection.request("POST", "/mcp", json.dumps(weather(11, "Paris")), headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert answer["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
    finally:
        connection.close()
    assert not closing, "the gateway closed a connection it could have kept"
    summary = close_and_check_claim(gateway, port, session)
    assert (summary["total"], summary["allowed"], summary["faulted"]) == (2, 2, 1)


def test_a_slowly_sent_body_is_answered_408_and_the_connection_closed(gateway: Served) -> None:
    port = gateway.port
    session = open_session(port)
    body = json.dumps(weather(12, "Paris")).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS * 5)
    try:
        connection.putrequest("POST", "/mcp")
        for key, value in {**JSON_HEADERS, "mcp-session-id": session}.items():
            connection.putheader(key, value)
        connection.putheader("content-length", str(len(body)))
        connection.endheaders(body[:10])  # the rest never comes
        started = time.monotonic()
        response = connection.getresponse()
        answer = json.loads(response.read())
        waited = time.monotonic() - started
    finally:
        connection.close()
    assert response.status == 408
    assert (response.getheader("connection") or "").lower() == "close"
    assert answer["error"]["code"] == -32600
    assert waited < REQUEST_TIMEOUT_SECONDS * 3


def test_the_config_allows_more_host_names(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/mcp", allowed_hosts=["gw.internal"])
    port = int(yaml.safe_load(config.read_text())["listen_addr"].rsplit(":", 1)[1])
    served = start_gateway(config)
    try:
        status, _, _ = request(port, "GET", "/healthz", None, {"host": "gw.internal:443"})
        assert status == 200
        status, _, _ = request(port, "GET", "/healthz", None, {"origin": "https://gw.internal"})
        assert status == 200
        status, _, _ = request(port, "GET", "/healthz", None, {"host": "gw.internal.evil"})
        assert status == 421
    finally:
        served.stop()
