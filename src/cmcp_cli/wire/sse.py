"""Server-sent events (text/event-stream) as MCP streams carry them."""

from __future__ import annotations


def sse_data(body: bytes) -> list[bytes]:
    """The data of each event in a text/event-stream body, multi-line data joined."""
    decoder = SseDecoder(max_event_bytes=len(body) + 1)
    return [*decoder.feed(body), *decoder.feed(b"\n\n")]


class SseDecoder:
    """Events of a text/event-stream fed in arbitrary chunks: each event's data, with
    multi-line data joined. An event larger than `max_event_bytes` is an error, so a
    stream cannot grow the gateway's memory without bound."""

    def __init__(self, *, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        self._pending = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        text = (self._pending + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, self._pending = text.split(b"\n")
        if len(self._pending) + sum(map(len, self._data)) > self.max_event_bytes:
            raise ValueError(f"an event is larger than {self.max_event_bytes} bytes")
        events: list[bytes] = []
        for raw in lines:
            if not raw:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif raw.startswith(b"data:"):
                value = raw[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events
