"""The methods beyond tools through `cmcp start`, with the official SDK 2.x in both eras:
completion, logging level, resource subscriptions (and the updates reaching the client),
listings in the upstream's order, input_required through a 2026-07-28 upstream, and
`Mcp-Param` headers checked against the body."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import yaml
from mcp import Client
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ResourceUpdated

from tests.gateway_support import (
    Served,
    free_port,
    request,
    start_gateway,
    start_process,
    start_upstream,
    write_config,
)

UPSTREAM = Path(__file__).resolve().parent / "methods_upstream.py"
SESSION_SECONDS = 30.0
UPSTREAM_ORDER = ["zeta_echo", "alpha_echo", "touch", "ask_name", "regional"]
DEFINITION_FIELDS = ("title", "description", "inputSchema", "outputSchema", "annotations")
MODERN = "2026-07-28"


PERMIT_ALL = "permit(principal, action, resource);\n"


def start_stack(
    folder: Path, *, legacy_only: bool = False, policy: str = PERMIT_ALL, record: bool = False
) -> tuple[Served, Served]:
    """The methods upstream, and a gateway in front of it that permits every call (or
    decides by `policy`), with a catalog pinned to what the upstream lists. `record`: the
    upstream logs every body it receives (`received` events)."""
    port = free_port()
    command = [sys.executable, str(UPSTREAM), "--port", str(port)]
    if legacy_only:
        command.append("--legacy-only")
    if record:
        command.append("--record")
    upstream = start_process(command, port, folder / "upstream.log")
    try:
        listed = asyncio.run(_listed_tools(upstream.url))
        catalog = {
            "catalog_version": 1,
            "tools": [
                {
                    "name": tool["name"],
                    "server": "methods",
                    "groups": ["all"],
                    "data_class": "public",
                    "definition": {k: tool[k] for k in DEFINITION_FIELDS if k in tool},
                }
                for tool in listed
            ],
        }
        (folder / "catalog.json").write_text(json.dumps(catalog))
        bundle = folder / "policies"
        bundle.mkdir()
        (bundle / "manifest.json").write_text(
            '{"version": "1", "authored_at": "2026-12-01T00:00:00Z", "author": "tests"}'
        )
        (bundle / "permit.cedar").write_text(policy)
        config = {
            "attestation": {"provider": "auto", "enforcement_mode": "enforcing"},
            "policy_bundle_path": str(bundle),
            "catalog_path": str(folder / "catalog.json"),
            "listen_addr": f"127.0.0.1:{free_port()}",
            "upstreams": {"methods": {"transport": "streamable-http", "url": upstream.url}},
            "audit": {"path": str(folder / "audit.db")},
            "claims": {"dir": str(folder / "claims")},
        }
        path = folder / "cmcp-config.yaml"
        path.write_text(yaml.safe_dump(config))
        return upstream, start_gateway(path)
    except BaseException:
        upstream.stop()
        raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    """An upstream that speaks both revisions, behind a gateway."""
    upstream, gateway = start_stack(tmp_path_factory.mktemp("methods"))
    yield upstream, gateway
    gateway.stop()
    upstream.stop()


@pytest.fixture(scope="module")
def legacy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    """An upstream that speaks 2025-11-25 only, behind a gateway."""
    upstream, gateway = start_stack(tmp_path_factory.mktemp("legacy"), legacy_only=True)
    yield upstream, gateway
    gateway.stop()
    upstream.stop()


async def _listed_tools(url: str) -> list[dict[str, Any]]:
    async with (
        asyncio.timeout(SESSION_SECONDS),
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = (await session.list_tools()).tools
        return [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in tools]


def upstream_events(upstream: Served, kind: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in upstream.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == kind]


async def legacy_session(url: str) -> dict[str, Any]:
    """A 2025-11-25 agent: what it is offered and what each method answers."""
    seen: dict[str, Any] = {"notices": [], "logged": []}
    updated = asyncio.Event()
    logged = asyncio.Event()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen["logged"].append(params.data)
        logged.set()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ServerNotification | types.ResourceUpdatedNotification):
            seen["notices"].append(message)
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.set()

    async with (
        asyncio.timeout(SESSION_SECONDS),
        streamable_http_client(url) as (read, write),
        ClientSession(read, write, message_handler=on_message, logging_callback=on_log) as session,
    ):
        initialized = await session.initialize()
        seen["capabilities"] = initialized.capabilities.model_dump(by_alias=True, exclude_none=True)
        seen["tools"] = [t.name for t in (await session.list_tools()).tools]
        prompt = await session.complete(
            types.PromptReference(type="ref/prompt", name="greet"), {"name": "name", "value": "A"}
        )
        seen["prompt_completion"] = prompt.completion.values
        template = await session.complete(
            types.ResourceTemplateReference(type="ref/resource", uri="test://items/{id}"),
            {"name": "id", "value": "x"},
        )
        seen["template_completion"] = template.completion.values
        await session.set_logging_level("debug")
        await session.subscribe_resource("test://doc")
        await session.call_tool("touch", {})
        async with asyncio.timeout(10):
            await updated.wait()
            await logged.wait()
        await session.unsubscribe_resource("test://doc")
    return seen


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
def test_a_2025_11_25_client_gets_the_methods_its_upstream_serves(
    stack: tuple[Served, Served],
) -> None:
    upstream, gateway = stack
    seen = asyncio.run(legacy_session(gateway.url))
    capabilities = seen["capabilities"]
    assert "completions" in capabilities
    assert "logging" in capabilities
    assert capabilities["resources"].get("subscribe") is True
    assert seen["tools"] == UPSTREAM_ORDER  # the upstream's order, not sorted by name
    assert seen["prompt_completion"] == ["Ada", "Alan"]
    assert seen["template_completion"] == ["x1", "x2"]
    assert [e["level"] for e in upstream_events(upstream, "level")] == ["debug"]
    assert [e["uri"] for e in upstream_events(upstream, "subscribe")] == ["test://doc"]
    assert [e["uri"] for e in upstream_events(upstream, "unsubscribe")] == ["test://doc"]
    methods = [type(n).__name__ for n in seen["notices"]]
    assert "ResourceUpdatedNotification" in methods
    updated = next(n for n in seen["notices"] if isinstance(n, types.ResourceUpdatedNotification))
    assert str(updated.params.uri) == "test://doc"
    assert "the document was touched" in seen["logged"]  # sent outside any request


def raw_session(port: int) -> str:
    status, headers, _ = request(
        port,
        "POST",
        "/mcp",
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        },
    )
    assert status == 200
    return headers["mcp-session-id"]


def test_a_method_no_upstream_serves_is_method_not_found_and_notices_are_dropped(
    stack: tuple[Served, Served],
) -> None:
    _, gateway = stack
    session = raw_session(gateway.port)
    headers = {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    status, _, body = request(
        gateway.port,
        "POST",
        "/mcp",
        {"jsonrpc": "2.0", "id": 2, "method": "widgets/spin", "params": {}},
        headers,
    )
    answer = json.loads(body)
    assert status == 200
    assert answer["error"]["code"] == -32601
    assert "widgets/spin" in answer["error"]["message"]
    status, _, body = request(
        gateway.port,
        "POST",
        "/mcp",
        {"jsonrpc": "2.0", "method": "notifications/widgets/spun", "params": {}},
        headers,
    )
    assert (status, body) == (202, b"")


async def modern_session(url: str) -> dict[str, Any]:
    """A 2026-07-28 agent (auto mode): completion, and a tool that asks for input."""
    seen: dict[str, Any] = {"asked": []}

    async def elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        seen["asked"].append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async with asyncio.timeout(SESSION_SECONDS), Client(url, elicitation_callback=elicit) as client:
        seen["protocol"] = client.protocol_version
        seen["tools"] = [t.name for t in (await client.list_tools()).tools]
        completed = await client.complete(
            types.PromptReference(type="ref/prompt", name="greet"), {"name": "name", "value": "G"}
        )
        seen["completion"] = completed.completion.values
        asked = await client.call_tool("ask_name", {})
        seen["greeting"] = [c.text for c in asked.content if isinstance(c, types.TextContent)]
        regional = await client.call_tool("regional", {"region": "eu-west"})
        seen["regional"] = [c.text for c in regional.content if isinstance(c, types.TextContent)]
    return seen


def test_a_2026_07_28_client_is_served_through_a_2026_07_28_upstream(
    stack: tuple[Served, Served],
) -> None:
    upstream, gateway = stack
    seen = asyncio.run(modern_session(gateway.url))
    assert seen["protocol"] == MODERN
    assert seen["tools"] == UPSTREAM_ORDER
    assert seen["completion"] == ["Grace"]
    assert seen["asked"] == ["What is your name?"]
    assert seen["greeting"] == ["hello Ada (asked-once)"]
    assert seen["regional"] == ["region eu-west"]  # the upstream checked our Mcp-Param-Region
    calls = [e for e in upstream_events(upstream, "call") if e["name"] == "ask_name"]
    assert [e["protocol"] for e in calls] == [MODERN, MODERN]  # asked, then answered
    answered = upstream_events(upstream, "answered")
    assert answered[-1]["state"] == "asked-once"


def modern_call(port: int, arguments: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "regional",
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    sent = {
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "regional",
        **headers,
    }
    status, _, raw = request(port, "POST", "/mcp", body, sent)
    return status, json.loads(raw)


def test_mcp_param_headers_must_agree_with_the_body(stack: tuple[Served, Served]) -> None:
    _, gateway = stack
    status, answer = modern_call(gateway.port, {"region": "us"}, {"mcp-param-region": "eu"})
    assert status == 400
    assert answer["error"]["code"] == -32020
    assert "Mcp-Param-Region" in answer["error"]["message"]
    status, answer = modern_call(gateway.port, {"region": "us"}, {})
    assert status == 400
    assert "missing" in answer["error"]["message"]
    status, answer = modern_call(gateway.port, {"region": "us"}, {"mcp-param-region": "us"})
    assert status == 200
    assert answer["result"]["content"][0]["text"] == "region us"


async def listening(url: str) -> dict[str, Any]:
    """A 2026-07-28 agent that listens for a resource's updates and a tool list's changes."""
    seen: dict[str, Any] = {}
    async with asyncio.timeout(SESSION_SECONDS), Client(url) as client:
        seen["protocol"] = client.protocol_version
        listened = client.listen(tools_list_changed=True, resource_subscriptions=["test://doc"])
        async with listened as subscription:
            seen["honored"] = subscription.honored.model_dump(by_alias=True, exclude_none=True)
            await client.call_tool("touch", {})
            async with asyncio.timeout(10):
                seen["event"] = await anext(aiter(subscription))
    return seen


def test_a_2026_07_28_client_listens_through_a_2025_11_25_upstream(
    legacy_stack: tuple[Served, Served],
) -> None:
    upstream, gateway = legacy_stack
    seen = asyncio.run(listening(gateway.url))
    assert seen["protocol"] == MODERN  # to the gateway; the gateway speaks 2025-11-25 on
    assert seen["honored"] == {"toolsListChanged": True, "resourceSubscriptions": ["test://doc"]}
    assert seen["event"] == ResourceUpdated(uri="test://doc")
    assert [e["uri"] for e in upstream_events(upstream, "subscribe")] == ["test://doc"]
    calls = [e for e in upstream_events(upstream, "call") if e["name"] == "touch"]
    assert [e["protocol"] for e in calls] == ["2025-11-25"]


def test_a_2026_07_28_client_listens_through_a_2026_07_28_upstream(
    stack: tuple[Served, Served],
) -> None:
    upstream, gateway = stack
    subscribed = len(upstream_events(upstream, "subscribe"))
    seen = asyncio.run(listening(gateway.url))
    assert seen["honored"] == {"toolsListChanged": True, "resourceSubscriptions": ["test://doc"]}
    assert seen["event"] == ResourceUpdated(uri="test://doc")  # from the upstream's own stream
    # no resources/subscribe on 2026-07-28: the gateway listens upstream instead
    assert len(upstream_events(upstream, "subscribe")) == subscribed
    calls = [e for e in upstream_events(upstream, "call") if e["name"] == "touch"]
    assert calls[-1]["protocol"] == MODERN


def test_listen_is_refused_to_a_2025_11_25_session(stack: tuple[Served, Served]) -> None:
    _, gateway = stack
    session = raw_session(gateway.port)
    headers = {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "subscriptions/listen",
        "params": {"notifications": {"toolsListChanged": True}},
    }
    status, _, raw = request(gateway.port, "POST", "/mcp", body, headers)
    assert status == 200
    assert json.loads(raw)["error"]["code"] == -32601


def test_what_no_upstream_offers_is_not_advertised_nor_served(tmp_path: Path) -> None:
    """The quickstart's upstream offers neither completions nor subscriptions."""
    upstream = start_upstream(tmp_path)
    try:
        gateway = start_gateway(write_config(tmp_path, upstream.url))
        try:
            status, headers, body = request(
                gateway.port,
                "POST",
                "/mcp",
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "raw", "version": "1"},
                    },
                },
            )
            capabilities = json.loads(body)["result"]["capabilities"]
            assert "completions" not in capabilities
            assert "subscribe" not in capabilities["resources"]
            sent = {
                "mcp-session-id": headers["mcp-session-id"],
                "mcp-protocol-version": "2025-11-25",
            }
            complete = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "completion/complete",
                "params": {
                    "ref": {"type": "ref/prompt", "name": "weather_report"},
                    "argument": {"name": "city", "value": "P"},
                },
            }
            status, _, body = request(gateway.port, "POST", "/mcp", complete, sent)
            assert status == 200
            assert json.loads(body)["error"] == {
                "code": -32601,
                "message": "no upstream of this gateway offers completions",
            }
            subscribe = {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "resources/subscribe",
                "params": {"uri": "notes://desk/today"},
            }
            status, _, body = request(gateway.port, "POST", "/mcp", subscribe, sent)
            assert json.loads(body)["error"]["code"] == -32601
        finally:
            gateway.stop()
    finally:
        upstream.stop()


async def listening_until_closed(url: str, port: int) -> dict[str, Any]:
    """A 2026-07-28 agent listening while its session is closed by another hand."""
    seen: dict[str, Any] = {}
    async with asyncio.timeout(SESSION_SECONDS), Client(url) as client:
        listed = await client.list_tools()
        session_id = (listed.meta or {})["_cmcp.session_id"]
        async with client.listen(tools_list_changed=True) as subscription:
            closed = await asyncio.to_thread(request, port, "POST", f"/sessions/{session_id}/close")
            seen["closed"] = closed[0]
            seen["events"] = [event async for event in subscription]  # ends, not lost
    return seen


def test_a_listen_stream_ends_with_its_result_when_the_session_ends(
    stack: tuple[Served, Served],
) -> None:
    _, gateway = stack
    seen = asyncio.run(listening_until_closed(gateway.url, gateway.port))
    assert seen == {"closed": 200, "events": []}
