"""The gateway as an MCP client (McpUpstream, StdioUpstream) against official-SDK 2.x
servers on loopback: what an upstream sends during a call reaches the relay in order,
server-to-client requests are answered with respond(), a stream closed mid-call is resumed
with Last-Event-ID, a cancelled caller cancels the upstream's work, and a restarted
upstream's 404 is a lost session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cmcp_cli.gateway.upstream.api import (
    MessageHandler,
    UpstreamConversation,
    UpstreamError,
    UpstreamSessionLostError,
)
from cmcp_cli.gateway.upstream.spawn import child_environment
from cmcp_cli.gateway.upstream.stdio import StdioUpstream
from cmcp_cli.gateway.upstream.streamable_http import McpUpstream
from cmcp_cli.wire.http1 import Endpoint
from tests.gateway_support import Served, free_port, start_process

SERVER = Path(__file__).resolve().parent / "relay_upstream_server.py"
CAPABILITIES = {"sampling": {}, "elicitation": {"form": {}}, "roots": {"listChanged": False}}
SAMPLED = {
    "role": "assistant",
    "content": {"type": "text", "text": "hello"},
    "model": "test-model",
    "stopReason": "endTurn",
}
WAIT_SECONDS = 10.0
_T = TypeVar("_T")
Channel = McpUpstream | StdioUpstream


def run(work: Coroutine[Any, Any, _T], seconds: float = 60.0) -> _T:
    async def bounded() -> _T:
        async with asyncio.timeout(seconds):
            return await work

    return asyncio.run(bounded())


def serve(folder: Path, *, event_store: bool = False, port: int | None = None) -> Served:
    port = port or free_port()
    command = [sys.executable, str(SERVER), "--port", str(port), "--state", str(folder)]
    if event_store:
        command.append("--event-store")
    return start_process(command, port, folder / f"upstream-{port}.log")


def http_upstream(url: str) -> McpUpstream:
    return McpUpstream("relayed", Endpoint.parse(url), [], 10.0, 1 << 20)


def stdio_upstream(folder: Path) -> StdioUpstream:
    return StdioUpstream(
        name="relayed",
        command=(sys.executable, str(SERVER), "--stdio", "--state", str(folder)),
        base=folder,
        executable_sha256=None,
        env=child_environment({}, os.environ),
        cwd=None,
        timeout_seconds=10.0,
        max_response_bytes=1 << 20,
    )


@pytest.fixture(params=["http", "http+event-store", "stdio"])
def channel(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Channel]:
    """The test server, served the way the parameter says."""
    if request.param == "stdio":
        yield stdio_upstream(tmp_path)
        return
    served = serve(tmp_path, event_store=request.param.endswith("event-store"))
    try:
        yield http_upstream(served.url)
    finally:
        served.stop()


@contextlib.asynccontextmanager
async def conversing(channel: Channel) -> AsyncIterator[UpstreamConversation]:
    """A conversation, closed (and the channel's connections with it) on the way out."""
    try:
        conversation = await channel.open_session(capabilities=CAPABILITIES)
        try:
            yield conversation
        finally:
            await conversation.close()
    finally:
        channel.close()


def call(name: str, token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": {}}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return params


def text_of(answer: dict[str, Any]) -> str:
    return str(answer["result"]["content"][0]["text"])


def recorder(seen: list[dict[str, Any]]) -> MessageHandler:
    async def record(message: dict[str, Any]) -> None:
        seen.append(message)

    return record


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.02)


async def wait_for(path: Path) -> str:
    deadline = time.monotonic() + WAIT_SECONDS
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        await asyncio.sleep(0.05)
    return path.read_text()


def test_progress_and_log_reach_the_relay_in_order_before_the_response(channel: Channel) -> None:
    async def chatty() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], str]:
        relayed: list[dict[str, Any]] = []
        outside: list[dict[str, Any]] = []
        async with conversing(channel) as conversation:
            conversation.on_notification = recorder(outside)
            answer = await conversation.request(
                "tools/call", call("chatty", "token-1"), relay=recorder(relayed)
            )
            if isinstance(channel, McpUpstream):  # the stream's connection is kept for reuse
                await until(lambda: channel.pool.idle > 0)
            # the plain path still answers after a streamed one, on the same conversation
            listed = await conversation.request("tools/list", {})
        names = ", ".join(tool["name"] for tool in listed["result"]["tools"])
        return relayed, outside, answer, names

    relayed, outside, answer, names = run(chatty())
    assert text_of(answer) == "chatty done"
    assert [(m["method"], m["params"].get("progress")) for m in relayed] == [
        ("notifications/progress", 1),
        ("notifications/message", None),
        ("notifications/progress", 2),
    ]
    assert all(m["params"]["progressToken"] == "token-1" for m in relayed[::2])
    assert relayed[1]["params"]["data"] == "a log line"
    assert outside == []
    assert "chatty" in names and "reconnect" in names


