"""The relay matrix: MCP clients of both SDK generations and FastMCP, through a real
`cmcp start`, against official-SDK upstreams of both generations over HTTP and stdio.

One gateway serves four upstreams, each with the tools of tests/matrix_upstream.py under
its own prefix: `h2` (SDK 2.x, HTTP), `s2` (SDK 2.x, stdio), `h1` (SDK 1.x, HTTP), `s1`
(SDK 1.x, stdio). Its policy decides every server-initiated message by its context:
sampling is allowed for 10 tokens, redacted (e-mail) for 20 and denied otherwise; an
elicitation is allowed for one question, redacted (card numbers) for another and denied
otherwise; roots are listed only while the session has touched public data only. Each
tool answers with what reached the upstream, so the test sees both directions; every
session's claim is verified against the audit log afterwards."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import mcp_types as types
import pytest
from fastmcp import Client as FastMCPClient
from mcp import Client as McpClient

from tests.gateway_support import (
    request,
)
from tests.matrix_rig import (
    RELAY_STEPS,
    SESSION_SECONDS,
    Agent,
    Matrix,
    check_relay,
    run_v1_client,
    sdk2_relay,
    text_of,
)


@pytest.mark.parametrize("prefix", ["h2", "s2", "h1", "s1"])
def test_sdk2_client_relay_decided_by_policy(matrix: Matrix, prefix: str) -> None:
    answers, agent = asyncio.run(sdk2_relay(matrix.gateway.url, prefix))
    assert agent.progress == [(1, 2, "halfway"), (2, 2, "done")]
    assert agent.logs == ["a log line"]
    check_relay(matrix, answers, agent.asked, agent.ids)


# The official SDK 1.x ClientSession, from its own venv


@pytest.mark.parametrize("prefix", ["h2", "s2", "h1"])
def test_sdk1_client_relay_decided_by_policy(matrix: Matrix, prefix: str) -> None:
    steps = [[f"{prefix}_{suffix}", arguments] for suffix, arguments, _ in RELAY_STEPS]
    seen = run_v1_client("relay", matrix.gateway.url, json.dumps(steps))
    assert seen["progress"] == [[1, 2, "halfway"], [2, 2, "done"]]
    assert seen["logs"] == ["a log line"]
    claim = check_relay(matrix, seen["results"], seen["asked"], seen["ids"])
    assert claim["gateway"]["session_id"] == seen["session_id"]


# FastMCP's client (fastmcp-slim), in the 2025-11-25 era ("legacy": initialize, SSE)


async def fastmcp_relay(url: str, prefix: str) -> tuple[list[str], Agent]:
    agent = Agent()

    async def sampling(
        messages: list[types.SamplingMessage], params: types.CreateMessageRequestParams, _: Any
    ) -> types.CreateMessageResult:
        return await agent.sampling(_, params)

    async def elicitation(
        message: str, _: Any, params: types.ElicitRequestParams, context: Any
    ) -> types.ElicitResult:
        return await agent.elicitation(context, params)

    async def roots(context: Any) -> list[types.Root]:
        return list((await agent.roots(context)).roots)

    async def log(message: Any) -> None:
        agent.logs.append(message.data)

    client = FastMCPClient(
        url,
        mode="legacy",
        sampling_handler=sampling,
        elicitation_handler=elicitation,
        roots=roots,
        log_handler=log,
        progress_handler=agent.on_progress,
    )
    answers: list[str] = []
    async with asyncio.timeout(SESSION_SECONDS), client:
        for suffix, arguments, _ in RELAY_STEPS:
            answers.append(text_of(await client.call_tool(f"{prefix}_{suffix}", arguments)))
    return answers, agent


@pytest.mark.parametrize("prefix", ["h2", "s1"])
def test_fastmcp_client_relay_decided_by_policy(matrix: Matrix, prefix: str) -> None:
    answers, agent = asyncio.run(fastmcp_relay(matrix.gateway.url, prefix))
    assert agent.progress == [(1, 2, "halfway"), (2, 2, "done")]
    assert agent.logs == ["a log line"]
    check_relay(matrix, answers, agent.asked, agent.ids)


# Clients in the 2026-07-28 era (`mcp.Client` and `fastmcp.Client` in auto mode): no
# session, no GET stream, and no server-to-client requests on a response; progress and log
# messages still reach the client. An upstream that speaks 2026-07-28 (h2) is spoken to in
# that revision, so it has no back channel and refuses its own sampling, elicitation or
# roots request (the SDK's NoBackChannelError, -32600); a 2025-11-25-only upstream (s1)
# sends the request, and the gateway answers it -32601 (it does not turn them into an
# InputRequiredResult).

MODERN_REFUSED = {"h2": f"refused {-32600}", "s1": f"refused {-32601}"}
# What the gateway itself refuses, and records: a 2026-07-28 upstream (h2) sends nothing
# a client cannot take, a 2025-11-25 one (s1) asks and is refused by the gateway.
MODERN_ASKED = {"h2": [], "s1": ["elicitation/create", "roots/list", "sampling/createMessage"]}
MODERN_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("chatty", {}),
    ("ask_model", {"max_tokens": 10}),
    ("ask_user", {"question": "Who holds the card?"}),
    ("client_roots", {}),
]


def modern_expected(prefix: str) -> list[str]:
    return ["chatty done", *[MODERN_REFUSED[prefix]] * (len(MODERN_STEPS) - 1)]


async def modern_relay(url: str, prefix: str, client_kind: str) -> tuple[list[str], Agent, str]:
    agent = Agent()
    answers: list[str] = []
    session = ""
    if client_kind == "mcp":
        client: Any = McpClient(
            url,
            sampling_callback=agent.sampling,
            elicitation_callback=agent.elicitation,
            list_roots_callback=agent.roots,
            logging_callback=agent.log,
            log_level="debug",  # on 2026-07-28 log messages are opted into per request
        )
    else:

        async def log(message: Any) -> None:
            agent.logs.append(message.data)

        client = FastMCPClient(url, log_handler=log, progress_handler=agent.on_progress)
    async with asyncio.timeout(SESSION_SECONDS), client:
        for suffix, arguments in MODERN_STEPS:
            if client_kind == "mcp":
                result = await client.call_tool(
                    f"{prefix}_{suffix}", arguments, progress_callback=agent.on_progress
                )
            else:
                result = await client.call_tool(f"{prefix}_{suffix}", arguments)
            answers.append(text_of(result))
            session = (result.meta or {}).get("_cmcp.session_id", session)
    return answers, agent, session


@pytest.mark.parametrize(
    ("client_kind", "prefix"), [("mcp", "h2"), ("mcp", "s1"), ("fastmcp", "h2")]
)
def test_modern_clients_get_progress_and_logs_and_no_server_requests(
    matrix: Matrix, client_kind: str, prefix: str
) -> None:
    answers, agent, session = asyncio.run(modern_relay(matrix.gateway.url, prefix, client_kind))
    assert answers == modern_expected(prefix)
    assert agent.asked == []  # no callback ran
    assert agent.progress == [(1, 2, "halfway"), (2, 2, "done")]
    assert agent.logs == ["a log line"]
    assert session, "a 2026-07-28 answer names the gateway session it was answered in"
    status, _, body = request(matrix.gateway.port, "POST", f"/sessions/{session}/close")
    assert status == 200, body
    claim = matrix.new_claim()
    assert claim["gateway"]["session_id"] == session
    calls = claim["gateway"]["call_summary"]["by_kind"]["call_tool"]
    assert (calls["total"], calls["allowed"]) == (len(MODERN_STEPS), len(MODERN_STEPS))
    # each request the upstream could not send the client is on record, as a fault
    refused = [
        entry["stage"]
        for entry in matrix.entries(session)
        if entry["type"] == "fault" and "cannot send it requests" in entry["error"]
    ]
    assert sorted(refused) == sorted(MODERN_ASKED[prefix])


# Cancellation reaching the upstream, and leaving a session after a client-side timeout
