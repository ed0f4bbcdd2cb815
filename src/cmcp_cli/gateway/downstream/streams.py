"""Responses to the client: one JSON body, or a stream of server-sent events.

A POST's response is undecided until the relay has something for it. Its answer alone
goes back as `application/json`; a message the upstream sends while the request is in
flight (progress, a log message, a request of its own) switches the response to
`text/event-stream` when the client accepts it: each message is one event, the answer
the last, then the stream ends. Every event is recorded in the session's replay buffer
under its id, so a client that lost the response resumes it with a GET carrying
`Last-Event-ID` (see `serve_events`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from cmcp_cli.gateway.relay.exchange import Channel, Exchange, priming_event
from cmcp_cli.wire import asgi
from cmcp_cli.wire.asgi import Receive, Scope, Send
from cmcp_cli.wire.jsonrpc import RequestId

_Event = TypeVar("_Event")
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
KEEPALIVE_CHUNK = b": keepalive\n\n"


def accepts_events(scope: Scope) -> bool:
    accept = asgi.header(scope, b"accept") or ""
    return "text/event-stream" in accept or "*/*" in accept


def prefers_events(scope: Scope) -> bool:
    """Whether the client ranks a stream above JSON: by q-value, then by the order it
    lists them (`Accept: text/event-stream, application/json`)."""
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((asgi.header(scope, b"accept") or "").split(",")):
        media, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media.lower() in ("text/event-stream", "application/json") and quality > 0:
            ranked.append((-quality, position, media.lower()))
    return bool(ranked) and min(ranked)[2] == "text/event-stream"


class ResponseStream:
    """The response to one POST, as the relay writes to it (`deliver`) and the app ends
    it (`finish`). Until something is delivered it costs nothing: no task, no copy."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self.exchange: Exchange | None = None  # the session's, once the request has one
        # Without a session-era session (2026-07-28, plain calls), a client cancels a
        # request by closing its response stream.
        self.cancels: RequestId | None = None
        self.headers: dict[str, str] = {}  # sent with a stream's start
        self.channel: Channel | None = None
        self._gone = False
        self._watcher: asyncio.Task[None] | None = None

    async def deliver(self, message: dict[str, Any]) -> bool:
        channel = await self._stream()
        if channel is None or self.exchange is None:
            return False
        await self.exchange.emit(channel, message)
        return True

    async def _stream(self) -> Channel | None:
        """This response as a stream of events, started now if it is not yet; None when
        the client does not accept one."""
        if self.channel is not None or self.exchange is None:
            return self.channel
        if not accepts_events(self._scope):
            return None
        self.channel = self.exchange.open_channel(self._write)
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        start = {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + extra}
        await self._send(start)
        if self.exchange.resumable:
            await self._write(priming_event(self.channel))
        self._watcher = asyncio.create_task(self._watch())
        return self.channel

    async def pause(self) -> None:
        """End this response before the answer, as the upstream ended its own: the client
        resumes it with a GET carrying Last-Event-ID (the priming event's id at least),
        and what follows, the answer too, is kept for that. Only on a stream that can be
        resumed; otherwise the response stays open for the answer."""
        if self._gone or self.exchange is None or not self.exchange.resumable:
            return
        channel = await self._stream()
        if channel is None:
            return
        if self._watcher is not None:
            self._watcher.cancel()  # the client leaving now cancels nothing: it resumes
        self._gone = True
        channel.writer = None
        with contextlib.suppress(OSError, RuntimeError, asgi.ClientGoneError):
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def finish(
        self,
        status: int,
        message: dict[str, Any] | None,
        headers: Mapping[str, str],
        *,
        streamed: bool = False,
    ) -> None:
        """Send the answer: the whole JSON response, or the stream's last event. With
        `streamed`, as an event even when nothing came before it (an SDK client that is
        leaving its session reads a late answer on a stream without failing, but not a
        late JSON body); so too when a client of a resumable session prefers a stream."""
        channel = self.channel
        wanted = streamed or (
            self.exchange is not None and self.exchange.resumable and prefers_events(self._scope)
        )
        if channel is None and wanted and message is not None and status == 200:
            channel = await self._stream()
        if channel is None or self.exchange is None:
            if message is None:
                await asgi.send_bytes(self._send, status, b"", headers=headers)
            else:
                await asgi.send_json(self._send, status, message, headers=headers)
            return
        try:
            if message is None:
                self.exchange.finish(channel)
            else:
                await self.exchange.emit(channel, message, final=True)
            if not self._gone:
                await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if self._watcher is not None:
                self._watcher.cancel()

    async def _write(self, chunk: bytes) -> bool:
        if self._gone:
            return False
        try:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (OSError, RuntimeError, asgi.ClientGoneError):
            self._gone = True  # the event is kept for a resumption all the same
        return not self._gone

    async def _watch(self) -> None:
        with contextlib.suppress(asgi.ClientGoneError):
            while (await self._receive())["type"] != "http.disconnect":
                pass
        self._gone = True
        flight = self.exchange.flights.get(self.cancels) if self.exchange and self.cancels else None
        if flight is not None and flight.outlet is self:
            flight.cancel("the client closed the response stream")


async def serve_events(
    send: Send,
    receive: Receive,
    events: asyncio.Queue[_Event | None] | None,
    *,
    encode: Callable[[_Event], bytes],
    replay: Sequence[bytes] = (),
    keepalive: float,
) -> None:
    """Serve `replay`, then what is queued on `events` (each written as `encode` makes it an
    event), as server-sent events until None is queued or the client leaves (a comment every
    `keepalive` seconds keeps idle proxies from closing the stream); without `events`, the
    replay alone."""
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    for chunk in replay:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    if events is None:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    gone = asyncio.create_task(_disconnected(receive))
    try:
        while True:
            following = asyncio.create_task(events.get())
            done, _ = await asyncio.wait(
                {following, gone}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED
            )
            if gone in done:
                following.cancel()
                return
            if following not in done:
                following.cancel()
                chunk = KEEPALIVE_CHUNK
            elif (event := following.result()) is None:
                break
            else:
                chunk = encode(event)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        gone.cancel()


def as_is(chunk: bytes) -> bytes:
    """For a queue of events already written as server-sent events."""
    return chunk


def message_event(message: dict[str, Any]) -> bytes:
    """A JSON-RPC message as an event without an id (a stream that is not resumed)."""
    return b"event: message\ndata: " + asgi.encode_json(message)[0] + b"\n\n"


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
