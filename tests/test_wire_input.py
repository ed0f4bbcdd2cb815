"""The input rules one by one: JSON-RPC values the gateway could not write back, the HTTP
rules of every route, the answer that cannot be encoded, and the upstream pool after a
timeout."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest

from cmcp_cli.catalog.model import advertised_hash, definition_hash
from cmcp_cli.config import CmcpConfig
from cmcp_cli.gateway.downstream.http_rules import (
    HostRule,
    TransportRules,
    accepts,
    is_json,
    repeated_header,
)
from cmcp_cli.wire import asgi
from cmcp_cli.wire.http1 import ConnectionPool, Endpoint, HttpTimeoutError
from cmcp_cli.wire.jsonrpc import (
    MAX_INTEGER,
    MIN_INTEGER,
    Code,
    ProtocolError,
    encoding_problem,
    parse_message,
)


def refused(body: bytes, max_depth: int = 64) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_message(body, max_depth=max_depth)
    return caught.value


# ------------------------------------------------------------------ JSON-RPC values


@pytest.mark.parametrize("value", [MAX_INTEGER + 1, MIN_INTEGER - 1, 10**40])
def test_an_id_no_answer_could_carry_is_invalid_request_with_a_null_id(value: int) -> None:
    error = refused(b'{"jsonrpc":"2.0","method":"ping","id":%d}' % value)
    assert (error.code, error.request_id, error.http_status) == (Code.INVALID_REQUEST, None, 400)
    assert error.to_json()["id"] is None


@pytest.mark.parametrize("value", [MAX_INTEGER, MIN_INTEGER, 0])
def test_ids_at_the_encoder_bounds_are_taken(value: int) -> None:
    message = parse_message(b'{"jsonrpc":"2.0","method":"ping","id":%d}' % value, max_depth=64)
    assert message.id == value
    assert orjson.loads(orjson.dumps({"id": message.id}))["id"] == value


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ('{"arguments":{"n":18446744073709551616}}', "params.arguments.n"),
        ('{"_meta":{"progressToken":-9223372036854775809}}', "params._meta.progressToken"),
        ('{"a":[0,[1,{"b":[2,3,99999999999999999999999]}]]}', "params.a[1][1].b[2]"),
    ],
)
def test_a_huge_integer_elsewhere_is_invalid_params_naming_its_path(params: str, path: str) -> None:
    body = b'{"jsonrpc":"2.0","id":"x","method":"tools/call","params":%s}' % params.encode()
    error = refused(body)
    assert (error.code, error.request_id) == (Code.INVALID_PARAMS, "x")
    assert error.message.startswith(f"{path} is an integer outside")


def test_depth_is_checked_before_integers_in_the_same_walk() -> None:
    nested = b'{"a":' * 70 + b"99999999999999999999999" + b"}" * 70
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":%s}' % nested
    error = refused(body)
    assert error.code == Code.INVALID_REQUEST
    assert "nested deeper than 64" in error.message


@pytest.mark.parametrize(
    "literal",
    [b"1e400", b"-1e400", b"NaN", b"Infinity", b'"\\ud800"', b'"\\udc00"', b'"\xed\xa0\x80"'],
)
def test_values_outside_json_as_mcp_carries_it_are_parse_errors(literal: bytes) -> None:
    error = refused(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":%s}}' % literal)
    assert (error.code, error.request_id) == (Code.PARSE_ERROR, None)


def test_a_repeated_member_keeps_its_last_value() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}'
    assert parse_message(body, max_depth=64).params == {"name": "b"}


def test_encoding_problem_names_what_orjson_refuses() -> None:
    assert encoding_problem({"result": {"n": MAX_INTEGER, "f": 1.5}}) is None
    assert encoding_problem({"result": {"rows": [{"n": 2**70}]}}) == (
        f"result.rows[0].n is an integer outside [{MIN_INTEGER}, {MAX_INTEGER}]"
    )
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    assert encoding_problem({"result": deep}) == "it is nested deeper than 254 levels"
    assert encoding_problem(2**64) is not None


def test_an_answer_that_cannot_be_encoded_is_an_internal_error_not_an_exception() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    document = {"jsonrpc": "2.0", "id": 7, "result": {"n": 2**70}}
    asyncio.run(asgi.send_json(send, 200, document))
    assert sent[0]["status"] == 500
    answer = json.loads(sent[1]["body"])
    assert (answer["id"], answer["error"]["code"]) == (7, -32603)
    assert "cannot be written as JSON" in answer["error"]["message"]


def test_definitions_without_a_canonical_form_hash_without_raising() -> None:
    fine = {"name": "t", "inputSchema": {"type": "object", "maximum": 5}}
    assert advertised_hash(fine) == definition_hash(fine)
    odd = {"name": "t", "inputSchema": {"type": "object", "maximum": 2**60}}
    assert advertised_hash(odd).startswith("sha256:")
    assert advertised_hash(odd) != advertised_hash({**odd, "name": "u"})


# ------------------------------------------------------------------ HTTP rules


def config(tmp_path: Path, **fields: Any) -> CmcpConfig:
    return CmcpConfig.model_validate(
        {"policy_bundle_path": str(tmp_path), "catalog_path": str(tmp_path / "c.json"), **fields}
    )


def scope(*headers: tuple[str, str]) -> dict[str, Any]:
    return {"headers": [(k.encode(), v.encode()) for k, v in headers]}


def test_repeated_singletons_are_found_whatever_their_case() -> None:
    assert repeated_header([(b"Accept", b"a"), (b"accept", b"b")]) is None  # a list header
    assert repeated_header([(b"Mcp-Name", b"a"), (b"mcp-name", b"b")]) == b"mcp-name"
    assert repeated_header([(b"mcp-param-x", b"1"), (b"MCP-PARAM-X", b"2")]) == b"mcp-param-x"
    assert repeated_header([(b"host", b"a"), (b"origin", b"b")]) is None


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/json, text/event-stream", (True, True)),
        ("application/json;q=0.9,text/event-stream;q=0.8", (True, True)),
        ("*/*", (True, True)),
        ("application/*, text/*", (True, True)),
        ("application/json", (True, False)),
        ("application/json;q=0, text/event-stream", (False, True)),
        ("*/*, text/event-stream; Q=0.000", (True, False)),
        ("text/*;q=0, text/event-stream, application/json", (True, True)),
        ("application/json;q=0.001, text/event-stream;q=0.5", (True, True)),
        ("text/event-stream", (False, True)),
        ("", (False, False)),
        (None, (False, False)),
    ],
)
def test_accept_counts_wildcards_as_the_sdk_does(
    accept: str | None, expected: tuple[bool, bool]
) -> None:
    assert accepts(accept) == expected


def test_content_type_is_application_json_with_parameters_or_none() -> None:
    assert is_json("application/json")
    assert is_json("Application/JSON; charset=utf-8")
    assert not is_json("application/json-seq")
    assert not is_json("text/json")
    assert not is_json(None)


def test_a_loopback_bind_answers_to_the_loopback_names_at_its_port(tmp_path: Path) -> None:
    rule = HostRule.of(config(tmp_path, listen_addr="127.0.0.1:8443").listen_addr, ())
    for host in ("127.0.0.1:8443", "localhost:8443", "[::1]:8443", "LocalHost:8443"):
        assert rule.allows(host, default_port=80), host
    for host in ("127.0.0.1:8444", "localhost", "evil.example.com:8443", "127.0.0.2:8443", ""):
        assert not rule.allows(host, default_port=80), host


def test_a_wildcard_bind_needs_allowed_hosts_for_remote_names(tmp_path: Path) -> None:
    settings = config(
        tmp_path, listen_addr="0.0.0.0:8443", allowed_hosts=["GW.example.com", "10.0.0.5:8443"]
    )
    rule = HostRule.of(settings.listen_addr, settings.allowed_hosts)
    assert rule.allows("gw.example.com", default_port=443)  # any port: behind a proxy
    assert rule.allows("gw.example.com:9000", default_port=443)
    assert rule.allows("10.0.0.5:8443", default_port=443)
    assert rule.allows("localhost:8443", default_port=443)
    assert not rule.allows("10.0.0.5:9000", default_port=443)
    assert not rule.allows("0.0.0.0:8443", default_port=443)
    assert not rule.allows("evil.example.com", default_port=443)


def test_a_specific_bind_answers_to_its_own_address(tmp_path: Path) -> None:
    rule = HostRule.of(config(tmp_path, listen_addr="[fd00::5]:8443").listen_addr, ())
    assert rule.allows("[fd00::5]:8443", default_port=80)
    assert not rule.allows("localhost:8443", default_port=80)


@pytest.mark.parametrize("entry", ["https://gw.example.com", "*.example.com", "gw/x", "a b"])
def test_allowed_hosts_entries_are_validated(tmp_path: Path, entry: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="allowed_hosts"):
        config(tmp_path, allowed_hosts=[entry])


def test_transport_rules_name_what_they_refuse(tmp_path: Path) -> None:
    rules = TransportRules(config(tmp_path, listen_addr="127.0.0.1:8443"))
    assert rules.check(scope(("host", "127.0.0.1:8443"))) is None
    assert rules.check(scope(("host", "127.0.0.1:8443"), ("origin", "http://localhost:3000"))) is None  # fmt: skip
    missing = rules.check(scope())
    assert missing is not None and missing.status == 421
    foreign = rules.check(scope(("host", "127.0.0.1:8443"), ("origin", "http://evil.example")))
    assert foreign is not None and foreign.status == 403
    null = rules.check(scope(("host", "127.0.0.1:8443"), ("origin", "null")))
    assert null is not None and null.status == 403
    twice = rules.check(scope(("host", "127.0.0.1:8443"), ("Host", "evil.example")))
    assert twice is not None and twice.status == 400
    assert twice.body["error"]["message"] == "the host header appears more than once: send it once"
    post = scope(("content-type", "application/json"), ("accept", "application/json"))
    refusal = rules.check_mcp(post, "POST")
    assert refusal is not None and refusal.status == 406
    post = scope(("content-type", "text/plain"), ("accept", "*/*"))
    refusal = rules.check_mcp(post, "POST")
    assert refusal is not None and refusal.status == 415
    refusal = rules.check_mcp(scope(("accept", "application/json")), "GET")
    assert refusal is not None and refusal.status == 406
    assert rules.check_mcp(scope(), "DELETE") is None


# ------------------------------------------------------------------ upstream pool


def test_a_timed_out_upstream_connection_is_never_reused() -> None:
    """The first answer comes after the client gave up; the next request must get its own
    answer on a new connection, never the late one left on the old connection."""

    async def scenario() -> tuple[int, bytes, int]:
        connections = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            number = connections
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    if number == 1:
                        await asyncio.sleep(0.5)  # past the client's timeout
                    body = b"answer on connection %d" % number
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool(Endpoint.parse(f"http://127.0.0.1:{port}/mcp"))
        try:
            with pytest.raises(HttpTimeoutError):
                await pool.request("POST", [], b"{}", timeout=0.1, max_body=1000)
            await asyncio.sleep(0.6)  # the late answer has arrived on the first connection
            response = await pool.request("POST", [], b"{}", timeout=5, max_body=1000)
            return response.status, response.body, connections
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    status, body, connections = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert (status, body, connections) == (200, b"answer on connection 2", 2)


def test_json_depth_is_capped_below_what_the_encoder_writes(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="max_json_depth"):
        config(tmp_path, limits={"max_json_depth": 300})
    assert config(tmp_path, limits={"max_json_depth": 200}).limits.max_json_depth == 200
