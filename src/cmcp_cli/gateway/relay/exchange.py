"""What one client session has in flight, and the events it was sent.

- Flights: the client's requests being answered, by the client's request id, each with
  the task answering it (so `notifications/cancelled` and session close can cancel it)
  and the response it streams on.
- Pending: requests an upstream sent the client (sampling, elicitation, roots), under a
  gateway-assigned id `cmcp-<n>` that is unique in the session, so the answers of two
  upstreams can never be confused; the answer is routed back by that id alone.
- Channels and a replay buffer: every server-sent event carries an id `<stream>-<seq>`;
  the most recent events are kept (bounded by count and bytes) so a client that lost a
  stream can resume it with `Last-Event-ID`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from cmcp_cli.gateway.enforcement.messages import Gate
from cmcp_cli.gateway.upstream.api import UpstreamConversation
from cmcp_cli.wire.jsonrpc import RequestId

GET_STREAM = "g"  # the session's own stream (GET); POST streams are "p<n>"
REPLAY_EVENTS = 256
REPLAY_BYTES = 1024 * 1024  # per session: with limits.max_sessions, the bound of all
STREAM_BACKLOG = 64  # events queued for a stream reader that is not keeping up
RETRY_MS = 250  # how long a client waits before it resumes a stream the gateway closed


class Outlet(Protocol):
    """The response of a request in flight, as the relay writes to it."""

    async def deliver(self, message: dict[str, Any]) -> bool:
        """Send `message` to the client before the request's answer; False when this
        response cannot carry it (the client accepts JSON only)."""
        ...

    async def pause(self) -> None:
        """The upstream closed the request's stream, to be resumed: close this response
        the same way when the client can resume it (what follows is kept for that)."""
        ...


@dataclass(eq=False)
class Flight:
    """A client request being answered."""

    request_id: RequestId
    task: asyncio.Task[Any] | None
    outlet: Outlet | None
    call_id: str | None = None  # a tool call's id, once it has one
    cancel_reason: str | None = None
    cancellable: bool = True  # False once the upstream's answer is in hand
    # Governed messages it forwarded whose outcome or fault is not recorded yet: if it is
    # cancelled, each gets its fault (a tool call's is recorded by its `call_id`).
    gates: list[Gate] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # its records are durable

    def cancel(self, reason: str) -> bool:
        """Cancel the answering task; False when it is past cancelling or finished."""
        if (
            not self.cancellable
            or self.cancel_reason is not None
            or self.task is None
            or self.task.done()
        ):
            return False
        self.cancel_reason = reason
        self.task.cancel()
        return True


@dataclass(eq=False)
class Pending:
    """A request an upstream sent, relayed to the client and awaiting its answer."""

    gateway_id: str
    upstream: str
    conversation: UpstreamConversation
    upstream_id: RequestId
    gate: Gate | None
    flight: Flight | None


@dataclass(frozen=True, slots=True)
class Event:
    stream: str
    seq: int
    chunk: bytes  # the event as written
    final: bool  # the last event of its stream


Writer = Callable[[bytes], Awaitable[bool]]  # writes one event; False once the client left


@dataclass(eq=False)
class Channel:
    """One SSE stream of the session: written to directly while its response is open
    (`writer`), else fed to the reader that resumed it (`queue`), else only kept."""

    name: str
    seq: int = 0
    writer: Writer | None = None
    queue: asyncio.Queue[bytes | None] | None = None
    finished: bool = False


class ReplayBuffer:
    """The session's most recent events, oldest dropped first past either bound."""

    def __init__(self, max_events: int = REPLAY_EVENTS, max_bytes: int = REPLAY_BYTES) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: deque[Event] = deque()
        self._bytes = 0
        self._dropped: dict[str, int] = {}  # stream -> the highest seq evicted from the buffer

    def add(self, event: Event) -> None:
        self._events.append(event)
        self._bytes += len(event.chunk)
        while self._events and (
            len(self._events) > self.max_events or self._bytes > self.max_bytes
        ):
            old = self._events.popleft()
            self._bytes -= len(old.chunk)
            self._dropped[old.stream] = old.seq
        if len(self._dropped) > self.max_events:  # forget streams long gone
            kept = {e.stream for e in self._events}
            self._dropped = {s: n for s, n in self._dropped.items() if s in kept}

    def after(self, stream: str, seq: int) -> list[Event] | None:
        """The kept events of `stream` after `seq`; None when some of them were dropped."""
        if self._dropped.get(stream, 0) > seq:
            return None
        return [e for e in self._events if e.stream == stream and e.seq > seq]

    def knows(self, stream: str) -> bool:
        return stream in self._dropped or any(e.stream == stream for e in self._events)


def priming_event(channel: Channel) -> bytes:
    """The first event of a resumable POST stream: an id the client can resume from even
    before any message, and how long to wait before it reconnects."""
    return f"id: {channel.name}-0\nretry: {RETRY_MS}\ndata:\n\n".encode()


