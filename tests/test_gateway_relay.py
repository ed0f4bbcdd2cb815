"""The relay in both directions, through a real `cmcp start` in front of a real SDK
upstream whose tools talk back while they run: progress and log messages reach the
client on the call's own response, the upstream's requests (sampling, elicitation,
roots) reach the client and its answers the upstream, a cancellation reaches the
upstream, a lost response stream resumes with Last-Event-ID, and sessions closed with
calls in flight leave claims that verify against their logs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
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
from tests.gateway_support import Served
from tests.relay_rig import (
    HEADERS,
    WAIT_SECONDS,
    events_of,
    open_session,
    text_of,
)
from tests.support import REPO
from tests.test_gateway_compat import mcp1_python


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
            return text_of(result)

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
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///srv/project"))])

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
                text_of(await client.call_tool("ask_model", {"prompt": "the answer?"})),
                text_of(await client.call_tool("ask_user", {"question": "whose card?"})),
                text_of(await client.call_tool("client_roots", {})),
            ]
            await client.send_roots_list_changed()
            await client.send_ping()  # sent once the notification's POST was answered
            return answers

    answers = asyncio.run(session())
    assert answers == [
        "model said: forty-two",
        "user accept: Ada",
        json.dumps(["file:///srv/project"]),
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
            asked = text_of(await client.call_tool("roots_later", {}))
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
            return text_of(await client.call_tool("slow", {"seconds": 0, "tag": "after"}))

    assert asyncio.run(session()) == "slept 0.0"  # and leaving raised nothing
    deadline = time.monotonic() + WAIT_SECONDS
    while not (state / "cancelled-sdk").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (state / "cancelled-sdk").exists(), "the upstream never saw the cancellation"
    assert not (state / "finished-sdk").exists()
    entries = [json.loads(line) for line in read_log_lines(gateway.log.parent / "audit.db")]
    cancelled = [e for e in entries if e["type"] == "fault" and e["stage"] == "cancelled"]
    assert any(e["error"] == "cancelled by the client" and "call_id" in e for e in cancelled)


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
            headers = await open_session(client, gateway.url)
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
            return first_id, events_of(resumed.text)

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
    events = events_of(answer.text)
    assert all(event_id is None for event_id, _ in events)  # 2026-07-28 has no resumption
    progress = [
        m["params"]["progress"] for _, m in events if m.get("method") == "notifications/progress"
    ]
    assert progress == [1, 2]
    final = events[-1][1]
    assert final["id"] == 9 and final["result"]["resultType"] == "complete"
    assert final["result"]["content"][0]["text"] == "done after 2 steps"
