"""The SSE decoder against the WHATWG event-stream rules, whole and split at every byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmcp_cli.wire.sse import SseDecoder, SseEvent, sse_data

PRIMING = b"id: 1\ndata:\nretry: 200\n\n"
# The WHATWG standard's own examples (section "Event stream interpretation").
STOCK = b"data: YHOO\ndata: +2\ndata: 10\n\n"
FIELDS = (
    b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
)
SPACES = b"data:test\n\ndata: test\n\n"
MIXED = (
    b"\xef\xbb\xbf: comment\r\nevent: add\r\ndata: 73857293\r\n\r\n"
    b"event: remove\rdata: 2153\r\rdata\ndata\n\nretry: 1500\nretry: 1.5\nid: a\x00b\n"
    b'data: {"x": 1}\n\ndata: cut off at the end'
)


def decode(body: bytes, cuts: list[int] | None = None) -> tuple[list[SseEvent], SseDecoder]:
    decoder = SseDecoder(max_event_bytes=1 << 16)
    events: list[SseEvent] = []
    start = 0
    for cut in [*(cuts or []), len(body)]:
        events.extend(decoder.feed(body[start:cut]))
        start = cut
    return events, decoder


def test_multi_line_data_is_joined_with_lf() -> None:
    (event,), _ = decode(STOCK)
    assert event == SseEvent(b"YHOO\n+2\n10", "message", "", None)


def test_ids_comments_and_one_leading_space() -> None:
    events, decoder = decode(FIELDS)
    assert [(e.data, e.last_event_id) for e in events] == [
        (b"first event", "1"),
        (b"second event", ""),  # a bare `id` resets the last event id
        (b" third event", ""),  # only one space is stripped
    ]
    assert decoder.last_event_id == ""
    assert [e.data for e in decode(SPACES)[0]] == [b"test", b"test"]


def test_line_ends_bom_types_retry_nul_ids_and_an_unfinished_event() -> None:
    events, decoder = decode(MIXED)
    assert [(e.data, e.event) for e in events] == [
        (b"73857293", "add"),
        (b"2153", "remove"),
        (b"\n", "message"),  # two empty data lines: a single LF
        (b'{"x": 1}', "message"),
    ]
    assert events[-1].retry == 1500  # "1.5" is not all digits: ignored
    assert decoder.retry == 1500
    assert events[-1].last_event_id == ""  # an id holding NUL is ignored
    # the last event has no blank line after it: it is never dispatched


def test_a_priming_event_is_remembered_not_dispatched() -> None:
    events, decoder = decode(PRIMING)
    assert events == []
    assert (decoder.last_event_id, decoder.retry) == ("1", 200)
    body = PRIMING + b'id: 2\ndata: {"jsonrpc": "2.0"}\n\n'
    (event,), decoder = decode(body)
    assert event == SseEvent(b'{"jsonrpc": "2.0"}', "message", "2", 200)
    assert sse_data(b"data:\n\nevent: x\n\n" + body) == [b'{"jsonrpc": "2.0"}']


def test_a_cr_ending_one_chunk_and_an_lf_opening_the_next_are_one_line_end() -> None:
    decoder = SseDecoder(max_event_bytes=100)
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [SseEvent(b"a\nb", "message", "", None)]
    assert decoder.feed(b"\n") == []  # the LF after that CR: not a second blank line


def test_an_event_larger_than_the_bound_is_refused() -> None:
    decoder = SseDecoder(max_event_bytes=10)
    decoder.feed(b"data: 12345\n")
    with pytest.raises(ValueError, match="larger than 10 bytes"):
        decoder.feed(b"data: 67890\n")
    with pytest.raises(ValueError, match="larger than 10 bytes"):
        SseDecoder(max_event_bytes=10).feed(b"data: a line with no end yet")


@pytest.mark.parametrize("body", [STOCK, FIELDS, SPACES, MIXED, PRIMING + STOCK])
def test_every_split_point_gives_the_same_events(body: bytes) -> None:
    whole = decode(body)
    for cut in range(len(body) + 1):
        events, decoder = decode(body, [cut])
        assert events == whole[0], cut
        assert (decoder.last_event_id, decoder.retry) == (
            whole[1].last_event_id,
            whole[1].retry,
        )


@given(st.data())
def test_any_chunking_gives_the_same_events(data: st.DataObject) -> None:
    body = data.draw(st.sampled_from([MIXED, FIELDS + PRIMING + STOCK]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    assert decode(body, cuts)[0] == decode(body)[0]


def test_a_long_line_in_many_small_chunks_is_one_event() -> None:
    payload = b"x" * 300_000
    body = b"id: 7\ndata: " + payload + b"\r\n\r\n"
    decoder = SseDecoder(max_event_bytes=len(payload) + 10)
    events = [e for i in range(0, len(body), 1000) for e in decoder.feed(body[i : i + 1000])]
    assert events == [SseEvent(payload, "message", "7", None)]
    small = SseDecoder(max_event_bytes=len(payload) - 1)
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    with pytest.raises(ValueError, match="larger than"):
        [small.feed(chunk) for chunk in chunks]  # fed until it refuses
