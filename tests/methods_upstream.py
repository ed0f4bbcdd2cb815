"""An upstream on the official MCP SDK 2.x that serves the methods beyond tools: completion,
logging level, resource subscriptions, input_required (2026-07-28) and an `x-mcp-header`
argument; reading `test://items/slow` takes a minute. It lists its tools in a deliberate,
unsorted order, and logs what it is asked to stdout (one JSON line per event) so tests can
see what reached it.

    python tests/methods_upstream.py --port 8766
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server import Server, ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated

DOC_URI = "test://doc"
TEMPLATE = "test://items/{id}"
SLOW_URI = "test://items/slow"
TOOLS = [
    types.Tool(
        name="zeta_echo",
        description="Echo, listed first.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    ),
    types.Tool(
        name="alpha_echo",
        description="Echo, listed second.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    ),
    types.Tool(
        name="touch",
        description="Change the document: subscribers hear of it, and a log line is sent.",
        input_schema={"type": "object", "properties": {}},
    ),
    types.Tool(
        name="ask_name",
        description="Ask the user for a name (input_required), then greet.",
        input_schema={"type": "object", "properties": {}},
    ),
    types.Tool(
        name="regional",
        description="Answer for a region, which is mirrored in a header.",
        input_schema={
            "type": "object",
            "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
            "required": ["region"],
        },
    ),
]
NAMES = ["Ada", "Alan", "Grace"]


def event(kind: str, **fields: Any) -> None:
    print(json.dumps({"event": kind, **fields}), flush=True)  # noqa: T201


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def build_server() -> Server[Any]:
    state: dict[str, Any] = {"level": None, "subscribed": set(), "sessions": []}
    bus = InMemorySubscriptionBus()  # 2026-07-28 listen streams

    async def list_tools(
        _: ServerRequestContext[Any], __: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(
        context: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        arguments = dict(params.arguments or {})
        event("call", name=params.name, protocol=context.protocol_version)
        if params.name == "touch":
            await bus.publish(ResourceUpdated(uri=DOC_URI))
            for session in state["sessions"]:
                try:
                    if DOC_URI in state["subscribed"]:
                        await session.send_resource_updated(DOC_URI)
                    await session.send_log_message("info", "the document was touched", "fixture")
                except Exception as exc:  # noqa: BLE001 - a session that is gone hears nothing
                    event("unsent", error=repr(exc))
            return _text("touched")
        if params.name == "ask_name":
            responses = params.input_responses or {}
            answer = responses.get("name")
            if answer is None:
                request = types.ElicitRequest(
                    method="elicitation/create",
                    params=types.ElicitRequestFormParams(
                        message="What is your name?",
                        requested_schema={
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                            "required": ["name"],
                        },
                    ),
                )
                return types.InputRequiredResult(
                    result_type="input_required",
                    input_requests={"name": request},
                    request_state="asked-once",
                )
            content = getattr(answer, "content", None) or {}
            event("answered", state=params.request_state, content=content)
            return _text(f"hello {content.get('name')} ({params.request_state})")
        if params.name == "regional":
            return _text(f"region {arguments.get('region')}")
        return _text(f"{params.name}: {arguments.get('text')}")

    async def list_resources(
        context: ServerRequestContext[Any], __: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        if context.session not in state["sessions"]:
            state["sessions"].append(context.session)
        return types.ListResourcesResult(resources=[types.Resource(uri=DOC_URI, name="doc")])

    async def list_templates(
        _: ServerRequestContext[Any], __: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[types.ResourceTemplate(uri_template=TEMPLATE, name="items")]
        )

    async def read_resource(
        _: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        if str(params.uri) == SLOW_URI:  # an item of the template that takes a minute
            event("slow-read", uri=SLOW_URI)
            await anyio.sleep(60)
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=str(params.uri), text="the document")]
        )

    async def subscribe(
        context: ServerRequestContext[Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        state["subscribed"].add(str(params.uri))
        if context.session not in state["sessions"]:
            state["sessions"].append(context.session)
        event("subscribe", uri=str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(
        _: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        state["subscribed"].discard(str(params.uri))
        event("unsubscribe", uri=str(params.uri))
        return types.EmptyResult()

    async def set_level(
        _: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        state["level"] = params.level
        event("level", level=params.level)
        return types.EmptyResult()

    async def list_prompts(
        _: ServerRequestContext[Any], __: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        greet = types.Prompt(
            name="greet", arguments=[types.PromptArgument(name="name", required=True)]
        )
        return types.ListPromptsResult(prompts=[greet])

    async def get_prompt(
        _: ServerRequestContext[Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        name = (params.arguments or {}).get("name", "you")
        message = types.PromptMessage(
            role="user", content=types.TextContent(type="text", text=f"Greet {name}.")
        )
        return types.GetPromptResult(messages=[message])

    async def complete(
        _: ServerRequestContext[Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        ref = params.ref
        event("complete", ref=ref.model_dump(by_alias=True), argument=params.argument.name)
        prefix = params.argument.value
        if isinstance(ref, types.PromptReference) and ref.name == "greet":
            values = [name for name in NAMES if name.startswith(prefix)]
        elif isinstance(ref, types.ResourceTemplateReference) and ref.uri == TEMPLATE:
            values = [f"{prefix}1", f"{prefix}2"]
        else:
            values = []
        return types.CompleteResult(completion=types.Completion(values=values, has_more=False))

    return Server(
        "methods-upstream",
        version="1",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_set_logging_level=set_level,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        on_subscriptions_listen=ListenHandler(bus),
    )


def legacy_only(app: Any) -> Any:
    """The app as a server of 2025-11-25 only: it answers `server/discover` as servers of
    that revision do (HTTP 400, a JSON-RPC error), so 2026-07-28 clients fall back."""

    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or ())
        if scope["type"] == "http" and headers.get(b"mcp-method") == b"server/discover":
            body = json.dumps(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no session"}}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return serve


def recording(app: Any) -> Any:
    """The app, logging the body of every POST it receives, as received (a `received`
    event), so tests can see exactly what reached the upstream."""

    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(chunks)
        event("received", body=body.decode("utf-8", "replace"))
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return dict(await receive())
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--legacy-only", action="store_true", help="serve 2025-11-25 only")
    parser.add_argument("--record", action="store_true", help="log every POST body received")
    args = parser.parse_args(argv)
    app = build_server().streamable_http_app(host="127.0.0.1")
    served = legacy_only(app) if args.legacy_only else app
    served = recording(served) if args.record else served
    uvicorn.run(served, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
