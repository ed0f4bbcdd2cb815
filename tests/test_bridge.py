"""`cmcp bridge` as a stdio MCP server in front of the real gateway: the official SDK's stdio
client spawns it, and raw stdin lines probe its framing and its failures. The gateway
(`cmcp start`) and the demo upstream (official SDK) run as real processes on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from cmcp_cli.claim.challenge import CHALLENGE_META_KEY
from tests.gateway_support import Served, free_port, start_gateway, write_config
from tests.support import CMCP

BRIDGE_SECONDS = 30.0
TOKEN = "agent-token-" + "k" * 32


def init(request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def ping(request_id: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "ping"}


def call(request_id: int, tool: str, **arguments: str) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


@dataclass
class Bridged:
    returncode: int
    messages: list[dict[str, Any]]
    stderr: str

    def answer(self, request_id: int) -> dict[str, Any]:
        (found,) = [m for m in self.messages if m.get("id") == request_id]
        return found


def bridge_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMCP_")}
    environment.update(extra or {})
    return environment


def parse_stdout(stdout: bytes) -> list[dict[str, Any]]:
    """Every stdout line, each of which must be one JSON-RPC message."""
    messages = [json.loads(line) for line in stdout.decode().splitlines()]
    assert all(m.get("jsonrpc") == "2.0" for m in messages), messages
    return messages


def run_bridge(
    url: str,
    lines: list[dict[str, Any] | str],
    *args: str,
    env: Mapping[str, str] | None = None,
) -> Bridged:
    """Feed `lines` to `cmcp bridge` on stdin, then end stdin, and collect what comes out."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    completed = subprocess.run(
        [str(CMCP), "bridge", "--url", url, *args],
        input=text.encode(),
        capture_output=True,
        env=bridge_env(env),
        timeout=BRIDGE_SECONDS,
        check=False,
    )
    stderr = completed.stderr.decode(errors="replace")
    return Bridged(completed.returncode, parse_stdout(completed.stdout), stderr)


def claims_in(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((folder / "claims").glob("*.claim.json"))]


