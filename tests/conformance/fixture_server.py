"""The upstream the MCP conformance suite runs against: the official SDK's `MCPServer` over
streamable HTTP, with an in-memory event store (resumability), exposing every tool,
resource and prompt the suite's server scenarios call by name, each behaving as the
scenario checks. Run as a module from the repository root:
`python -m tests.conformance.fixture_server --port N` serves http://127.0.0.1:N/mcp.

The suite is the judge of this module: run directly against it, every scenario of both
revisions passes (tests/test_conformance.py records that figure next to the gateway's).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
from typing import Annotated, Any

from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    Completion,
    CompletionArgument,
    CompletionContext,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    JSONRPCMessage,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field

from tests.conformance.fixture_input_required import register

# A 1x1 PNG and a silent WAV: the suite checks type, MIME type and that data is base64.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
# Sealing key for 2026-07-28 requestState (the SDK wants at least 32 bytes).
STATE_KEY = b"cmcp-conformance-fixture-request-state-key!"

log = logging.getLogger("conformance-fixture")


class MemoryEventStore(EventStore):
    """Every SSE event this process sent, in order, so a client can resume a stream with
    `Last-Event-ID`. Event ids are a process-wide counter; `None` messages are the priming
    events, stored for their id and never replayed."""

    def __init__(self) -> None:
        self._events: list[tuple[str, int, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        number = len(self._events) + 1
        self._events.append((stream_id, number, message))
        return str(number)

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        if not 1 <= after <= len(self._events):
            return None
        stream = self._events[after - 1][0]
        for stream_id, number, message in self._events[after:]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, str(number)))
        return stream


server = MCPServer(
    name="cmcp-conformance-fixture",
    version="1.0.0",
    request_state_security=RequestStateSecurity(keys=[STATE_KEY]),
)
subscribed: set[str] = set()


# ---------------------------------------------------------------- content tools


@server.tool()
def test_simple_text() -> str:
    """Returns one text block."""
    return "This is a simple text response for testing."


@server.tool()
def test_image_content() -> list[ImageContent]:
    """Returns one PNG image block."""
    return [ImageContent(type="image", data=PNG, mime_type="image/png")]


@server.tool()
def test_audio_content() -> list[AudioContent]:
    """Returns one WAV audio block."""
    return [AudioContent(type="audio", data=WAV, mime_type="audio/wav")]


@server.tool()
def test_embedded_resource() -> list[EmbeddedResource]:
    """Returns one embedded text resource."""
    contents = TextResourceContents(
        uri="test://embedded-resource",
        mime_type="text/plain",
        text="This is an embedded resource content.",
    )
    return [EmbeddedResource(type="resource", resource=contents)]


@server.tool()
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Returns a text, an image and an embedded resource block."""
    contents = TextResourceContents(
        uri="test://mixed-content-resource",
        mime_type="application/json",
        text='{"test": "data", "value": 123}',
    )
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG, mime_type="image/png"),
        EmbeddedResource(type="resource", resource=contents),
    ]


@server.tool()
def test_error_handling() -> str:
    """Fails: the SDK turns the exception into an isError result."""
    raise RuntimeError("This tool intentionally returns an error for testing")


# ---------------------------------------------------------------- messages during a call


@server.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Sends three log notifications on the call's stream before its result."""
    for step in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.log("info", step)
        await asyncio.sleep(0.05)
    return "Tool with logging executed successfully"


@server.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Logs one line: a 2026-07-28 request without `logLevel` in `_meta` must not get it."""
    await ctx.log("info", "diagnostic log line")
    return "logged"


@server.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Reports progress 0, 50, 100 of 100 against the caller's token, then returns it."""
    for done in (0, 50, 100):
        await ctx.report_progress(progress=done, total=100, message=f"Completed {done} of 100")
        await asyncio.sleep(0.05)
    meta = ctx.request_context.meta
    return str(meta.get("progress_token") if meta else 0)


@server.tool()
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Asks the client's model (sampling/createMessage, tied to this call) and quotes it."""
    message = SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
    result = await ctx.session.create_message(
        messages=[message], max_tokens=100, related_request_id=ctx.request_id
    )
    text = result.content.text if result.content.type == "text" else "(no text)"
    return f"LLM response: {text}"


class Reply(BaseModel):
    response: str = Field(description="User's response")


@server.tool()
async def test_elicitation(message: str, ctx: Context) -> str:
    """Asks the user (elicitation/create) and reports the action and content."""
    result = await ctx.elicit(message=message, schema=Reply)
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"User response: action={result.action}, content={content}"


class Defaults(BaseModel):
    """Every primitive type with a default (SEP-1034)."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active",
        description="User status",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    verified: bool = Field(default=True, description="Verification status")


@server.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Elicits a form whose every field has a default."""
    result = await ctx.elicit(message="Please provide user information", schema=Defaults)
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"Elicitation result: action={result.action}, content={content}"


def titled(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"const": const, "title": title} for const, title in pairs]


