"""The gateway as an MCP client of its upstream servers (streamable HTTP).

Each client session gets its own upstream session, so no two agents ever share upstream
state. The gateway negotiates 2025-11-25 (or the newest revision the server offers back),
which servers built on the 1.x and 2.x official SDKs both speak, and reads both JSON and
SSE answers to a POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from cmcp_cli.gateway.upstream.api import (
    CLOSE_TIMEOUT_SECONDS,
    UPSTREAM_PROTOCOL,
    UpstreamError,
    negotiate,
)
from cmcp_cli.wire.http1 import (
    ConnectionPool,
    Endpoint,
    HttpError,
    HttpTimeoutError,
    Response,
)
from cmcp_cli.wire.sse import SseDecoder, sse_data

_DECODER = msgspec.json.Decoder()


@dataclass
class McpUpstream:
    name: str
    endpoint: Endpoint
    headers: list[tuple[str, str]]  # configured ones, values from the environment resolved
    timeout_seconds: float
    max_response_bytes: int
    pool: ConnectionPool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ConnectionPool(self.endpoint)

    def describe(self) -> str:
        return f"{self.endpoint.scheme}://{self.endpoint.host_header}{self.endpoint.target}"

    async def open_session(self) -> UpstreamSession:
        session = UpstreamSession(self, None, UPSTREAM_PROTOCOL)
        session.protocol_version = await negotiate(session, self.name)
        await session.notify("notifications/initialized")
        return session

    async def post(self, message: Mapping[str, Any], session: UpstreamSession) -> Response:
        headers = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", session.protocol_version),
            *self.headers,
        ]
        if session.session_id is not None:
            headers.append(("mcp-session-id", session.session_id))
        return await self.send("POST", headers, orjson.dumps(message))

    async def send(self, method: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        try:
            return await self.pool.request(
                method,
                headers,
                body,
                timeout=self.timeout_seconds,
                max_body=self.max_response_bytes,
            )
        except HttpTimeoutError as exc:
            raise UpstreamError(self.name, str(exc), timed_out=True) from exc
        except HttpError as exc:
            raise UpstreamError(self.name, str(exc)) from exc

    def close(self) -> None:
        self.pool.close()


@dataclass
class UpstreamSession:
    upstream: McpUpstream
    session_id: str | None
    protocol_version: str
    # Server-to-client notifications (list_changed, above all), from any stream.
    on_notification: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    server_capabilities: Mapping[str, Any] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _listener: asyncio.Task[None] | None = None

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send a request; the JSON-RPC response object (with `result` or `error`)."""
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = dict(params)
        response = await self.upstream.post(message, self)
        if self.session_id is None and "mcp-session-id" in response.headers:
            self.session_id = response.headers["mcp-session-id"]
        self._check_status(response)
        return await self._answer(response, request_id)

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = dict(params)
        self._check_status(await self.upstream.post(message, self))

    async def listen(self) -> None:
        """Follow the upstream's own stream (GET) for notifications, in the background,
        returning once it is open (or refused, or not open within the upstream's timeout);
        an upstream that offers none (405) or drops it simply has none to give."""
        if self._listener is not None or self.session_id is None:
            return
        opened = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(opened.set))
        waiting = asyncio.create_task(opened.wait())
        try:
            await asyncio.wait(
                {waiting, self._listener},
                timeout=self.upstream.timeout_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiting.cancel()

    async def _listen(self, on_open: Callable[[], None]) -> None:
        if self.session_id is None:
            return
        headers = [
            ("accept", "text/event-stream"),
            ("mcp-session-id", self.session_id),
            ("mcp-protocol-version", self.protocol_version),
            *self.upstream.headers,
        ]
        decoder = SseDecoder(max_event_bytes=self.upstream.max_response_bytes)
        with contextlib.suppress(HttpError, TimeoutError, ValueError):
            stream = self.upstream.pool.stream(
                "GET", headers, connect_timeout=self.upstream.timeout_seconds, on_open=on_open
            )
            async for chunk in stream:
                for data in decoder.feed(chunk):
                    await self._notify_received(data)

    async def _notify_received(self, data: bytes) -> None:
        with contextlib.suppress(UpstreamError):
            message = self._decode(data)
            if (
                isinstance(message, dict)
                and "id" not in message
                and isinstance(message.get("method"), str)
                and self.on_notification is not None
            ):
                await self.on_notification(message)

    async def close(self) -> None:
        """End the upstream session (DELETE); a server that does not support it is fine."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self.session_id is None:
            return
        headers = [
            ("mcp-session-id", self.session_id),
            ("mcp-protocol-version", self.protocol_version),
            *self.upstream.headers,
        ]
        # Bounded well below the call timeout: a hung upstream must not hold up shutdown,
        # and the session ends with the gateway's either way.
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self.upstream.send("DELETE", headers, b"")

    def _check_status(self, response: Response) -> None:
        if response.status in (200, 202):
            return
        name = self.upstream.name
        if response.status == 404 and self.session_id is not None:
            raise UpstreamError(name, "the upstream no longer knows this session (HTTP 404)")
        excerpt = response.body[:200].decode("utf-8", "replace")
        raise UpstreamError(name, f"answered HTTP {response.status}: {excerpt}")

    async def _answer(self, response: Response, request_id: int) -> dict[str, Any]:
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if content_type == "application/json":
            messages = [self._decode(response.body)]
        elif content_type == "text/event-stream":
            messages = [self._decode(data) for data in sse_data(response.body)]
        else:
            raise UpstreamError(
                self.upstream.name, f"answered with content type {content_type or 'none'!r}"
            )
        answer = None
        for message in messages:
            if not isinstance(message, dict):
                continue
            if message.get("id") == request_id and ("result" in message or "error" in message):
                answer = message
            elif "id" not in message and self.on_notification is not None:
                await self.on_notification(message)
        if answer is not None:
            return answer
        raise UpstreamError(self.upstream.name, "the answer holds no response to the request")

    def _decode(self, data: bytes) -> Any:
        try:
            return _DECODER.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise UpstreamError(
                self.upstream.name, f"sent a message that is not JSON: {exc}"
            ) from exc
