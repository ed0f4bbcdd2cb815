"""The relay matrix's life-cycle cases: cancellation reaching every kind of upstream from
SDK 2.x and 1.x clients, leaving a session after a client-side timeout, and an upstream
restarted mid-session (see tests/matrix_rig.py for the rig)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.matrix_rig import (
    SESSION_SECONDS,
    WAIT_SECONDS,
    Matrix,
    run_v1_client,
    text_of,
)


def cancelled_faults(matrix: Matrix, session_id: str) -> list[dict[str, Any]]:
    return [
        entry
        for entry in matrix.entries(session_id)
        if entry["type"] == "fault" and entry["stage"] == "cancelled"
    ]


async def started(state: Path, prefix: str, tag: str) -> None:
    """Wait, bounded, until the upstream's `slow` call tagged `tag` has started."""
    marker = state / f"started-{prefix}-{tag}"
    with anyio.fail_after(WAIT_SECONDS):
        while not marker.exists():
            await anyio.sleep(0.05)


async def sdk2_cancellations(url: str, state: Path) -> dict[str, Any]:
    """On one session: a quick call to each upstream (which starts the stdio ones), then
    each upstream's `slow` abandoned by an anyio cancel scope once it runs, two more by the
    request's own read timeout, then a quick call to each again (the session goes on)."""
    seen: dict[str, Any] = {"timeouts": [], "after": []}
    async with (
        asyncio.timeout(SESSION_SECONDS),
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for prefix in PREFIXES:
            await session.call_tool(f"{prefix}_slow", {"seconds": 0, "tag": "warm"})
        for prefix in PREFIXES:
            async with anyio.create_task_group() as group:
                arguments = {"seconds": 30, "tag": "anyio"}
                group.start_soon(session.call_tool, f"{prefix}_slow", arguments)
                await started(state, prefix, "anyio")
                group.cancel_scope.cancel()
        for prefix in ("h1", "s2"):
            with pytest.raises(MCPError) as timed_out:
                await session.call_tool(
                    f"{prefix}_slow", {"seconds": 30, "tag": "timeout"}, read_timeout_seconds=1.0
                )
            seen["timeouts"].append(timed_out.value.error.code)
        for prefix in PREFIXES:
            quick = await session.call_tool(f"{prefix}_slow", {"seconds": 0, "tag": "quick"})
            seen["after"].append(text_of(quick))
    return seen


PREFIXES = ("h2", "s2", "h1", "s1")


def test_sdk2_cancellation_reaches_every_upstream(matrix: Matrix) -> None:
    seen = asyncio.run(sdk2_cancellations(matrix.gateway.url, matrix.state))
    assert seen["after"] == ["slept 0.0"] * len(PREFIXES)  # and leaving raised nothing
    assert len(seen["timeouts"]) == 2
    for prefix in PREFIXES:
        assert matrix.cancelled(prefix, "anyio"), f"{prefix} never saw the cancellation"
    for prefix in ("h1", "s2"):
        assert matrix.cancelled(prefix, "timeout"), f"{prefix} ran on after the timeout"
    claim = matrix.new_claim()
    session_id = claim["gateway"]["session_id"]
    faults = cancelled_faults(matrix, session_id)
    assert len(faults) == len(PREFIXES) + 2
    assert {fault["error"] for fault in faults} == {"cancelled by the client"}
    calls = claim["gateway"]["call_summary"]["by_kind"]["call_tool"]
    assert (calls["total"], calls["faulted"]) == (3 * len(PREFIXES) + 2, len(PREFIXES) + 2)


def test_sdk1_client_cancellation_reaches_http_and_stdio_upstreams(matrix: Matrix) -> None:
    seen = run_v1_client("cancel", matrix.gateway.url, "h2_slow", "s1_slow")
    assert seen["timeouts"] == [408, 408]  # the 1.x client's own timeout error
    assert seen["after"] == ["slept 0.0", "slept 0.0"]
    for prefix in ("h2", "s1"):
        assert matrix.cancelled(prefix, "v1"), f"{prefix} never saw the cancellation"
    claim = matrix.new_claim()
    assert claim["gateway"]["session_id"] == seen["session_id"]
    assert len(cancelled_faults(matrix, seen["session_id"])) == 2


async def leave_after_timeout(url: str, prefix: str, tag: str) -> float:
    """A call that times out on the client, then the session is left at once: how long
    leaving took."""
    async with asyncio.timeout(SESSION_SECONDS):
        async with (
            streamable_http_client(url) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            # a first call starts the upstream (a stdio child), so the next reaches it
            await session.call_tool(f"{prefix}_slow", {"seconds": 0, "tag": f"{tag}-warm"})
            with pytest.raises(MCPError):
                await session.call_tool(
                    f"{prefix}_slow", {"seconds": 30, "tag": tag}, read_timeout_seconds=1.0
                )
            leaving = time.monotonic()
        return time.monotonic() - leaving


@pytest.mark.parametrize("prefix", ["h2", "s1"])
def test_leaving_after_a_client_timeout_is_clean(matrix: Matrix, prefix: str) -> None:
    took = asyncio.run(leave_after_timeout(matrix.gateway.url, prefix, "leave"))
    assert took < 5.0, f"leaving the session took {took:.1f} s"
    assert matrix.cancelled(prefix, "leave"), f"{prefix} ran on after the client left"
    claim = matrix.new_claim()
    entries = matrix.entries(claim["gateway"]["session_id"])
    assert entries[-1]["type"] == "session_end"
    assert len(cancelled_faults(matrix, claim["gateway"]["session_id"])) == 1
    calls = claim["gateway"]["call_summary"]["by_kind"]["call_tool"]
    assert (calls["total"], calls["faulted"]) == (2, 1)


# An HTTP upstream restarted mid-session


async def across_a_restart(matrix: Matrix, prefix: str) -> tuple[str, str]:
    async with (
        asyncio.timeout(SESSION_SECONDS),
        streamable_http_client(matrix.gateway.url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        before = text_of(await session.call_tool(f"{prefix}_chatty", {}))
        await asyncio.to_thread(matrix.restart, prefix)
        after = text_of(await session.call_tool(f"{prefix}_chatty", {}))
    return before, after


@pytest.mark.parametrize("prefix", ["h2", "h1"])
def test_a_restarted_upstream_gets_a_new_session_and_the_client_goes_on(
    matrix: Matrix, prefix: str
) -> None:
    assert asyncio.run(across_a_restart(matrix, prefix)) == ("chatty done", "chatty done")
    claim = matrix.new_claim()
    renewed = [
        entry
        for entry in matrix.entries(claim["gateway"]["session_id"])
        if entry["type"] == "fault" and entry["stage"] == "upstream_session_renewed"
    ]
    assert len(renewed) == 1, renewed
    assert f"'{prefix}'" in renewed[0]["error"]
    calls = claim["gateway"]["call_summary"]["by_kind"]["call_tool"]
    assert (calls["total"], calls["allowed"], calls["faulted"]) == (2, 2, 0)
