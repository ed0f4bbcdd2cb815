"""The gateway as a 2026-07-28 client of an upstream that speaks that revision.

A client session of the stateless revision gets a stateless conversation with each
streamable-HTTP upstream that answers `server/discover` with that revision among its
`supportedVersions`; any other answer (an error, HTTP 4xx, no answer within
DISCOVER_SECONDS) falls back to `initialize`. A stateless conversation has no session id:
every request carries the envelope (`_meta` protocol version, the capabilities the client
of the request declared, the gateway's client info) and the `Mcp-Method` / `Mcp-Name` /
`Mcp-Param-*` headers computed from the body it forwards, never copied from the client.
Results (`resultType` "complete" or "input_required") come back as the upstream sent them.
Notifications come from `subscriptions/listen` streams the conversation opens (`watch`):
one for list changes when it starts listening, one per set of watched resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from cmcp_cli import __version__
from cmcp_cli.gateway.upstream.api import (
    UpstreamChannel,
    UpstreamConversation,
    UpstreamError,
    answers,
    decode_message,
)
from cmcp_cli.gateway.upstream.streamable_http import McpUpstream
from cmcp_cli.wire.http1 import BodyStream, HttpError, HttpTimeoutError, Response
from cmcp_cli.wire.jsonrpc import RequestId
from cmcp_cli.wire.mcp import (
    CLIENT_CAPABILITIES_KEY,
    CLIENT_ENVELOPE,
    CLIENT_INFO_KEY,
    MODERN_PROTOCOLS,
    NAME_BEARING,
    PROTOCOL_VERSION_KEY,
)
from cmcp_cli.wire.mcp_params import encode_value, param_headers
from cmcp_cli.wire.sse import SseDecoder, sse_data

MODERN_PROTOCOL = MODERN_PROTOCOLS[0]
DISCOVER_SECONDS = 3.0  # a probe never delays opening a conversation longer
CLIENT_INFO = {"name": "cmcp-gateway", "version": __version__}
SUBSCRIPTION_ID_KEY = "io.modelcontextprotocol/subscriptionId"
EVENT_STREAM = frozenset({"text/event-stream"})
LIST_CHANGES = {"toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True}

MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]


async def open_conversation(channel: UpstreamChannel, *, modern: bool) -> UpstreamConversation:
    """A conversation for a client session: stateless where the client and the upstream
    both speak 2026-07-28, else an initialized session."""
    if modern and isinstance(channel, McpUpstream):
        capabilities = await discover(channel)
        if capabilities is not None:
            return ModernConversation(channel, capabilities)
    return await channel.open_session()


async def discover(upstream: McpUpstream) -> dict[str, Any] | None:
    """The upstream's capabilities when it serves 2026-07-28, else None (bounded)."""
    conversation = ModernConversation(upstream, {})
    try:
        async with asyncio.timeout(min(DISCOVER_SECONDS, upstream.timeout_seconds)):
            answer = await conversation.request("server/discover", {})
    except (UpstreamError, TimeoutError):
        return None
    found = answer.get("result")
    if not isinstance(found, dict):
        return None
    versions = found.get("supportedVersions")
    if not isinstance(versions, list) or MODERN_PROTOCOL not in versions:
        return None
    capabilities = found.get("capabilities")
    return capabilities if isinstance(capabilities, dict) else {}