class Enums(BaseModel):
    """The five enum shapes of SEP-1330."""

    untitledSingle: str = Field(  # noqa: N815 - the suite's field names
        description="Simple enum without titles",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    titledSingle: str = Field(  # noqa: N815
        description="Enum with titled options (oneOf)",
        json_schema_extra={
            "oneOf": titled(
                ("low", "Low Priority"), ("medium", "Medium Priority"), ("high", "High Priority")
            )  # type: ignore[dict-item]
        },
    )
    untitledMulti: list[str] = Field(  # noqa: N815
        description="Multi-select without titles",
        json_schema_extra={"items": {"type": "string", "enum": ["read", "write", "execute"]}},
    )
    titledMulti: list[str] = Field(  # noqa: N815
        description="Multi-select with titled options",
        json_schema_extra={
            "items": {
                "anyOf": titled(
                    ("feature", "New Feature"), ("bug", "Bug Fix"), ("docs", "Documentation")
                )  # type: ignore[dict-item]
            }
        },
    )
    legacyEnum: str = Field(  # noqa: N815
        description="Legacy enum with enumNames",
        json_schema_extra={
            "enum": ["small", "medium", "large"],
            "enumNames": ["Small Size", "Medium Size", "Large Size"],
        },
    )


@server.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Elicits a form with every enum shape."""
    result = await ctx.elicit(message="Please select values of every enum kind", schema=Enums)
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"Elicitation completed: action={result.action}, content={content}"


@server.tool()
async def test_reconnection(ctx: Context) -> str:
    """Closes its own SSE stream mid-call (SEP-1699): the client resumes with Last-Event-ID
    and gets the second log message and the result from the event store."""
    await ctx.log("info", "Before disconnect")
    await ctx.close_sse_stream()
    await asyncio.sleep(0.2)
    await ctx.log("info", "After reconnect")
    return "Reconnection test completed"


# ---------------------------------------------------------------- schema and header fixtures

SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


@server.tool(name="json_schema_2020_12_tool")
def json_schema_2020_12_tool() -> str:
    """Advertises an inputSchema with the JSON Schema 2020-12 keywords the suite looks for."""
    return "json_schema_2020_12_tool"


# MCPServer derives inputSchema from the signature; this tool advertises a fixed one.
server._tool_manager._tools["json_schema_2020_12_tool"].parameters = SCHEMA_2020_12


@server.tool()
def test_x_mcp_header(
    region: Annotated[
        str,
        Field(description="Sent as Mcp-Param-Region", json_schema_extra={"x-mcp-header": "Region"}),
    ] = "<none>",  # noqa: PT028 - a tool, not a pytest test
) -> str:
    """A parameter mirrored into an Mcp-Param header, which the server validates (SEP-2243)."""
    return f"region={region}"


@server.tool()
async def test_missing_capability(ctx: Context) -> str:
    """Needs the client's sampling capability: without it, a JSON-RPC error naming it."""
    capabilities = ctx.session.client_capabilities
    if capabilities is None or capabilities.sampling is None:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="This tool requires the client 'sampling' capability",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "sampling capability declared"


def _dynamic() -> str:
    return "dynamic"


@server.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Adds and removes a tool, then announces the list change."""
    server.add_tool(_dynamic, name="test_dynamic_tool")
    server.remove_tool("test_dynamic_tool")
    await ctx.notify_tools_changed()
    return "tool list changed"


@server.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Adds and removes a prompt, then announces the list change."""
    server.add_prompt(Prompt.from_function(_dynamic, name="test_dynamic_prompt", description="x"))
    server.remove_prompt("test_dynamic_prompt")
    await ctx.notify_prompts_changed()
    return "prompt list changed"


# ---------------------------------------------------------------- resources


@server.resource("test://static-text")
def static_text() -> str:
    """A fixed text resource."""
    return "This is the content of the static text resource."


@server.resource("test://static-binary")
def static_binary() -> bytes:
    """A fixed binary resource (a PNG)."""
    return base64.b64decode(PNG)


@server.resource("test://template/{id}/data")
def templated(id: str) -> str:  # noqa: A002 - the URI template's variable
    """A resource template: the id comes back in the JSON body."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@server.resource("test://watched-resource")
def watched() -> str:
    """A resource clients may subscribe to."""
    return "Watched resource content"


async def set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
    log.info("log level set to %s", params.level)
    return EmptyResult()


async def subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
    subscribed.add(str(params.uri))
    return EmptyResult()


async def unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
    subscribed.discard(str(params.uri))
    return EmptyResult()


# MCPServer has no public hooks for these three methods; the low-level server does.
server._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
server._lowlevel_server.add_request_handler(
    "resources/subscribe", SubscribeRequestParams, subscribe
)
server._lowlevel_server.add_request_handler(
    "resources/unsubscribe", UnsubscribeRequestParams, unsubscribe
)


@server.completion()  # type: ignore[no-untyped-call, untyped-decorator]  # the SDK leaves it untyped
async def complete(
    ref: PromptReference | ResourceTemplateReference,
    argument: CompletionArgument,
    context: CompletionContext | None,
) -> Completion:
    """No suggestions: the suite checks the shape of the answer."""
    return Completion(values=[], total=0, has_more=False)


# ---------------------------------------------------------------- prompts


def user(content: TextContent | ImageContent | EmbeddedResource) -> UserMessage:
    return UserMessage(role="user", content=content)


@server.prompt()
def test_simple_prompt() -> list[UserMessage]:
    """No arguments, one message."""
    return [user(TextContent(type="text", text="This is a simple prompt for testing."))]


@server.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """Two required arguments, quoted back."""
    text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
    return [user(TextContent(type="text", text=text))]


@server.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803
    """Embeds the resource named by its argument."""
    contents = TextResourceContents(
        uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
    )
    return [
        user(EmbeddedResource(type="resource", resource=contents)),
        user(TextContent(type="text", text="Please process the embedded resource above.")),
    ]


@server.prompt()
def test_prompt_with_image() -> list[UserMessage]:
    """An image message and a text message."""
    return [
        user(ImageContent(type="image", data=PNG, mime_type="image/png")),
        user(TextContent(type="text", text="Please analyze the image above.")),
    ]


register(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # retry_interval: the `retry:` a client waits before resuming a closed stream (ms).
    server.run(
        transport="streamable-http",
        host="127.0.0.1",
        port=arguments.port,
        event_store=MemoryEventStore(),
        retry_interval=100,
    )


if __name__ == "__main__":
    main()