def test_an_sdk_stdio_client_works_through_the_bridge(tmp_path: Path, gateway: Served) -> None:
    async def session(errlog: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        server = StdioServerParameters(command=str(CMCP), args=["bridge", "--url", gateway.url])
        async with (
            stdio_client(server, errlog=errlog) as (read, write),
            ClientSession(read, write) as client,
        ):
            seen["protocol"] = (await client.initialize()).protocol_version
            seen["tools"] = {tool.name for tool in (await client.list_tools()).tools}
            weather = await client.call_tool("get_weather", {"city": "Paris"})
            seen["allowed"] = weather.content[0].text  # type: ignore[union-attr]
            with pytest.raises(MCPError) as denied:
                await client.call_tool("delete_records", {"table": "users"})
            seen["denied"] = denied.value.error
            again = await client.call_tool("get_weather", {"city": "Oslo"})
            seen["after_deny"] = again.content[0].text  # type: ignore[union-attr]
            await client.send_ping()
        # An auto-mode client probes server/discover first, and falls back to initialize.
        async with Client(server) as auto:
            rome = await auto.call_tool("get_weather", {"city": "Rome"})
            seen["auto"] = rome.content[0].text  # type: ignore[union-attr]
        return seen

    log = tmp_path / "bridge.log"
    with log.open("w") as errlog:
        seen = asyncio.run(session(errlog))
    assert seen["protocol"] == "2025-11-25"
    assert "get_weather" in seen["tools"]
    assert seen["allowed"] == "Sunny, 21 C in Paris"
    assert seen["denied"].code == -32040
    assert seen["denied"].data["policy_ids"] == ["no-destructive-tools"]
    assert seen["after_deny"] == "Sunny, 21 C in Oslo"  # a deny leaves the session usable
    assert seen["auto"] == "Sunny, 21 C in Rome"
    # Closing a client ends the bridge's stdin: it sends DELETE, so the claim is written.
    summaries = sorted(
        (s["total"], s["allowed"], s["denied"])
        for s in (
            claim["gateway"]["call_summary"]["by_kind"]["call_tool"]
            for claim in claims_in(tmp_path)
        )
    )
    assert summaries == [(1, 1, 0), (3, 2, 1)]
    assert f"relaying stdio to {gateway.url}" in log.read_text()
    assert "not closed" not in log.read_text()


def test_malformed_lines_get_errors_and_the_bridge_keeps_going(
    tmp_path: Path, gateway: Served
) -> None:
    bridged = run_bridge(
        gateway.url,
        [
            "{not json",
            "[1, 2]",
            '{"jsonrpc": "2.0", "id": [1], "method": "ping"}',
            "",
            init(),
            INITIALIZED,
            call(2, "get_weather", city="Paris"),
            call(3, "delete_records", table="users"),
            ping(4),
        ],
    )
    assert bridged.returncode == 0, bridged.stderr
    unparsable, batch, bad_id = bridged.messages[:3]  # answered in order, before any relay
    assert unparsable["id"] is None
    assert unparsable["error"]["code"] == -32700
    assert unparsable["error"]["message"].startswith("a stdin line is not JSON")
    assert (batch["id"], batch["error"]["code"]) == (None, -32600)
    assert "batches" in batch["error"]["message"]
    assert bad_id["error"]["message"] == "id must be a string or an integer"
    assert bridged.answer(1)["result"]["protocolVersion"] == "2025-11-25"
    assert bridged.answer(2)["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
    assert bridged.answer(3)["error"]["code"] == -32040
    assert bridged.answer(4)["result"] == {}
    assert len(bridged.messages) == 7  # the notification and the blank line get no answer
    (claim,) = claims_in(tmp_path)  # stdin ended: DELETE closed the session
    assert claim["gateway"]["call_summary"]["total"] == 2


def test_a_slow_call_does_not_hold_up_a_ping(tmp_path: Path) -> None:
    # An upstream that accepts connections and never answers: the call waits, the ping not.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"
        # its own timeout bounds how long the gateway's shutdown waits for the call
        silent_upstream = {"transport": "streamable-http", "url": silent_url, "timeout_seconds": 3}
        upstreams = {"demo": silent_upstream}
        config = write_config(tmp_path, silent_url, upstreams=upstreams)
        gateway = start_gateway(config)
        try:
            bridged = run_bridge(
                gateway.url,
                [init(), INITIALIZED, call(2, "get_weather", city="Paris"), ping(3)],
                "--timeout",
                "1.5",
            )
        finally:
            gateway.stop()
    assert bridged.returncode == 0, bridged.stderr
    assert [m["id"] for m in bridged.messages] == [1, 3, 2]  # the ping overtook the call
    timed_out = bridged.answer(2)["error"]
    assert timed_out["code"] == -32051
    assert "did not answer within 1.5 s" in timed_out["message"]


def test_an_unreachable_gateway_is_an_error_per_request_and_a_diagnostic_otherwise() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    bridged = run_bridge(url, [init(), INITIALIZED, ping(2)])
    assert bridged.returncode == 0
    for request_id in (1, 2):
        failure = bridged.answer(request_id)["error"]
        assert failure["code"] == -32050
        assert failure["message"].startswith(f"the gateway at {url} is not reachable")
    assert len(bridged.messages) == 2
    assert "notifications/initialized was not delivered" in bridged.stderr


def test_the_bearer_token_comes_from_the_environment_and_is_never_shown(
    tmp_path: Path, upstream: Served
) -> None:
    gateway = start_gateway(write_config(tmp_path, upstream.url), {"CMCP_BEARER_TOKEN": TOKEN})
    try:
        missing = run_bridge(gateway.url, [init()])
        wrong_token = "wrong-" + "w" * 34
        wrong = run_bridge(gateway.url, [init()], env={"CMCP_BEARER_TOKEN": wrong_token})
        right = run_bridge(
            gateway.url,
            [init(), INITIALIZED, call(2, "get_weather", city="Paris")],
            "--token-env",
            "AGENT_TOKEN",
            env={"AGENT_TOKEN": TOKEN},
        )
        unset = run_bridge(gateway.url, [init()], "--token-env", "AGENT_TOKEN")
    finally:
        gateway.stop()
    failure = missing.answer(1)["error"]
    assert failure["data"] == {"http_status": 401}
    assert "requires a bearer token" in failure["message"]
    assert "CMCP_BEARER_TOKEN" in failure["message"]
    failure = wrong.answer(1)["error"]
    assert "rejected the bearer token in CMCP_BEARER_TOKEN" in failure["message"]
    assert right.returncode == 0, right.stderr
    assert right.answer(2)["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
    assert "from AGENT_TOKEN" in right.stderr
    for bridged, token in ((wrong, wrong_token), (right, TOKEN)):
        assert token not in json.dumps(bridged.messages) + bridged.stderr
    assert (unset.returncode, unset.messages) == (2, [])
    assert "--token-env names AGENT_TOKEN, which is not set" in " ".join(unset.stderr.split())
    (claim,) = claims_in(tmp_path)  # only the authenticated bridge opened a session
    assert claim["gateway"]["call_summary"]["allowed"] == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--url", "ftp://127.0.0.1/mcp"], "is not an http:// or https:// URL"),
        (["--url", "http://gateway.example/mcp"], "clear text"),
        (["--url", "http://agent:s3cret@127.0.0.1:1/mcp"], "carries credentials"),
        (["--url", "http://127.0.0.1:1/mcp", "--timeout", "0"], "--timeout must be"),
        (
            ["--url", "http://127.0.0.1:1/mcp", "--challenge", "abcdefgh"],
            "--challenge 'abcdefgh' is refused: a challenge encodes 6 bytes",
        ),
    ],
)
def test_unusable_arguments_are_refused_before_anything_is_sent(
    args: list[str], expected: str
) -> None:
    completed = subprocess.run(
        [str(CMCP), "bridge", *args],
        input=json.dumps(init()).encode() + b"\n",
        capture_output=True,
        env=bridge_env(),
        timeout=BRIDGE_SECONDS,
        check=False,
    )
    stderr = completed.stderr.decode()
    assert completed.returncode == 2
    assert completed.stdout == b""
    assert expected in " ".join(stderr.split())
    assert "s3cret" not in stderr


def test_a_restarted_gateway_is_reported_and_a_new_session_works(
    tmp_path: Path, upstream: Served
) -> None:
    config = write_config(tmp_path, upstream.url)
    gateways = [start_gateway(config)]

    async def drive() -> tuple[list[dict[str, Any]], int]:
        bridge = await asyncio.create_subprocess_exec(
            str(CMCP), "bridge", "--url", gateways[0].url,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=bridge_env(),
        )  # fmt: skip
        stdin, stdout = bridge.stdin, bridge.stdout
        assert stdin is not None
        assert stdout is not None
        answers = []

        async def exchange(message: dict[str, Any]) -> None:
            stdin.write(json.dumps(message).encode() + b"\n")
            answers.append(json.loads(await asyncio.wait_for(stdout.readline(), BRIDGE_SECONDS)))

        try:
            await exchange(init())
            gateways[0].stop()  # its shutdown closes the session and writes its claim
            gateways.append(await asyncio.to_thread(start_gateway, config))  # same port
            await exchange(ping(2))
            await exchange(init(3))
            await exchange(call(4, "get_weather", city="Paris"))
            bridge.send_signal(signal.SIGTERM)  # stops as an ended stdin does: DELETE, exit 0
            code = await asyncio.wait_for(bridge.wait(), BRIDGE_SECONDS)
        finally:
            if bridge.returncode is None:
                bridge.kill()
                await bridge.wait()
        return answers, code

    try:
        answers, code = asyncio.run(drive())
        wrong_path = run_bridge(gateways[-1].url.removesuffix("/mcp") + "/nowhere", [init()])
    finally:
        for gateway in gateways:
            gateway.stop()
    assert code == 0
    first, unknown, again, weather = answers
    assert "result" in first
    assert unknown["error"]["code"] == -32043
    assert "no longer knows session" in unknown["error"]["message"]
    assert "result" in again
    assert weather["result"]["content"][0]["text"] == "Sunny, 21 C in Paris"
    totals = sorted(claim["gateway"]["call_summary"]["total"] for claim in claims_in(tmp_path))
    assert totals == [0, 1]  # one claim per session: the first at restart, the second at SIGTERM
    assert "nothing serves MCP at" in wrong_path.answer(1)["error"]["message"]


def test_a_stdio_client_opens_its_session_with_the_bridges_challenge(
    tmp_path: Path, gateway: Served
) -> None:
    """`--challenge` is how a stdio client that cannot set `_meta` gives one: every message
    carries it, so initialize binds it and later messages repeat it; a client's own `_meta`
    that disagrees is refused by the gateway."""
    nonce = secrets.token_urlsafe(32)
    lines: list[dict[str, Any] | str] = [init(), INITIALIZED, call(2, "get_weather", city="Oslo")]
    bridged = run_bridge(gateway.url, lines, "--challenge", nonce)
    assert bridged.returncode == 0, bridged.stderr
    assert bridged.answer(2)["result"]["content"][0]["text"] == "Sunny, 21 C in Oslo"
    other = init(3)
    other["params"]["_meta"] = {CHALLENGE_META_KEY: secrets.token_urlsafe(32)}
    refused = run_bridge(gateway.url, [other], "--challenge", nonce)
    assert refused.answer(3)["error"]["code"] == -32602
    assert "the challenge is given twice, differently" in refused.answer(3)["error"]["message"]
    (claim,) = claims_in(tmp_path)  # the refused initialize opened nothing
    assert claim["trace"]["runtime"]["nonce"] == nonce
    assert claim["gateway"]["call_summary"]["allowed"] == 1
