"""Stdio upstreams: the real gateway (`cmcp start`) in front of an official-SDK MCP server
run as a child process over stdio, one child per client session; and the library under it
(`StdioUpstream`) against the same server."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_cli.config import CmcpConfig
from cmcp_cli.gateway.upstream.api import CLOSE_TIMEOUT_SECONDS, UpstreamError
from cmcp_cli.gateway.upstream.stdio import StdioUpstream, stdio_upstreams
from tests.gateway_support import Served, request, start_gateway, write_config
from tests.stdio_upstream_server import HELPER_CODE, STARTED_LINE
from tests.support import QUICKSTART, run_cmcp

SERVER = Path(__file__).resolve().parent / "stdio_upstream_server.py"
# Not resolved: a virtualenv's python finds its environment by the path it is run as.
PYTHON = Path(sys.executable)
PYTHON_SHA256 = "sha256:" + hashlib.sha256(PYTHON.resolve().read_bytes()).hexdigest()
WRONG_SHA256 = "sha256:" + "0" * 64
CATALOG_TOOLS = sorted(t["name"] for t in json.loads((QUICKSTART / "catalog.json").read_text())["tools"])  # fmt: skip
ALLOWED_ENV = {"PATH", "HOME", "LANG", "LC_CTYPE", "STDIO_SERVER_PID_DIR"}
GONE_WITHIN_SECONDS = 5.0

_T = TypeVar("_T")


def run(work: Coroutine[Any, Any, _T], seconds: float = 60.0) -> _T:
    """Run `work` on a fresh event loop; a hang fails the test instead of blocking it."""

    async def bounded() -> _T:
        async with asyncio.timeout(seconds):
            return await work

    return asyncio.run(bounded())


def stdio_upstream(pid_dir: Path, pin: str | None = PYTHON_SHA256) -> dict[str, Any]:
    return {
        "transport": "stdio",
        "command": [str(PYTHON), str(SERVER)],
        "executable_sha256": pin,
        "env": {"STDIO_SERVER_PID_DIR": str(pid_dir)},
    }


def children(pid_dir: Path) -> dict[int, list[str]]:
    """The children started so far: pid -> the names of their environment variables."""
    return {
        int(path.name): json.loads(path.read_text())
        for path in pid_dir.iterdir()
        if path.name.isdigit()
    }


def lingers(pid: int, marker: str = SERVER.name, *, zombie: bool = True) -> bool:
    """Whether the process is still there: running, or (if `zombie`) dead but unreaped."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if state == "Z":
        return zombie
    return marker.encode() in command  # else the pid was reused: ours is gone


def gone(pid: int, marker: str = SERVER.name, *, zombie: bool = True) -> bool:
    deadline = time.monotonic() + GONE_WITHIN_SECONDS
    while lingers(pid, marker, zombie=zombie):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def claims_of(served: Served) -> list[dict[str, Any]]:
    paths = sorted((served.log.parent / "claims").glob("*.claim.json"))
    return [json.loads(path.read_text()) for path in paths]


@pytest.fixture
def pid_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "pids"
    folder.mkdir()
    return folder


def stdio_gateway(tmp_path: Path, pid_dir: Path) -> Served:
    config = write_config(tmp_path, "unused", upstreams={"demo": stdio_upstream(pid_dir)})
    return start_gateway(config, {"GATEWAY_ONLY_SECRET": "must not reach a child"})


# ---------------------------------------------------------------- through `cmcp start`


