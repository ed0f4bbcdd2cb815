"""The relay in both directions, through a real `cmcp start` in front of a real SDK
upstream whose tools talk back while they run: progress and log messages reach the
client on the call's own response, the upstream's requests (sampling, elicitation,
roots) reach the client and its answers the upstream, a cancellation reaches the
upstream, a lost response stream resumes with Last-Event-ID, and sessions closed with
calls in flight leave claims that verify against their logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import mcp_types as types
import pytest
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.streamable_http import streamable_http_client
from pydantic import FileUrl

from cmcp_cli.audit.logfile import read_log_lines
from tests.gateway_support import Served, free_port, start_gateway, start_process, write_config
from tests.support import REPO, run_cmcp
from tests.test_gateway_compat import mcp1_python

UPSTREAM = REPO / "tests" / "relay_upstream.py"
PERMIT_ALL = '@id("relay-tests")\npermit (principal, action, resource);\n'
MANIFEST = {"version": "1.0.0", "authored_at": "2026-12-01T09:00:00Z", "author": "tests"}
WAIT_SECONDS = 15.0
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@dataclass
class Rig:
    gateway: Served
    upstream: Served
    state: Path
    policy: dict[str, str]  # the catalog and bundle the gateway runs with

    def restart_upstream(self) -> None:
        """Stop the upstream and start it again on its port: it forgets every session."""
        self.upstream.stop()
        command = [str(part) for part in self.upstream.process.args]  # type: ignore[union-attr]
        log = self.upstream.log.with_name("upstream-restarted.log")
        self.upstream = start_process(command, self.upstream.port, log)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("relay")
    state = folder / "upstream-state"
    state.mkdir()
    port = free_port()
    upstream = start_process(
        [sys.executable, str(UPSTREAM), "--port", str(port), "--state", str(state)],
        port,
        folder / "upstream.log",
    )
    running = Rig(upstream, upstream, state, {})
    try:
        tools = asyncio.run(_listed_tools(upstream.url))
        catalog = folder / "catalog.json"
        catalog.write_text(
            json.dumps(
                {
                    "catalog_version": 1,
                    "tools": [
                        {
                            "name": tool["name"],
                            "server": "demo",
                            "groups": ["relay"],
                            "data_class": "public",
                            "definition": {k: v for k, v in tool.items() if k != "name"},
                        }
                        for tool in tools
                    ],
                }
            )
        )
        bundle = folder / "bundle"
        bundle.mkdir()
        (bundle / "manifest.json").write_text(json.dumps(MANIFEST))
        (bundle / "relay.cedar").write_text(PERMIT_ALL)
        running.policy = {"policy_bundle_path": str(bundle), "catalog_path": str(catalog)}
        config = write_config(folder, upstream.url, **running.policy)
        running.gateway = start_gateway(config)
        try:
            yield running
        finally:
            running.gateway.stop()
    finally:
        running.upstream.stop()


@pytest.fixture
def relay(rig: Rig) -> tuple[Served, Path]:
    return rig.gateway, rig.state


async def _listed_tools(url: str) -> list[dict[str, Any]]:
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = await session.list_tools()
    return [tool.model_dump(by_alias=True, exclude_none=True) for tool in listed.tools]


def _text(result: object) -> str:
    assert isinstance(result, types.CallToolResult), result
    first = result.content[0]
    assert isinstance(first, types.TextContent), result
    return first.text


def test_progress_and_log_messages_reach_the_client_on_the_call(
    relay: tuple[Served, Path],
) -> None:
    gateway, _ = relay
    seen: list[tuple[float, float | None, str | None]] = []
    logs: list[Any] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async def session() -> str:
        async with (
            streamable_http_client(gateway.url) as (read, write),
            ClientSession(read, write, logging_callback=on_log) as client,
        ):
            await client.initialize()
            result = await client.call_tool("chatty", {"steps": 3}, progress_callback=on_progress)
            return _text(result)

    assert asyncio.run(session()) == "done after 3 steps"
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert logs == ["did step 1", "did step 2", "did step 3"]


# roots are deprecated as of 2026-07-28, still part of the 2025-11-25 session spoken here
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
def test_the_upstreams_requests_reach_the_client_and_its_answers_the_upstream(
    relay: tuple[Served, Path],
) -> None:
    gateway, state = relay
    asked: list[str] = []

    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        content = params.messages[0].content
        asked.append(f"sampling:{getattr(content, 'text', '')}")
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="forty-two"),
            model="test-model",
        )

    async def elicitation(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        asked.append(f"elicitation:{params.message}")
        return types.ElicitResult(action="accept", content={"holder": "Ada"})

    async def roots(context: ClientRequestContext) -> types.ListRootsResult:
        asked.append("roots")
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///work/project"))])

    async def session() -> list[str]:
        async with (
            streamable_http_client(gateway.url) as (read, write),
            ClientSession(
                read,
                write,
                sampling_callback=sampling,
                elicitation_callback=elicitation,
                list_roots_callback=roots,
            ) as client,
        ):
            await client.initialize()
            answers = [
                _text(await client.call_tool("ask_model", {"prompt": "the answer?"})),
                _text(await client.call_tool("ask_user", {"question": "whose card?"})),
                _text(await client.call_tool("client_roots", {})),
            ]
            await client.send_roots_list_changed()
            await client.send_ping()  # sent once the notification's POST was answered
            return answers

    answers = asyncio.run(session())
    assert answers == [
        "model said: forty-two",
        "user accept: Ada",
        json.dumps(["file:///work/project"]),
    ]
    assert asked == ["sampling:the answer?", "elicitation:whose card?", "roots"]
    deadline = time.monotonic() + WAIT_SECONDS
    while not (state / "roots-changed").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (state / "roots-changed").exists(), "roots/list_changed never reached the upstream"


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
def test_a_request_the_upstream_sends_outside_any_call_reaches_the_get_stream(
    relay: tuple[Served, Path],
) -> None:
    gateway, state = relay

    async def roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///later"))])

    async def session() -> str:
        async with (
            streamable_http_client(gateway.url) as (read, write),
            ClientSession(read, write, list_roots_callback=roots) as client,
        ):
            await client.initialize()
            asked = _text(await client.call_tool("roots_later", {}))
            deadline = time.monotonic() + WAIT_SECONDS
            while not (state / "roots-later").exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return asked

    assert asyncio.run(session()) == "asked"
    assert json.loads((state / "roots-later").read_text()) == ["file:///later"]


def test_a_cancelled_call_is_cancelled_upstream_and_the_session_ends_cleanly(
    relay: tuple[Served, Path],
) -> None:
    gateway, state = relay

    async def session() -> str:
        async with (
            streamable_http_client(gateway.url) as (read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            with anyio.move_on_after(1.0):
                await client.call_tool("slow", {"seconds": 20, "tag": "sdk"})
            # the session goes on after a cancellation
            return _text(await client.call_tool("slow", {"seconds": 0, "tag": "after"}))

    assert asyncio.run(session()) == "slept 0.0"  # and leaving raised nothing
    deadline = time.monotonic() + WAIT_SECONDS
    while not (state / "cancelled-sdk").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (state / "cancelled-sdk").exists(), "the upstream never saw the cancellation"
    assert not (state / "finished-sdk").exists()
    entries = [json.loads(line) for line in read_log_lines(gateway.log.parent / "audit.db")]
    cancelled = [e for e in entries if e["type"] == "fault" and e["stage"] == "cancelled"]
    assert any(e["error"] == "cancelled by the client" and "call_id" in e for e in cancelled)


def _events(body: str) -> list[tuple[str | None, dict[str, Any]]]:
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.split("\n") if ": " in line and line[0] != ":"
        )
        if "data" in fields:
            events.append((fields.get("id"), json.loads(fields["data"])))
    return events


async def _open_session(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    opened = await client.post(url, json=init, headers=HEADERS)
    assert opened.status_code == 200, opened.text
    headers = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
    await client.post(
        url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    return headers


def test_an_sdk_1x_client_gets_the_relay_and_leaves_cleanly_after_giving_up(
    relay: tuple[Served, Path],
) -> None:
    gateway, state = relay
    client = REPO / "tests" / "compat" / "relay_client_v1.py"
    ran = subprocess.run(
        [str(mcp1_python()), str(client), gateway.url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    seen = json.loads(ran.stdout)
    assert ran.returncode == 0, seen
    assert seen["chatty"] == "done after 2 steps"
    assert seen["progress"] == [1, 2]
    assert seen["logs"] == ["did step 1", "did step 2"]
    assert seen["ask_model"] == "model said: v1 model"
    assert seen["ask_user"] == "user accept: Grace"
    assert seen["client_roots"] == json.dumps(["file:///v1"])
    assert "gave_up" in seen  # its own timeout; leaving the session then raised nothing
    deadline = time.monotonic() + WAIT_SECONDS
    while not (state / "cancelled-v1").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (state / "cancelled-v1").exists(), "the abandoned call ran on upstream"


def test_a_lost_response_stream_resumes_with_last_event_id(relay: tuple[Served, Path]) -> None:
    gateway, _ = relay

    async def scenario() -> tuple[str, list[tuple[str | None, dict[str, Any]]]]:
        async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
            headers = await _open_session(client, gateway.url)
            call = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {
                    "name": "chatty",
                    "arguments": {"steps": 2},
                    "_meta": {"progressToken": "t-1"},
                },
            }
            first_id = None
            async with client.stream("POST", gateway.url, json=call, headers=headers) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                async for line in stream.aiter_lines():
                    if line.startswith("id: "):
                        first_id = line[4:]
                        break  # leave the response after its first event
            assert first_id is not None
            resumed = await client.get(gateway.url, headers={**headers, "last-event-id": first_id})
            assert resumed.status_code == 200, resumed.text
            unknown = await client.get(gateway.url, headers={**headers, "last-event-id": "p999-1"})
            assert unknown.status_code == 404
            for stray in ("cmcp-999", 12):  # an answer to nothing pending: accepted, dropped
                answer: dict[str, Any] = {"jsonrpc": "2.0", "id": stray, "result": {}}
                accepted = await client.post(gateway.url, json=answer, headers=headers)
                assert (accepted.status_code, accepted.content) == (202, b"")
            await client.delete(gateway.url, headers=headers)
            return first_id, _events(resumed.text)

    first_id, events = asyncio.run(scenario())
    stream_name, _, seq = first_id.rpartition("-")
    ids = [event_id for event_id, _ in events]
    assert ids == [f"{stream_name}-{n}" for n in range(int(seq) + 1, int(seq) + 1 + len(ids))]
    final = events[-1][1]
    assert final["id"] == 7
    assert final["result"]["content"][0]["text"] == "done after 2 steps"
    methods = [message.get("method") for _, message in events[:-1]]
    assert set(methods) <= {"notifications/progress", "notifications/message"}


def test_a_stateless_request_streams_its_notifications_without_event_ids(
    relay: tuple[Served, Path],
) -> None:
    gateway, _ = relay
    modern = "2026-07-28"
    body = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {
            "name": "chatty",
            "arguments": {"steps": 2},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": modern,
                "io.modelcontextprotocol/clientCapabilities": {},
                "progressToken": "m-1",
            },
        },
    }
    headers = {
        **HEADERS,
        "mcp-protocol-version": modern,
        "mcp-method": "tools/call",
        "mcp-name": "chatty",
    }
    answer = httpx.post(gateway.url, json=body, headers=headers, timeout=WAIT_SECONDS)
    assert answer.headers["content-type"].startswith("text/event-stream"), answer.text
    assert answer.headers["cmcp-session-id"]
    events = _events(answer.text)
    assert all(event_id is None for event_id, _ in events)  # 2026-07-28 has no resumption
    progress = [
        m["params"]["progress"] for _, m in events if m.get("method") == "notifications/progress"
    ]
    assert progress == [1, 2]
    final = events[-1][1]
    assert final["id"] == 9 and final["result"]["resultType"] == "complete"
    assert final["result"]["content"][0]["text"] == "done after 2 steps"


def test_a_session_closed_while_the_client_owes_an_answer_ends_cleanly(
    relay: tuple[Served, Path],
) -> None:
    gateway, _ = relay
    audit = gateway.log.parent / "audit.db"

    async def scenario() -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
        async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
            headers = await _open_session(client, gateway.url)
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
    gateway, _ = relay
    audit = gateway.log.parent / "audit.db"
    sessions = 20

    async def scenario() -> tuple[list[str], list[dict[str, Any]]]:
        limits = httpx.Limits(max_connections=3 * sessions)
        async with httpx.AsyncClient(timeout=WAIT_SECONDS, limits=limits) as client:
            opened = await asyncio.gather(
                *(_open_session(client, gateway.url) for _ in range(sessions))
            )

            async def call(headers: dict[str, str], n: int) -> dict[str, Any]:
                body = {
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "tools/call",
                    "params": {"name": "slow", "arguments": {"seconds": 20, "tag": f"load-{n}"}},
                }
                answer = await client.post(gateway.url, json=body, headers=headers)
                events = _events(answer.text)
                return events[-1][1] if events else dict(answer.json())

            calls = [asyncio.create_task(call(h, n)) for n, h in enumerate(opened)]
            await asyncio.sleep(1.5)  # every call is upstream by now
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
            headers = await _open_session(client, gateway.url)
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
            opened = [await _open_session(client, gateway.url) for _ in range(3)]

            async def call(headers: dict[str, str], n: int) -> dict[str, Any]:
                body = {
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "tools/call",
                    "params": {"name": "slow", "arguments": {"seconds": 20, "tag": f"stop-{n}"}},
                }
                answer = await client.post(gateway.url, json=body, headers=headers)
                events = _events(answer.text)
                return events[-1][1] if events else dict(answer.json())

            calls = [asyncio.create_task(call(h, n)) for n, h in enumerate(opened)]
            await asyncio.sleep(1.5)
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
            before = _text(await client.call_tool("slow", {"seconds": 0, "tag": "r1"}))
            await asyncio.to_thread(rig.restart_upstream)
            after = _text(await client.call_tool("slow", {"seconds": 0, "tag": "r2"}))
            return before, after

    assert asyncio.run(scenario()) == ("slept 0.0", "slept 0.0")
    entries = [json.loads(line) for line in read_log_lines(rig.gateway.log.parent / "audit.db")]
    renewed = [
        e for e in entries if e["type"] == "fault" and e["stage"] == "upstream_session_renewed"
    ]
    assert len(renewed) == 1
    assert "'demo'" in renewed[0]["error"]
