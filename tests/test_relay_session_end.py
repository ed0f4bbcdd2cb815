"""Sessions that end with work in flight: closed by the client, by load, by the gateway's
timeout or its stop, and upstreams that forget a session; every chain ends cleanly and every
claim verifies against its log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from cmcp_cli.audit.logfile import read_log_lines
from tests.gateway_support import Served, start_gateway, write_config
from tests.relay_rig import (
    WAIT_SECONDS,
    Rig,
    events_of,
    open_session,
    text_of,
)
from tests.support import run_cmcp


async def until_started(state: Path, tags: list[str]) -> None:
    """Wait, bounded, until the upstream has begun the `slow` call of every tag."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not all((state / f"started-{tag}").exists() for tag in tags):
        assert time.monotonic() < deadline, f"not every call of {tags} reached the upstream"
        await asyncio.sleep(0.05)


def test_a_session_closed_while_the_client_owes_an_answer_ends_cleanly(
    relay: tuple[Served, Path],
) -> None:
    gateway, _ = relay
    audit = gateway.log.parent / "audit.db"

    async def scenario() -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
        async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
            headers = await open_session(client, gateway.url)
            call = {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "ask_user", "arguments": {"question": "card?"}},
            }
            seen: list[dict[str, Any]] = []
            async with client.stream("POST", gateway.url, json=call, headers=headers) as stream:
                lines = stream.aiter_lines()
                async for line in lines:
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                        if seen[-1].get("method") == "elicitation/create":
                            break
                # the client never answers; its session is closed instead
                closed = await client.delete(gateway.url, headers=headers)
                assert closed.status_code == 200
                seen.extend([json.loads(x[6:]) async for x in lines if x.startswith("data: ")])
            return headers["mcp-session-id"], seen[0], seen[1:]

    session_id, asked, rest = asyncio.run(scenario())
    assert asked["id"] == "cmcp-1" and asked["params"]["message"] == "card?"
    assert [m["error"]["code"] for m in rest] == [-32800]  # the call's answer ends the stream
    claim = gateway.log.parent / "claims" / f"{session_id}.claim.json"
    verified = run_cmcp("verify", claim, "--allow-software", "--audit-log", audit, "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    entries = [json.loads(line) for line in read_log_lines(audit, session_id)]
    assert entries[-1]["type"] == "session_end"


def test_sessions_closed_with_calls_in_flight_leave_claims_that_verify(
    relay: tuple[Served, Path],
) -> None:
    gateway, state = relay
    audit = gateway.log.parent / "audit.db"
    sessions = 20

    async def scenario() -> tuple[list[str], list[dict[str, Any]]]:
        limits = httpx.Limits(max_connections=3 * sessions)
        async with httpx.AsyncClient(timeout=WAIT_SECONDS, limits=limits) as client:
            opened = await asyncio.gather(
                *(open_session(client, gateway.url) for _ in range(sessions))
            )

            async def call(headers: dict[str, str], n: int) -> dict[str, Any]:
                body = {
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "tools/call",
                    "params": {"name": "slow", "arguments": {"seconds": 20, "tag": f"load-{n}"}},
                }
                answer = await client.post(gateway.url, json=body, headers=headers)
                events = events_of(answer.text)
                return events[-1][1] if events else dict(answer.json())

            calls = [asyncio.create_task(call(h, n)) for n, h in enumerate(opened)]
            await until_started(state, [f"load-{n}" for n in range(sessions)])
            closed = await asyncio.gather(*(client.delete(gateway.url, headers=h) for h in opened))
            assert [c.status_code for c in closed] == [200] * sessions
            answers = await asyncio.wait_for(asyncio.gather(*calls), WAIT_SECONDS)
        return [h["mcp-session-id"] for h in opened], answers

    ids, answers = asyncio.run(scenario())
    for answer in answers:  # every caller got an answer, none hangs
        assert answer["error"]["code"] == -32800, answer
    for session_id in ids:
        claim = gateway.log.parent / "claims" / f"{session_id}.claim.json"
        verified = run_cmcp("verify", claim, "--allow-software", "--audit-log", audit, "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        replayed = run_cmcp("replay-audit", "--db", audit, "--claim", claim, "--json")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        entries = [json.loads(line) for line in read_log_lines(audit, session_id)]
        assert entries[-1]["type"] == "session_end"
        faults = [e for e in entries if e["type"] == "fault"]
        assert [f["stage"] for f in faults] == ["cancelled"]
        assert json.loads(claim.read_text())["gateway"]["call_summary"]["faulted"] == 1


def test_a_call_past_the_gateways_timeout_is_cancelled_upstream(rig: Rig, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, rig.upstream.url, **rig.policy, limits={"request_timeout_seconds": 1}
    )
    gateway = start_gateway(config)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
            headers = await open_session(client, gateway.url)
            call = {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "slow", "arguments": {"seconds": 20, "tag": "timeout"}},
            }
            # the answer is -32052, unless the server's read timeout (the same limit)
            # closes the connection first: the call is cancelled upstream either way
            with contextlib.suppress(httpx.RemoteProtocolError):
                answer = await client.post(gateway.url, json=call, headers=headers)
                assert answer.json()["error"]["code"] == -32052, answer.text

    try:
        asyncio.run(scenario())
        deadline = time.monotonic() + WAIT_SECONDS
        while not (rig.state / "cancelled-timeout").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (rig.state / "cancelled-timeout").exists(), "the upstream ran on after the timeout"
    finally:
        gateway.stop()
    entries = [json.loads(line) for line in read_log_lines(tmp_path / "audit.db")]
    decided = [e["call_id"] for e in entries if e.get("phase") == "decision"]
    faulted = [e["call_id"] for e in entries if e["type"] == "fault"]
    assert decided == faulted  # the timed-out call has its fault in the chain


def test_stopping_the_gateway_with_calls_in_flight_answers_them_and_ends_each_chain(
    rig: Rig, tmp_path: Path
) -> None:
    gateway = start_gateway(write_config(tmp_path, rig.upstream.url, **rig.policy))
    audit = tmp_path / "audit.db"

    async def scenario() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
            opened = [await open_session(client, gateway.url) for _ in range(3)]

            async def call(headers: dict[str, str], n: int) -> dict[str, Any]:
                body = {
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "tools/call",
                    "params": {"name": "slow", "arguments": {"seconds": 20, "tag": f"stop-{n}"}},
                }
                answer = await client.post(gateway.url, json=body, headers=headers)
                events = events_of(answer.text)
                return events[-1][1] if events else dict(answer.json())

            calls = [asyncio.create_task(call(h, n)) for n, h in enumerate(opened)]
            await until_started(rig.state, [f"stop-{n}" for n in range(len(opened))])
            started = time.monotonic()
            await asyncio.to_thread(gateway.stop)
            assert time.monotonic() - started < 10  # no wait for the calls' own end
            return await asyncio.gather(*calls)

    try:
        answers = asyncio.run(scenario())
    finally:
        gateway.stop()
    assert [a["error"]["code"] for a in answers] == [-32800] * 3
    claims = sorted((tmp_path / "claims").glob("*.claim.json"))
    assert len(claims) == 3
    for claim in claims:
        session_id = claim.name.split(".")[0]
        verified = run_cmcp("verify", claim, "--allow-software", "--audit-log", audit, "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        entries = [json.loads(line) for line in read_log_lines(audit, session_id)]
        assert [e["type"] for e in entries[-2:]] == ["fault", "session_end"]
        assert entries[-2]["error"] == "the gateway is stopping"


def test_an_upstream_that_forgot_the_session_gets_a_new_one_and_the_session_goes_on(
    rig: Rig,
) -> None:
    async def scenario() -> tuple[str, str]:
        async with (
            streamable_http_client(rig.gateway.url) as (read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            before = text_of(await client.call_tool("slow", {"seconds": 0, "tag": "r1"}))
            await asyncio.to_thread(rig.restart_upstream)
            after = text_of(await client.call_tool("slow", {"seconds": 0, "tag": "r2"}))
            return before, after

    assert asyncio.run(scenario()) == ("slept 0.0", "slept 0.0")
    entries = [json.loads(line) for line in read_log_lines(rig.gateway.log.parent / "audit.db")]
    renewed = [
        e for e in entries if e["type"] == "fault" and e["stage"] == "upstream_session_renewed"
    ]
    assert len(renewed) == 1
    assert "'demo'" in renewed[0]["error"]


def test_a_request_the_client_owes_when_the_upstream_forgets_the_session_ends_in_a_fault(
    rig: Rig,
) -> None:
    """The upstream asks for roots outside any call; before the client answers, the
    upstream forgets the session. The request it forgot still gets its fault."""
    url = rig.gateway.url

    async def scenario() -> str:
        async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
            headers = await open_session(client, url)
            asked = asyncio.Event()

            async def listen() -> None:
                async with client.stream("GET", url, headers=headers) as stream:
                    async for line in stream.aiter_lines():
                        if line.startswith("data: ") and '"roots/list"' in line:
                            asked.set()
                            return

            listening = asyncio.create_task(listen())
            call = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "roots_later", "arguments": {}},
            }
            assert (await client.post(url, json=call, headers=headers)).status_code == 200
            async with asyncio.timeout(WAIT_SECONDS):
                await asyncio.wait({listening})
            assert asked.is_set()
            await asyncio.to_thread(rig.restart_upstream)  # the client never answered
            slow = {"name": "slow", "arguments": {"seconds": 0, "tag": "forgot"}}
            call = {**call, "id": 2, "params": slow}
            assert (await client.post(url, json=call, headers=headers)).status_code == 200
            assert (await client.delete(url, headers=headers)).status_code == 200
            return headers["mcp-session-id"]

    session_id = asyncio.run(scenario())
    audit = rig.gateway.log.parent / "audit.db"
    entries = [json.loads(line) for line in read_log_lines(audit, session_id)]
    (asked,) = [
        e for e in entries if e.get("kind") == "list_roots" and e.get("phase") == "decision"
    ]
    assert asked["forwarded"] is True
    answers = [e for e in entries if e.get("call_id") == asked["call_id"] and e is not asked]
    assert [(e["type"], e.get("stage")) for e in answers] == [
        ("fault", "upstream_session_renewed")
    ], answers
    replayed = run_cmcp("replay-audit", "--db", audit, "--session", session_id, "--json")
    assert replayed.returncode == 0, replayed.stdout