def test_agents_get_a_child_each_and_each_session_is_decided_and_claimed(
    tmp_path: Path, pid_dir: Path
) -> None:
    gateway = stdio_gateway(tmp_path, pid_dir)
    both_open = asyncio.Barrier(2)

    async def agent(city: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with (
            streamable_http_client(gateway.url) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
            weather = await session.call_tool("get_weather", {"city": city})
            seen["allowed"] = weather.content[0].text  # type: ignore[union-attr]
            customer = await session.call_tool("lookup_customer", {"customer_id": "c-1"})
            seen["redacted"] = customer.structured_content
            with pytest.raises(MCPError) as denied:
                await session.call_tool("delete_records", {"table": "users"})
            seen["denied"] = denied.value.error
            await both_open.wait()
            seen["children"] = children(pid_dir)
        return seen

    async def agents() -> list[dict[str, Any]]:
        return list(await asyncio.gather(agent("Paris"), agent("Oslo")))

    try:
        paris, oslo = run(agents())
    finally:
        assert gateway.stop() == 0
    # listed from what the child advertises (which tools the policy lets an agent see is
    # the dispatcher's business, tested with the HTTP upstream)
    assert {"get_weather", "lookup_customer"} <= set(paris["tools"])
    assert paris["tools"] == oslo["tools"]
    assert (paris["allowed"], oslo["allowed"]) == ("Sunny, 21 C in Paris", "Sunny, 21 C in Oslo")
    assert paris["redacted"]["customer"]["email"] == "[REDACTED:email]"
    assert paris["denied"].code == -32040
    assert paris["denied"].data["policy_ids"] == ["no-destructive-tools"]

    started = paris["children"]
    assert len(started) == 2  # one child per client session, never shared
    for pid, variables in started.items():
        assert set(variables) <= ALLOWED_ENV, variables  # no CMCP_* token, no gateway secret
        assert gone(pid), f"child {pid} outlived its session"
    claims = claims_of(gateway)
    assert len(claims) == 2
    for claim in claims:
        assert claim["gateway"]["call_summary"] == {
            "total": 3,
            "allowed": 1,
            "denied": 1,
            "redacted": 1,
            "escalated": 0,
            "faulted": 0,
            "tools_invoked": ["get_weather", "lookup_customer"],
        }


def test_a_child_that_crashes_mid_call_is_a_fault_not_a_hang(tmp_path: Path, pid_dir: Path) -> None:
    gateway = stdio_gateway(tmp_path, pid_dir)

    async def agent() -> Any:
        async with (
            streamable_http_client(gateway.url) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await session.call_tool("get_weather", {"city": "Paris"})
            with pytest.raises(MCPError) as failed:
                await session.call_tool("get_weather", {"city": "crash"})
            await session.send_ping()  # the client session outlives its upstream's child
            return failed.value.error

    try:
        failed = run(agent(), seconds=30)
    finally:
        assert gateway.stop() == 0
    assert failed.code == -32050
    assert failed.data == {"upstream": "demo"}
    assert "exited with code 3" in failed.message
    ((pid, _),) = children(pid_dir).items()
    assert gone(pid)
    (claim,) = claims_of(gateway)
    summary = claim["gateway"]["call_summary"]
    # the crashed call was allowed, then faulted
    assert (summary["total"], summary["allowed"], summary["faulted"]) == (2, 2, 1)


def test_gateway_shutdown_stops_the_children_of_open_sessions(
    tmp_path: Path, pid_dir: Path
) -> None:
    gateway = stdio_gateway(tmp_path, pid_dir)
    try:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        }
        status, headers, _ = request(gateway.port, "POST", "/mcp", init)
        assert status == 200
        session = {"mcp-session-id": headers["mcp-session-id"]}
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "get_weather", "arguments": {"city": "Rome"}},
        }
        status, _, body = request(gateway.port, "POST", "/mcp", call, session)
        assert status == 200
        assert b"Sunny, 21 C in Rome" in body
        ((pid, _),) = children(pid_dir).items()
        assert lingers(pid)
    finally:
        assert gateway.stop() == 0
    assert gone(pid)
    (claim,) = claims_of(gateway)
    assert claim["gateway"]["session_id"] == headers["mcp-session-id"]


# ---------------------------------------------------------------- the library


def upstream_for(pid_dir: Path, pin: str | None = PYTHON_SHA256, **changes: Any) -> StdioUpstream:
    config = CmcpConfig.model_validate(
        {
            "policy_bundle_path": str(QUICKSTART / "policies"),
            "catalog_path": str(QUICKSTART / "catalog.json"),
            "upstreams": {"demo": stdio_upstream(pid_dir, pin)},
        }
    )
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(pid_dir),
        "CMCP_BEARER_TOKEN": "t" * 40,
        "AWS_SECRET_ACCESS_KEY": "not for children",
    }
    (upstream,) = stdio_upstreams(config, base=pid_dir, environ=environ).values()
    return dataclasses.replace(upstream, **changes)