def test_the_upstreams_own_requests_are_answered_with_respond(channel: Channel) -> None:
    async def converse() -> tuple[list[str], str, str]:
        asked: list[str] = []
        async with conversing(channel) as conversation:

            async def relay(message: dict[str, Any]) -> None:
                method = message.get("method")
                if "id" not in message or not isinstance(method, str):
                    return
                asked.append(method)
                if method == "sampling/createMessage":
                    await conversation.respond(message["id"], {"result": SAMPLED})
                elif method == "elicitation/create":
                    answer = {"action": "accept", "content": {"name": "Ada"}}
                    await conversation.respond(message["id"], {"result": answer})

            sampled = await conversation.request("tools/call", call("sample"), relay=relay)
            elicited = await conversation.request("tools/call", call("ask"), relay=relay)
        return asked, text_of(sampled), text_of(elicited)

    asked, sampled, elicited = run(converse())
    assert asked == ["sampling/createMessage", "elicitation/create"]
    assert sampled == "the model said hello"
    assert elicited == "hello Ada"


def test_a_request_outside_any_call_goes_to_on_notification(tmp_path: Path) -> None:
    served = serve(tmp_path)

    async def roots() -> tuple[list[str], list[dict[str, Any]], str]:
        seen: list[str] = []
        in_call: list[dict[str, Any]] = []
        async with conversing(http_upstream(served.url)) as conversation:

            async def on_notification(message: dict[str, Any]) -> None:
                seen.append(str(message.get("method")))
                if message.get("method") == "roots/list":
                    roots = [{"uri": "file:///srv/project", "name": "project"}]
                    await conversation.respond(message["id"], {"result": {"roots": roots}})

            conversation.on_notification = on_notification
            await conversation.listen()
            answer = await conversation.request(
                "tools/call", call("roots"), relay=recorder(in_call)
            )
        return seen, in_call, text_of(answer)

    try:
        seen, in_call, answer = run(roots())
    finally:
        served.stop()
    assert seen == ["roots/list"]
    assert in_call == []  # it came on the GET stream, tied to no call
    assert answer == "roots: file:///srv/project"


def test_a_stream_closed_mid_call_is_resumed_with_last_event_id(tmp_path: Path) -> None:
    served = serve(tmp_path, event_store=True)

    async def resumed() -> tuple[list[str], str]:
        relayed: list[dict[str, Any]] = []
        async with conversing(http_upstream(served.url)) as conversation:
            answer = await conversation.request(
                "tools/call", call("reconnect", "token-2"), relay=recorder(relayed)
            )
        return [str(m["method"]) for m in relayed], text_of(answer)

    try:
        relayed, answer = run(resumed())
    finally:
        served.stop()
    assert answer == "resumed"
    assert relayed == ["notifications/progress", "notifications/message"]
    # the server replayed the call's stream to a GET with Last-Event-ID
    assert [path.name for path in tmp_path.glob("replayed-after-*")]


def test_the_get_stream_is_resumed_with_last_event_id(tmp_path: Path) -> None:
    served = serve(tmp_path, event_store=True)

    async def resumed() -> tuple[list[str], str]:
        seen: list[str] = []
        heard = asyncio.Event()

        async def on_notification(message: dict[str, Any]) -> None:
            seen.append(str(message.get("method")))
            if message.get("method") == "notifications/tools/list_changed":
                heard.set()

        async with conversing(http_upstream(served.url)) as conversation:
            conversation.on_notification = on_notification
            await conversation.listen()
            answer = await conversation.request("tools/call", call("drop_get"))
            await asyncio.wait_for(heard.wait(), WAIT_SECONDS)
        return seen, text_of(answer)

    try:
        seen, answer = run(resumed())
    finally:
        served.stop()
    assert answer == "dropped"
    assert seen == ["notifications/resources/list_changed", "notifications/tools/list_changed"]
    assert [path.name for path in tmp_path.glob("replayed-after-*")]


