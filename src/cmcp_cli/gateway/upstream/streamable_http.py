"""The gateway as an MCP client of its upstream servers (streamable HTTP).

Each client session gets its own upstream session, so no two agents ever share upstream
state. The gateway negotiates 2025-11-25 (or the newest revision the server offers back),
which servers built on the 1.x and 2.x official SDKs both speak.

A request's answer is either one JSON body (read whole, the fast path of every tool call)
or an SSE stream, read as it arrives: every message on it before the response belongs to
that request and goes to its `relay`, in order; the response ends it. Messages on the
session's own GET stream belong to no request and go to `on_notification`, requests of the
upstream included. A stream that ends or drops before the response, having carried event
ids, is resumed with GET and `Last-Event-ID` after the server's `retry` delay, a bounded
number of times; the GET stream is resumed the same way. The upstream timeout bounds the
wait for an answer's head and every silence on a stream, not a long call that streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from cmcp_cli.gateway.upstream.api import (
    CLOSE_TIMEOUT_SECONDS,
    ON_STREAM_PAUSED,
    UPSTREAM_PROTOCOL,
    MessageHandler,
    UpstreamError,
    UpstreamSessionLostError,
    answers,
    cancel_reason,
    decode_message,
    negotiate,
    unhandled,
)
from cmcp_cli.wire.http1 import (
    BodyStream,
    ConnectionPool,
    Endpoint,
    HttpError,
    HttpTimeoutError,
    Response,
)
from cmcp_cli.wire.jsonrpc import RequestId
from cmcp_cli.wire.sse import SseDecoder

RESUME_ATTEMPTS = 4  # reconnections in a row that fail before a stream is given up
DEFAULT_RETRY_SECONDS = 1.0  # before a reconnection, when the server named no delay
MIN_RETRY_SECONDS = 0.05
MAX_RETRY_SECONDS = 10.0
_SSE = frozenset({"text/event-stream"})
_LOG = logging.getLogger(__name__)


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

    async def open_session(
        self, *, capabilities: Mapping[str, Any] | None = None
    ) -> UpstreamSession:
        session = UpstreamSession(self, None, UPSTREAM_PROTOCOL)
        session.protocol_version = await negotiate(session, self.name, capabilities=capabilities)
        await session.notify("notifications/initialized")
        return session

    async def post(
        self, message: Mapping[str, Any], session: UpstreamSession, *, streamed: bool
    ) -> Response:
        headers = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", session.protocol_version),
            *self.headers,
        ]
        if session.session_id is not None:
            headers.append(("mcp-session-id", session.session_id))
        try:
            body = orjson.dumps(message)
        except orjson.JSONEncodeError as exc:
            raise UpstreamError(self.name, f"the message cannot be written as JSON: {exc}") from exc
        return await self.send("POST", headers, body, stream_types=_SSE if streamed else None)

    async def get_stream(self, session: UpstreamSession, last_event_id: str) -> Response:
        """The session's GET stream; with `last_event_id`, the stream that event was on,
        from the event after it."""
        headers = [("accept", "text/event-stream"), *session.headers()]
        if last_event_id:
            headers.append(("last-event-id", last_event_id))
        return await self.send("GET", headers, b"", stream_types=_SSE)

    async def send(
        self,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        stream_types: frozenset[str] | None = None,
    ) -> Response:
        try:
            return await self.pool.request(
                method,
                headers,
                body,
                timeout=self.timeout_seconds,
                max_body=self.max_response_bytes,
                stream_types=stream_types or frozenset(),
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
    on_notification: MessageHandler | None = None
    server_capabilities: Mapping[str, Any] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _listener: asyncio.Task[None] | None = None
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def headers(self) -> list[tuple[str, str]]:
        """The headers of every exchange after initialize, bar content negotiation."""
        headers = [("mcp-protocol-version", self.protocol_version), *self.upstream.headers]
        if self.session_id is not None:
            headers.append(("mcp-session-id", self.session_id))
        return headers

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        relay: MessageHandler | None = None,
    ) -> dict[str, Any]:
        """Send a request; the JSON-RPC response object (with `result` or `error`)."""
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = dict(params)
        try:
            response = await self.upstream.post(message, self, streamed=True)
            self._learn_session(response)
            if response.stream is not None:
                return await self._follow(response.stream, request_id, method, relay)
            return self._plain_answer(response, request_id)
        except asyncio.CancelledError as exc:
            if method != "initialize":  # the one request a client may not cancel
                self._cancel(request_id, cancel_reason(exc))
            raise
        except UpstreamError as exc:
            if exc.timed_out and method != "initialize":
                self._cancel(request_id, "the gateway's upstream timeout expired")
            raise

    def _plain_answer(self, response: Response, request_id: int) -> dict[str, Any]:
        self._check_status(response)
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise UpstreamError(
                self.upstream.name, f"answered with content type {media or 'none'!r}"
            )
        answer = decode_message(self.upstream.name, response.body)
        if isinstance(answer, dict) and answers(answer, request_id):
            return answer
        raise UpstreamError(self.upstream.name, "the answer holds no response to the request")

    async def respond(self, request_id: RequestId, answer: Mapping[str, Any]) -> None:
        """Answer a request the upstream sent: `answer` is {"result": ...} or {"error": ...}."""
        self._check_status(
            await self.upstream.post(
                {"jsonrpc": "2.0", "id": request_id, **answer}, self, streamed=False
            )
        )

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = dict(params)
        self._check_status(await self.upstream.post(message, self, streamed=False))

    async def listen(self) -> None:
        """Follow the upstream's own stream (GET) in the background, returning once it is
        open (or refused, or not open within the upstream's timeout); an upstream that
        offers none (405) has none to give."""
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

    async def close(self) -> None:
        """End the upstream session (DELETE), once cancellations under way have gone out
        (bounded); a server that does not support DELETE is fine."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._background:
            await asyncio.wait(set(self._background), timeout=CLOSE_TIMEOUT_SECONDS)
        if self.session_id is None:
            return
        # Bounded well below the call timeout: a hung upstream must not hold up shutdown,
        # and the session ends with the gateway's either way.
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self.upstream.send("DELETE", self.headers(), b"")

    async def _listen(self, on_open: Callable[[], None]) -> None:
        # Reopened when it ends: with Last-Event-ID once an event carried an id (the
        # server replays what was missed), else plainly. Given up after RESUME_ATTEMPTS
        # reopenings in a row that failed or brought nothing, or at a refusal.
        decoder = SseDecoder(max_event_bytes=self.upstream.max_response_bytes)
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            try:
                stream = await self._reopen(decoder.last_event_id)
            except UpstreamError as exc:
                stream = None
                if failures == 0 or isinstance(exc, UpstreamSessionLostError):
                    _LOG.debug("%s; its own stream is not followed", exc)
                    return  # refused (405), or unreachable at the start, or forgotten
            if stream is not None:
                on_open()
                stream.idle_timeout = None  # a quiet session is not a failure
                opened, before = loop.time(), decoder.last_event_id
                try:
                    await self._pump(stream, decoder, None, None)
                except UpstreamError as exc:  # not JSON, or too large: not to be resumed
                    _LOG.warning("%s; its own stream is no longer followed", exc)
                    return
                lasted = loop.time() - opened >= self.upstream.timeout_seconds
                if lasted or decoder.last_event_id != before:
                    failures = 0
            if failures >= RESUME_ATTEMPTS:
                return
            failures += 1
            await asyncio.sleep(_retry_delay(decoder))

    async def _follow(
        self, stream: BodyStream, request_id: int, method: str, relay: MessageHandler | None
    ) -> dict[str, Any]:
        decoder = SseDecoder(max_event_bytes=self.upstream.max_response_bytes)
        failures = 0
        current: BodyStream | None = stream
        while True:
            if current is not None:
                answer = await self._pump(current, decoder, request_id, relay)
                if answer is not None:
                    return answer
            if not decoder.last_event_id:
                raise UpstreamError(
                    self.upstream.name, f"its stream ended before the response to {method}"
                )
            if failures >= RESUME_ATTEMPTS:
                raise UpstreamError(
                    self.upstream.name,
                    f"its stream for {method} could not be resumed "
                    f"({RESUME_ATTEMPTS} reconnections failed)",
                )
            paused = ON_STREAM_PAUSED.get()
            if paused is not None and current is not None:
                await paused()
            failures += 1
            await asyncio.sleep(_retry_delay(decoder))
            try:
                current = await self._reopen(decoder.last_event_id)
            except UpstreamSessionLostError:
                raise
            except UpstreamError as exc:
                _LOG.debug("resuming %s: %s", method, exc)
                current = None
            else:
                failures = 0

    async def _reopen(self, last_event_id: str) -> BodyStream:
        response = await self.upstream.get_stream(self, last_event_id)
        if response.stream is None:
            self._check_status(response)
            raise UpstreamError(self.upstream.name, "answered a GET with no event stream")
        return response.stream

    async def _pump(
        self,
        stream: BodyStream,
        decoder: SseDecoder,
        request_id: int | None,
        relay: MessageHandler | None,
    ) -> dict[str, Any] | None:
        """Hand on each message of `stream` until the response to `request_id` (returned)
        or the stream's end or drop (None); the stream is released either way."""
        try:
            while chunk := await stream.read():
                for event in decoder.feed(chunk):
                    message = decode_message(self.upstream.name, event.data)
                    if not isinstance(message, dict):
                        continue
                    if isinstance(message.get("method"), str):
                        await self._deliver(message, relay)
                    elif request_id is not None and answers(message, request_id):
                        stream.finish()
                        return message
        except HttpTimeoutError as exc:
            raise UpstreamError(self.upstream.name, str(exc), timed_out=True) from exc
        except HttpError as exc:
            _LOG.debug("upstream %r: %s", self.upstream.name, exc)
        except ValueError as exc:  # an event past max_response_size_bytes
            raise UpstreamError(self.upstream.name, f"sent too much: {exc}") from exc
        finally:
            stream.close()
        return None

    async def _deliver(self, message: dict[str, Any], relay: MessageHandler | None) -> None:
        handler = relay or self.on_notification
        if handler is None:
            if "id" in message:
                await self._respond_quietly(message["id"], unhandled(message))
            return
        try:
            await handler(message)
        except Exception:  # noqa: BLE001 - a failing handler is logged; the conversation goes on
            _LOG.exception("upstream %r: the message handler failed", self.upstream.name)

    async def _respond_quietly(self, request_id: RequestId, answer: Mapping[str, Any]) -> None:
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self.respond(request_id, answer)

    def _cancel(self, request_id: int, reason: str) -> None:
        """Tell the upstream, in the background and bounded, that a request was given up."""
        params = {"requestId": request_id, "reason": reason}
        self._spawn(self._quietly(self.notify("notifications/cancelled", params)))

    async def _quietly(self, work: Coroutine[Any, Any, None]) -> None:
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await work

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _learn_session(self, response: Response) -> None:
        if self.session_id is None and "mcp-session-id" in response.headers:
            self.session_id = response.headers["mcp-session-id"]

    def _check_status(self, response: Response) -> None:
        if response.status in (200, 202):
            return
        name = self.upstream.name
        if response.status == 404 and self.session_id is not None:
            raise UpstreamSessionLostError(
                name, "the upstream no longer knows this session (HTTP 404); open a new one"
            )
        excerpt = response.body[:200].decode("utf-8", "replace")
        raise UpstreamError(name, f"answered HTTP {response.status}: {excerpt}")


def _retry_delay(decoder: SseDecoder) -> float:
    if decoder.retry is None:
        return DEFAULT_RETRY_SECONDS
    return min(max(decoder.retry / 1000, MIN_RETRY_SECONDS), MAX_RETRY_SECONDS)