def envelope(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """`params` with the 2026-07-28 envelope in its `_meta`: the client capabilities (and
    log level) are those of the client whose request is being forwarded (none outside a
    request); the client info is the gateway's."""
    sent = dict(params or {})
    meta = sent.get("_meta")
    sent["_meta"] = {
        **(meta if isinstance(meta, Mapping) else {}),
        CLIENT_CAPABILITIES_KEY: {},
        **(CLIENT_ENVELOPE.get() or {}),
        PROTOCOL_VERSION_KEY: MODERN_PROTOCOL,
        CLIENT_INFO_KEY: CLIENT_INFO,
    }
    return sent


def routing_headers(
    method: str, params: Mapping[str, Any], input_schema: object
) -> list[tuple[str, str]]:
    """The headers a 2026-07-28 request repeats from its body."""
    headers = [("mcp-protocol-version", MODERN_PROTOCOL), ("mcp-method", method)]
    name_key = NAME_BEARING.get(method)
    named = params.get(name_key) if name_key is not None else None
    if isinstance(named, str):
        headers.append(("mcp-name", encode_value(named)))
    if method == "tools/call":
        headers += param_headers(input_schema, params.get("arguments") or {}).items()
    return headers


@dataclass(frozen=True)
class Watch:
    """An acknowledged listen stream upstream: what it honors, and how to end it."""

    honored: Mapping[str, Any]
    task: asyncio.Task[None]

    def stop(self) -> None:
        self.task.cancel()


async def _event_stream(
    upstream: McpUpstream, headers: list[tuple[str, str]], body: bytes
) -> AsyncIterator[bytes]:
    """The body of a long-lived POST answer (a listen stream), chunk by chunk: the one
    place the conversation holds a response open."""
    response = await upstream.send("POST", headers, body, stream_types=EVENT_STREAM)
    stream = response.stream
    if stream is None:
        excerpt = response.body[:200].decode("utf-8", "replace")
        raise UpstreamError(upstream.name, f"answered HTTP {response.status}: {excerpt}")
    stream.idle_timeout = None  # a quiet subscription is not a failure
    try:
        while chunk := await stream.read():
            yield chunk
    finally:
        stream.close()


@dataclass
class ModernConversation:
    """One client session's stateless conversation with one upstream."""

    upstream: McpUpstream
    server_capabilities: Mapping[str, Any]
    protocol_version: str = MODERN_PROTOCOL
    session_id: str | None = None
    on_notification: MessageHandler | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # tool -> input schema, from the upstream's own tools/list: where Mcp-Param-* come from
    _schemas: dict[str, Any] = field(default_factory=dict)
    _watches: set[asyncio.Task[None]] = field(default_factory=set)

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        relay: MessageHandler | None = None,
    ) -> dict[str, Any]:
        """Send a request; the JSON-RPC response object (with `result` or `error`). A
        protocol error the upstream answers with HTTP 4xx is returned as that error. An
        answer on an event stream is read as it arrives: each message before the response
        goes to `relay` (else on_notification) then; a cancelled request drops its stream,
        which is how a stateless upstream learns that nobody waits for it any more."""
        request_id = next(self._ids)
        sent = envelope(params)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": sent}
        schema = self._schemas.get(sent.get("name", "")) if method == "tools/call" else None
        headers = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            *routing_headers(method, sent, schema),
            *self.upstream.headers,
        ]
        body = orjson.dumps(message)
        response = await self.upstream.send("POST", headers, body, stream_types=EVENT_STREAM)
        handler = relay or self.on_notification
        if response.stream is not None:
            answer = await self._streamed_answer(response.stream, request_id, handler)
        else:
            answer = await self._answer(response, request_id, handler)
        if method == "tools/list":
            self._learn(answer)
        return answer

    async def respond(self, request_id: RequestId, answer: Mapping[str, Any]) -> None:
        """Nothing to answer: on this revision an upstream asks for input in its results
        (input_required), never with requests of its own."""
        del answer
        raise UpstreamError(
            self.upstream.name, f"sent no request {request_id!r}: 2026-07-28 upstreams send none"
        )

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        message = {"jsonrpc": "2.0", "method": method, "params": envelope(params)}
        headers = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", MODERN_PROTOCOL),
            ("mcp-method", method),
            *self.upstream.headers,
        ]
        response = await self.upstream.send("POST", headers, orjson.dumps(message))
        if response.status not in (200, 202):
            raise UpstreamError(self.upstream.name, f"answered HTTP {response.status}")

    async def listen(self) -> None:
        """Follow the upstream's list changes on a listen stream of their own, returning
        once it is acknowledged (or refused, or not within the upstream's timeout)."""
        if not self._watches:
            await self.watch(LIST_CHANGES)

    async def watch(self, wanted: Mapping[str, Any]) -> Watch | None:
        """Open a listen stream for the `wanted` notifications (its messages go to
        on_notification, without the upstream's subscription id); None when the upstream
        does not acknowledge it within its timeout."""
        acknowledged: asyncio.Future[Mapping[str, Any]] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._follow(dict(wanted), acknowledged))
        try:
            async with asyncio.timeout(self.upstream.timeout_seconds):
                honored = await asyncio.shield(acknowledged)
        except (TimeoutError, UpstreamError, HttpError):
            acknowledged.cancel()
            task.cancel()
            return None
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)
        return Watch(honored, task)

    async def close(self) -> None:
        """End the listen streams; the conversation holds no other upstream state."""
        for task in list(self._watches):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(
        self, wanted: dict[str, Any], acknowledged: asyncio.Future[Mapping[str, Any]]
    ) -> None:
        request_id = f"cmcp-listen-{next(self._ids)}"
        sent = envelope({"notifications": wanted})
        message = {"jsonrpc": "2.0", "id": request_id, "method": "subscriptions/listen"}
        headers = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            *routing_headers("subscriptions/listen", sent, None),
            *self.upstream.headers,
        ]
        decoder = SseDecoder(max_event_bytes=self.upstream.max_response_bytes)
        try:
            body = orjson.dumps({**message, "params": sent})
            async for chunk in _event_stream(self.upstream, headers, body):
                for event in decoder.feed(chunk):
                    if await self._heard(event.data, request_id, acknowledged):
                        return
        except (HttpError, UpstreamError, ValueError) as exc:
            if not acknowledged.done():
                acknowledged.set_exception(UpstreamError(self.upstream.name, str(exc)))
        finally:
            if not acknowledged.done():
                acknowledged.set_exception(
                    UpstreamError(self.upstream.name, "the listen stream ended unacknowledged")
                )

    async def _heard(
        self, data: bytes, request_id: str, acknowledged: asyncio.Future[Mapping[str, Any]]
    ) -> bool:
        """Take one message of a listen stream; True once the stream's own answer came."""
        found = decode_message(self.upstream.name, data)
        if not isinstance(found, dict):
            return False
        if found.get("id") == request_id:
            return True
        method = found.get("method")
        params = found.get("params")
        if method == "notifications/subscriptions/acknowledged":
            honored = params.get("notifications") if isinstance(params, dict) else None
            if not acknowledged.done():
                acknowledged.set_result(honored if isinstance(honored, dict) else {})
        elif isinstance(method, str) and "id" not in found and self.on_notification is not None:
            if isinstance(params, dict) and isinstance(params.get("_meta"), dict):
                meta = {k: v for k, v in params["_meta"].items() if k != SUBSCRIPTION_ID_KEY}
                found = {**found, "params": {**params, "_meta": meta}}
                if not meta:
                    del found["params"]["_meta"]
            await self.on_notification(found)
        return False

    def _learn(self, answer: Mapping[str, Any]) -> None:
        found = answer.get("result")
        tools = found.get("tools") if isinstance(found, Mapping) else None
        for tool in tools if isinstance(tools, list) else ():
            if isinstance(tool, Mapping) and isinstance(tool.get("name"), str):
                self._schemas[tool["name"]] = tool.get("inputSchema")

    async def _answer(
        self, response: Response, request_id: int, relay: MessageHandler | None
    ) -> dict[str, Any]:
        name = self.upstream.name
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if content_type == "application/json":
            messages = [decode_message(self.upstream.name, response.body)]
        elif content_type == "text/event-stream":
            messages = [
                decode_message(self.upstream.name, data)
                for data in sse_data(response.body)
                if data.strip()
            ]
        elif response.status not in (200, 202):
            excerpt = response.body[:200].decode("utf-8", "replace")
            raise UpstreamError(name, f"answered HTTP {response.status}: {excerpt}")
        else:
            raise UpstreamError(name, f"answered with content type {content_type or 'none'!r}")
        answer = None
        for message in messages:
            if not isinstance(message, dict):
                continue
            if answers(message, request_id):
                answer = message
            elif "id" not in message and relay is not None:
                await relay(message)
        if answer is not None:
            return answer
        raise UpstreamError(
            name, f"answered HTTP {response.status} with no response to the request"
        )

    async def _streamed_answer(
        self, stream: BodyStream, request_id: int, relay: MessageHandler | None
    ) -> dict[str, Any]:
        """The response on an event stream; the messages before it handed on as they
        arrive. The stream is released either way."""
        name = self.upstream.name
        decoder = SseDecoder(max_event_bytes=self.upstream.max_response_bytes)
        try:
            while chunk := await stream.read():
                for event in decoder.feed(chunk):
                    message = decode_message(self.upstream.name, event.data)
                    if not isinstance(message, dict):
                        continue
                    if answers(message, request_id):
                        stream.finish()
                        return message
                    if "id" not in message and relay is not None:
                        await relay(message)
        except HttpTimeoutError as exc:
            raise UpstreamError(name, str(exc), timed_out=True) from exc
        except HttpError as exc:
            raise UpstreamError(name, str(exc)) from exc
        except ValueError as exc:  # an event past max_response_size_bytes
            raise UpstreamError(name, f"sent too much: {exc}") from exc
        finally:
            stream.close()
        raise UpstreamError(name, "its event stream ended with no response to the request")