def test_a_wrong_pin_refuses_the_spawn(tmp_path: Path, pid_dir: Path) -> None:
    config = write_config(
        tmp_path, "unused", upstreams={"demo": stdio_upstream(pid_dir, WRONG_SHA256)}
    )
    checked = run_cmcp("validate-config", "--config", config, "--json")
    assert checked.returncode == 1
    assert PYTHON_SHA256 in checked.stdout

    upstream = upstream_for(pid_dir, WRONG_SHA256)
    with pytest.raises(UpstreamError) as refused:
        run(upstream.open_session())
    message = str(refused.value)
    for named in (str(PYTHON), PYTHON_SHA256, WRONG_SHA256):
        assert named in message
    assert not refused.value.timed_out
    assert children(pid_dir) == {}  # nothing was run


def test_a_session_from_spawn_to_close(pid_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cmcp_cli.gateway.upstream.stdio")

    async def session_life() -> dict[str, Any]:
        session = await upstream_for(pid_dir).open_session()
        notifications: list[dict[str, Any]] = []
        relayed: list[dict[str, Any]] = []

        async def on_notification(message: dict[str, Any]) -> None:
            notifications.append(message)

        async def relay(message: dict[str, Any]) -> None:
            # the only request in flight: the child's messages during it are its own
            relayed.append(message)
            if message["method"] == "ping":
                await session.respond(message["id"], {"result": {}})
            elif "id" in message:
                error = {"code": -32601, "message": "not here"}
                await session.respond(message["id"], {"error": error})

        session.on_notification = on_notification
        listed = await session.request("tools/list", {})
        chatty = await session.request(
            "tools/call", {"name": "get_weather", "arguments": {"city": "chatty"}}, relay=relay
        )
        await session.close()
        await session.close()  # a second close is harmless
        with pytest.raises(UpstreamError, match="closed"):
            await session.request("tools/list", {})
        return {
            "protocol": session.protocol_version,
            "tools": sorted(tool["name"] for tool in listed["result"]["tools"]),
            "chatty": chatty["result"]["content"][0]["text"],
            "notifications": notifications,
            "relayed": [message["method"] for message in relayed],
            "pid": session.pid,
            "returncode": session.process.returncode,
        }

    seen = run(session_life())
    assert seen["protocol"] == "2025-11-25"
    assert seen["tools"] == CATALOG_TOOLS
    # the relay answered the server's ping and refused its roots/list, and heard of the
    # changed tool list, in the order the server sent them
    assert seen["chatty"] == "ping answered; roots refused with -32601"
    assert seen["relayed"] == ["ping", "roots/list", "notifications/tools/list_changed"]
    assert seen["notifications"] == []
    assert seen["returncode"] == 0  # it left on EOF, as asked
    assert not lingers(seen["pid"])
    variables = children(pid_dir)[seen["pid"]]
    assert set(variables) <= ALLOWED_ENV
    assert {"PATH", "HOME", "STDIO_SERVER_PID_DIR"} <= set(variables)
    # its stderr was drained into the debug log, under the upstream's name
    assert f"upstream 'demo' (pid {seen['pid']}) stderr: {STARTED_LINE}" in caplog.messages


def test_close_is_bounded_with_a_call_in_flight(pid_dir: Path) -> None:
    async def close_while_busy() -> tuple[BaseException | None, float, int]:
        session = await upstream_for(pid_dir).open_session()
        busy = asyncio.create_task(
            session.request("tools/call", {"name": "get_weather", "arguments": {"city": "slow"}})
        )
        await asyncio.sleep(0.3)  # the call reaches the child and sleeps there
        started = time.monotonic()
        await session.close()
        took = time.monotonic() - started
        (done,), _ = await asyncio.wait({busy}, timeout=1)
        return done.exception(), took, session.pid

    failure, took, pid = run(close_while_busy())
    assert isinstance(failure, UpstreamError)
    assert "its session was closed" in str(failure)
    assert took <= CLOSE_TIMEOUT_SECONDS + 0.5
    assert not lingers(pid)


def test_a_slow_answer_times_out_and_the_session_goes_on(pid_dir: Path) -> None:
    async def slow() -> tuple[UpstreamError, str, float, int]:
        upstream = upstream_for(pid_dir)
        session = await upstream.open_session()  # the child's start-up is not timed here
        upstream.timeout_seconds = 1.0
        started = time.monotonic()
        with pytest.raises(UpstreamError) as timed_out:
            await session.request(
                "tools/call", {"name": "get_weather", "arguments": {"city": "slow"}}
            )
        waited = time.monotonic() - started
        after = await session.request(
            "tools/call", {"name": "get_weather", "arguments": {"city": "Lima"}}
        )
        await session.close()
        return timed_out.value, after["result"]["content"][0]["text"], waited, session.pid

    failure, after, waited, pid = run(slow())
    assert failure.timed_out
    assert "did not answer tools/call within 1 s" in str(failure)
    assert 1.0 <= waited < 3.0
    assert after == "Sunny, 21 C in Lima"
    assert not lingers(pid)


def test_a_crash_fails_the_waiting_request_with_the_exit_code(pid_dir: Path) -> None:
    async def crash() -> tuple[str, str, int]:
        session = await upstream_for(pid_dir).open_session()
        with pytest.raises(UpstreamError) as crashed:
            await session.request(
                "tools/call", {"name": "get_weather", "arguments": {"city": "crash"}}
            )
        with pytest.raises(UpstreamError) as later:
            await session.request("tools/list", {})
        await session.close()
        return str(crashed.value), str(later.value), session.pid

    crashed, later, pid = run(crash())
    assert crashed == "upstream 'demo': its process exited with code 3"
    assert later == crashed  # the dead child is not asked again
    assert not lingers(pid)


def test_an_oversized_answer_is_refused_and_its_child_stopped(pid_dir: Path) -> None:
    async def big() -> tuple[str, int | None, int]:
        session = await upstream_for(pid_dir, max_response_bytes=16 * 1024).open_session()
        with pytest.raises(UpstreamError) as refused:
            await session.request(
                "tools/call", {"name": "get_weather", "arguments": {"city": "big"}}
            )
        await session.close()
        return str(refused.value), session.process.returncode, session.pid

    refused, returncode, pid = run(big())
    assert "larger than max_response_size_bytes (16384 bytes)" in refused
    assert returncode == -signal.SIGKILL
    assert not lingers(pid)


def test_close_escalates_to_sigkill_and_stops_what_the_child_started(pid_dir: Path) -> None:
    async def stubborn() -> tuple[float, int | None, int, BaseException | None]:
        session = await upstream_for(pid_dir).open_session()
        busy = asyncio.create_task(
            session.request(
                "tools/call", {"name": "get_weather", "arguments": {"city": "stubborn"}}
            )
        )
        while not (helpers := list(pid_dir.glob("helper-*"))):
            await asyncio.sleep(0.05)
        started = time.monotonic()
        await session.close()
        took = time.monotonic() - started
        await asyncio.wait({busy}, timeout=1)
        helper = int(helpers[0].name.removeprefix("helper-"))
        return took, session.process.returncode, helper, busy.exception()

    took, returncode, helper, failure = run(stubborn(), seconds=30)
    assert returncode == -signal.SIGKILL  # it ignored EOF and SIGTERM
    assert CLOSE_TIMEOUT_SECONDS * 0.8 <= took <= CLOSE_TIMEOUT_SECONDS + 0.5
    assert isinstance(failure, UpstreamError)
    # the helper was in the child's process group: stopped with it (its reaping is init's)
    assert gone(helper, HELPER_CODE, zombie=False)


def test_upstream_close_kills_every_child_still_running(pid_dir: Path) -> None:
    async def shutdown() -> tuple[list[int], float]:
        upstream = upstream_for(pid_dir)
        sessions = [await upstream.open_session(), await upstream.open_session()]
        upstream.close()  # what the gateway does last at shutdown
        started = time.monotonic()
        codes = [await session.process.wait() for session in sessions]
        for session in sessions:
            await session.close()
        return codes, time.monotonic() - started

    codes, took = run(shutdown())
    assert codes == [-signal.SIGKILL, -signal.SIGKILL]
    assert took < CLOSE_TIMEOUT_SECONDS
    assert len(children(pid_dir)) == 2
    assert not any(lingers(pid) for pid in children(pid_dir))
