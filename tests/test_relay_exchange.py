"""The relay's per-session state on its own: event ids, the bounded replay buffer, what
`Last-Event-ID` resumes, flights and their cancellation; and the recorder that refuses
any entry after session_end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cmcp_cli.audit.recorder import ChainEndedError, SessionRecorder
from cmcp_cli.audit.store import AuditStore
from cmcp_cli.gateway.downstream.streams import prefers_events
from cmcp_cli.gateway.relay.exchange import (
    GET_STREAM,
    RETRY_MS,
    Event,
    Exchange,
    ReplayBuffer,
    priming_event,
)
from cmcp_cli.wire.asgi import Scope
from cmcp_cli.wire.sse import SseDecoder, SseEvent


def _note(n: int) -> dict[str, object]:
    return {"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": n}}


def test_the_replay_buffer_is_bounded_and_knows_what_it_dropped() -> None:
    buffer = ReplayBuffer(max_events=3, max_bytes=10_000)
    for seq in range(1, 6):
        buffer.add(Event("p1", seq, b"x" * 10, final=False))
    assert [e.seq for e in buffer.after("p1", 2) or []] == [3, 4, 5]
    assert buffer.after("p1", 1) is None  # seq 2 was dropped: no silent gap
    by_bytes = ReplayBuffer(max_events=100, max_bytes=25)
    for seq in range(1, 4):
        by_bytes.add(Event("p1", seq, b"y" * 10, final=False))
    assert [e.seq for e in by_bytes.after("p1", 1) or []] == [2, 3]
    assert by_bytes.after("p1", 0) is None


def test_a_post_stream_resumes_after_its_last_event_and_ends_with_the_answer() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes | None]]:
        exchange = Exchange()
        written: list[bytes] = []

        async def writer(chunk: bytes) -> bool:
            written.append(chunk)
            return len(written) < 2  # the client leaves after the second event

        channel = exchange.open_channel(writer)
        for n in range(1, 4):
            await exchange.emit(channel, _note(n))
        assert b"id: p1-1\n" in written[0]
        resumed = exchange.resume("p1-1")
        assert resumed is not None
        replay, live = resumed
        assert live is channel and live.queue is not None
        await exchange.emit(channel, {"jsonrpc": "2.0", "id": 7, "result": {}}, final=True)
        queued: list[bytes | None] = []
        while not live.queue.empty():
            queued.append(live.queue.get_nowait())
        return replay, queued

    replay, queued = asyncio.run(scenario())
    assert [json.loads(c.split(b"data: ")[1])["params"]["n"] for c in replay] == [2, 3]
    assert queued[-1] is None  # the stream ends after the answer
    final = queued[0]
    assert final is not None and b"id: p1-4\n" in final and b'"id":7' in final


def test_resuming_a_finished_stream_replays_to_its_answer_and_unknown_ids_are_refused() -> None:
    async def scenario() -> None:
        exchange = Exchange()

        async def gone(_: bytes) -> bool:
            return False

        channel = exchange.open_channel(gone)
        await exchange.emit(channel, _note(1))
        await exchange.emit(channel, {"jsonrpc": "2.0", "id": 1, "result": {}}, final=True)
        resumed = exchange.resume("p1-1")
        assert resumed is not None
        replay, live = resumed
        assert live is None and len(replay) == 1 and b'"result"' in replay[0]
        assert exchange.resume("p9-1") is None
        assert exchange.resume("nonsense") is None

    asyncio.run(scenario())


def test_the_get_stream_numbers_its_events_and_stateless_sessions_have_no_ids() -> None:
    async def scenario() -> None:
        exchange = Exchange()
        exchange.publish(_note(1))
        first = exchange.notices.get_nowait()
        assert first is not None and first.startswith(f"id: {GET_STREAM}-1\n".encode())
        modern = Exchange(resumable=False)
        modern.publish(_note(1))
        chunk = modern.notices.get_nowait()
        assert chunk is not None and chunk.startswith(b"event: message\n")
        assert modern.resume("g-0") is None

    asyncio.run(scenario())


def test_a_flight_is_cancelled_once_and_not_after_its_answer() -> None:
    async def scenario() -> list[str]:
        exchange = Exchange()
        seen: list[str] = []

        async def request() -> None:
            flight = exchange.begin(1, None)
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append(flight.cancel_reason or "?")
            finally:
                exchange.end(flight)

        task = asyncio.create_task(request())
        await asyncio.sleep(0)
        flight = exchange.flights[1]
        assert flight.cancel("by the client")
        assert not flight.cancel("again")
        await task
        assert flight.done.is_set() and 1 not in exchange.flights
        late = exchange.begin(2, None)
        late.cancellable = False
        assert not late.cancel("too late")
        return seen

    assert asyncio.run(scenario()) == ["by the client"]


def test_the_recorder_refuses_entries_after_session_end(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.db")
    try:
        recorder = SessionRecorder(store, "s-1")
        recorder.fault(error="before", stage="test")
        recorder.end({"reason": "closed"})
        with pytest.raises(ChainEndedError, match="after session_end"):
            recorder.fault(error="late", stage="test")
        assert recorder.state.next_seq == 2  # nothing was appended
    finally:
        store.close()


def test_a_priming_event_gives_an_id_to_resume_from_and_a_reconnection_delay() -> None:
    async def scenario() -> tuple[SseDecoder, list[SseEvent], list[bytes]]:
        exchange = Exchange()
        channel = exchange.open_channel(_refused)
        decoder = SseDecoder(max_event_bytes=10_000)
        dispatched = decoder.feed(priming_event(channel))
        await exchange.emit(channel, _note(1))  # written nowhere: the client has left
        resumed = exchange.resume(decoder.last_event_id)
        assert resumed is not None
        return decoder, dispatched, resumed[0]

    decoder, dispatched, replay = asyncio.run(scenario())
    assert dispatched == []  # no message: an id and a delay only
    assert (decoder.last_event_id, decoder.retry) == ("p1-0", RETRY_MS)
    assert [json.loads(c.split(b"data: ")[1])["params"]["n"] for c in replay] == [1]


async def _refused(chunk: bytes) -> bool:
    del chunk
    return False


@pytest.mark.parametrize(
    ("accept", "stream"),
    [
        ("text/event-stream, application/json", True),
        ("application/json, text/event-stream", False),
        ("application/json;q=0.5, text/event-stream", True),
        ("text/event-stream;q=0.2, application/json", False),
        ("application/json", False),
        ("text/event-stream", True),
        ("*/*", False),
    ],
)
def test_a_client_that_ranks_a_stream_first_gets_one(accept: str, stream: bool) -> None:
    scope: Scope = {"type": "http", "headers": [(b"accept", accept.encode())]}
    assert prefers_events(scope) is stream