def test_stdio_progress_goes_by_token_and_the_rest_by_the_one_in_flight(tmp_path: Path) -> None:
    async def two_in_flight() -> tuple[list[str], list[str], list[str]]:
        waiting_relay: list[dict[str, Any]] = []
        chatty_relay: list[dict[str, Any]] = []
        outside: list[dict[str, Any]] = []
        async with conversing(stdio_upstream(tmp_path)) as conversation:
            conversation.on_notification = recorder(outside)
            waiting = asyncio.create_task(
                conversation.request("tools/call", call("wait"), relay=recorder(waiting_relay))
            )
            await wait_for(tmp_path / "wait-started")
            # two requests in flight: progress finds its request by token, a log message
            # (which names no request) goes outside any
            answer = await conversation.request(
                "tools/call", call("chatty", "token-3"), relay=recorder(chatty_relay)
            )
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        assert text_of(answer) == "chatty done"
        return (
            [str(m["method"]) for m in waiting_relay],
            [str(m["method"]) for m in chatty_relay],
            [str(m["method"]) for m in outside],
        )

    waiting, chatty, outside = run(two_in_flight())
    assert waiting == []
    assert chatty == ["notifications/progress", "notifications/progress"]
    assert outside == ["notifications/message"]


def test_a_cancelled_caller_cancels_the_upstreams_work(channel: Channel, tmp_path: Path) -> None:
    async def cancel() -> tuple[str, str, str]:
        async with conversing(channel) as conversation:
            waiting = asyncio.create_task(conversation.request("tools/call", call("wait")))
            started = await wait_for(tmp_path / "wait-started")
            waiting.cancel("the client cancelled")
            with pytest.raises(asyncio.CancelledError):
                await waiting
            cancelled = await wait_for(tmp_path / "wait-cancelled")
            # the conversation goes on: the cancelled call's connection was not reused
            after = text_of(await conversation.request("tools/call", call("chatty")))
        return started, cancelled, after

    started, cancelled, after = run(cancel())
    assert cancelled == started  # the server cancelled the very request that was waiting
    assert after == "chatty done"


def test_the_timeout_bounds_silence_not_a_call_that_reports_progress(
    channel: Channel, tmp_path: Path
) -> None:
    channel.timeout_seconds = 2.0

    async def timed() -> tuple[str, int, UpstreamError, str]:
        relayed: list[dict[str, Any]] = []
        async with conversing(channel) as conversation:
            answer = await conversation.request(
                "tools/call", call("slow_progress", "token-4"), relay=recorder(relayed)
            )
            with pytest.raises(UpstreamError) as silent:
                await conversation.request("tools/call", call("wait"))
            cancelled = await wait_for(tmp_path / "wait-cancelled")
        return text_of(answer), len(relayed), silent.value, cancelled

    answer, progress, silent, cancelled = run(timed())
    assert answer == "slow but alive"  # 3 s in all, never 2 s without a word
    assert progress == 5
    assert silent.timed_out
    assert cancelled == (tmp_path / "wait-started").read_text()  # the upstream was told


def test_a_restarted_upstream_is_a_lost_session(tmp_path: Path) -> None:
    served = serve(tmp_path)
    port = served.port

    async def restart() -> str:
        nonlocal served
        upstream = http_upstream(served.url)
        async with conversing(upstream) as conversation:
            served.stop()
            served = await asyncio.to_thread(serve, tmp_path, port=port)
            with pytest.raises(UpstreamSessionLostError, match="HTTP 404") as lost:
                await conversation.request("tools/list", {})
            fresh = await upstream.open_session()
            try:
                listed = await fresh.request("tools/list", {})
            finally:
                await fresh.close()
        assert listed["result"]["tools"]
        return str(lost.value)

    try:
        message = run(restart())
    finally:
        served.stop()
    assert "open a new one" in message
