"""Server-sent events (text/event-stream), parsed as the WHATWG HTML standard says.

The rules that matter to an MCP client, all followed here:

- lines end in CRLF, CR or LF; a CR that ends one chunk and an LF that starts the next are
  one line end; a UTF-8 byte order mark at the very start of the stream is dropped;
- a line that starts with `:` is a comment; `field: value` loses one space after the colon;
  a line without a colon is a field with an empty value; unknown fields are ignored;
- `data` lines are joined with LF; `event` sets the type; `id` sets the last event id
  (unless its value holds NUL); `retry` (ASCII digits only) sets the reconnection delay;
- a blank line ends an event. The stream's last event id takes the event's id even when
  the event is not dispatched, and an event with no data is NOT dispatched. Nor is one
  whose data is the empty string (a single empty `data:` line), which a browser would hand
  to its page but which carries no JSON-RPC message: the priming event of a resumable MCP
  server (`id: 1`, an empty `data:`, `retry: 200`) yields nothing but a remembered id and
  reconnection delay;
- an event still open when the stream ends is discarded.

Events are bounded in size (`max_event_bytes`), so a stream cannot grow memory without end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: bytes  # data lines joined with LF
    event: str  # the type: "message" unless an `event` field said otherwise
    last_event_id: str  # the stream's last event id as this event was dispatched
    retry: int | None  # the reconnection delay (ms) the stream asked for so far, if any


def sse_data(body: bytes) -> list[bytes]:
    """The data of each event dispatched from a whole text/event-stream body."""
    decoder = SseDecoder(max_event_bytes=len(body) + 1)
    return [event.data for event in decoder.feed(body)]


class SseDecoder:
    """Events of a text/event-stream fed in arbitrary chunks. An event (its pending line
    and data) larger than `max_event_bytes` raises ValueError."""

    def __init__(self, *, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        self.last_event_id = ""  # what a reconnection sends as Last-Event-ID
        self.retry: int | None = None  # milliseconds
        self._pending: list[bytes] = []  # an unterminated line, in the chunks it came in
        self._pending_size = 0
        self._at_start = True  # a BOM may still come
        self._skip_lf = False  # the last chunk ended in CR
        self._data: list[bytes] = []
        self._size = 0  # bytes in `_data`
        self._event = ""
        self._id_buffer = ""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._at_start:
            chunk = b"".join([*self._pending, chunk])
            self._pending, self._pending_size = [], 0
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._keep(chunk)
                return []
            self._at_start = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if b"\n" not in chunk and b"\r" not in chunk:  # a long line arriving: no copy yet
            self._keep(chunk)
            return []
        text = b"".join([*self._pending, chunk]) if self._pending else chunk
        *lines, rest = _LINE_END.split(text)
        self._pending, self._pending_size = [], 0
        self._keep(rest)
        if text.endswith(b"\r"):
            self._skip_lf = True  # an LF that opens the next chunk ends no second line
        events: list[SseEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._check_size()
        return events

    def _keep(self, part: bytes) -> None:
        if part:
            self._pending.append(part)
            self._pending_size += len(part)
            self._check_size()

    def _check_size(self) -> None:
        if self._pending_size + self._size > self.max_event_bytes:
            raise ValueError(f"an event is larger than {self.max_event_bytes} bytes")

    def _line(self, line: bytes) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line[:1] == b":":
            return None
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self.max_event_bytes:
                raise ValueError(f"an event is larger than {self.max_event_bytes} bytes")
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id_buffer = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():  # bytes.isdigit: ASCII digits only
            self.retry = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        self.last_event_id = self._id_buffer
        data, event = self._data, self._event
        self._data, self._size, self._event = [], 0, ""
        if not data or data == [b""]:
            return None
        return SseEvent(b"\n".join(data), event or "message", self.last_event_id, self.retry)