def encode_event(message: dict[str, Any], event_id: str | None) -> bytes:
    data = orjson.dumps(message)
    if event_id is None:
        return b"event: message\ndata: " + data + b"\n\n"
    return b"id: " + event_id.encode() + b"\nevent: message\ndata: " + data + b"\n\n"


class Exchange:
    """A session's flights, pending server requests, streams and replay buffer."""

    def __init__(self, *, resumable: bool = True) -> None:
        self.resumable = resumable  # 2026-07-28 streams carry no event ids
        self.flights: dict[RequestId, Flight] = {}
        self.pending: dict[str, Pending] = {}
        self.replay = ReplayBuffer()
        self.channels: dict[str, Channel] = {}
        self.notices: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_BACKLOG)
        self.channels[GET_STREAM] = Channel(GET_STREAM, queue=self.notices)
        self._streams = itertools.count(1)
        self._gateway_ids = itertools.count(1)

    # Flights -----------------------------------------------------------------------

    def begin(self, request_id: RequestId, outlet: Outlet | None) -> Flight:
        flight = Flight(request_id, asyncio.current_task(), outlet)
        self.flights[request_id] = flight
        return flight

    def end(self, flight: Flight) -> None:
        if self.flights.get(flight.request_id) is flight:
            del self.flights[flight.request_id]
        flight.done.set()

    # Server-to-client requests -----------------------------------------------------

    def next_gateway_id(self) -> str:
        return f"cmcp-{next(self._gateway_ids)}"

    def take_pending(self, conversation: UpstreamConversation | None = None) -> list[Pending]:
        """Remove and return the pending requests (of one conversation, or all)."""
        taken = [
            p
            for p in self.pending.values()
            if conversation is None or p.conversation is conversation
        ]
        for pending in taken:
            del self.pending[pending.gateway_id]
        return taken

    # Streams -----------------------------------------------------------------------

    def open_channel(self, writer: Writer) -> Channel:
        channel = Channel(f"p{next(self._streams)}", writer=writer)
        self.channels[channel.name] = channel
        return channel

    def _record(self, channel: Channel, message: dict[str, Any] | None, final: bool) -> bytes:
        if message is None:
            return b""
        channel.seq += 1
        if not self.resumable:
            return encode_event(message, None)
        chunk = encode_event(message, f"{channel.name}-{channel.seq}")
        self.replay.add(Event(channel.name, channel.seq, chunk, final))
        return chunk

    async def emit(self, channel: Channel, message: dict[str, Any], *, final: bool = False) -> None:
        """Send one event on a POST stream (recorded for replay first)."""
        chunk = self._record(channel, message, final)
        if channel.writer is not None and not await channel.writer(chunk):
            channel.writer = None
        elif channel.writer is None and channel.queue is not None:
            _offer(channel.queue, chunk)
        if final:
            self.finish(channel)

    def finish(self, channel: Channel) -> None:
        channel.finished = True
        channel.writer = None
        if channel.queue is not None and channel.name != GET_STREAM:
            _offer(channel.queue, None, force=True)
        self.channels.pop(channel.name, None)

    def close(self) -> None:
        """End every stream of the session: its readers get the end marker."""
        for channel in list(self.channels.values()):
            if channel.name != GET_STREAM:
                self.finish(channel)
        self.publish(None)

    def publish(self, message: dict[str, Any] | None) -> None:
        """Queue a message (or, None, the end) for the session's GET stream."""
        channel = self.channels[GET_STREAM]
        _offer(self.notices, self._record(channel, message, False) or None, force=message is None)

    def resume(self, last_event_id: str) -> tuple[list[bytes], Channel | None] | None:
        """The events after `last_event_id` and, when its stream is still open, that
        stream, now fed to the caller's queue (`channel.queue`). None when the id is not
        one this session can continue from (unknown, or events after it were dropped)."""
        stream, _, number = last_event_id.rpartition("-")
        if not self.resumable or not number.isdigit():
            return None
        live = self.channels.get(stream)
        if live is None and not self.replay.knows(stream):
            return None
        events = self.replay.after(stream, int(number))
        if events is None:
            return None
        chunks = [e.chunk for e in events]
        if live is None or (events and events[-1].final):
            return chunks, None
        if live.name == GET_STREAM:
            while not self.notices.empty():  # queued ones are among the replayed
                self.notices.get_nowait()
            return chunks, live
        live.writer = None  # the client left that response: continue on this one
        live.queue = asyncio.Queue()  # one request's events: the reader drains them
        return chunks, live


def _offer(queue: asyncio.Queue[bytes | None], item: bytes | None, *, force: bool = False) -> None:
    """Queue without waiting; a full queue drops the item (the client can resume from
    the replay buffer), except an end marker, which always fits."""
    if force:
        while queue.full():
            queue.get_nowait()
    if not queue.full():
        queue.put_nowait(item)
