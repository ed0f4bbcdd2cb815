"""A small HTTP/1.1 client for upstream MCP servers: pooled keep-alive connections.

Upstream calls are on every tool call's path, so this is asyncio streams and h11 (the
parser hypercorn itself uses) with nothing else in between. Plain HTTP and HTTPS; every
exchange is bounded by a timeout and a response size limit.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

_READ_CHUNK = 64 * 1024
DRAIN_SECONDS = 1.0  # how long the rest of a body nobody reads may take to end
DRAIN_BYTES = 256 * 1024  # and how much of it is read, before its connection is closed


class HttpError(Exception):
    """The upstream could not be reached or answered with something that is not HTTP."""


class HttpTimeoutError(HttpError):
    pass


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    target: str  # path and query

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port, target)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes  # empty when the body is streamed
    # The body as it arrives, for a 200 whose content type the caller asked to stream; the
    # caller reads it to its end or closes it (then its connection is closed, not pooled).
    stream: BodyStream | None = None


class BodyStream:
    """A response body read chunk by chunk: each read bounded by `idle_timeout` (None: no
    bound), the connection back in its pool once the body ended, closed if it did not."""

    def __init__(
        self, pool: ConnectionPool, connection: _Connection, idle_timeout: float | None
    ) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self.idle_timeout = idle_timeout

    async def read(self) -> bytes:
        """The next chunk of the body; b"" once it has ended. HttpTimeoutError when nothing
        comes within the idle bound, HttpError when the connection ends before the body."""
        connection = self._connection
        if connection is None:
            return b""
        protocol = connection.protocol
        try:
            while True:
                event = protocol.next_event()
                if event is h11.NEED_DATA:
                    async with asyncio.timeout(self.idle_timeout):
                        protocol.receive_data(await connection.reader.read(_READ_CHUNK))
                elif isinstance(event, h11.Data):
                    if event.data:
                        return bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._connection = None
                    self._pool._release(connection)
                    return b""
                else:  # ConnectionClosed: the body had no end of its own
                    break
        except TimeoutError as exc:
            self.close()
            raise HttpTimeoutError(f"nothing arrived for {self.idle_timeout:g} s") from exc
        except (h11.ProtocolError, OSError) as exc:
            self.close()
            raise HttpError(f"the response body was cut off: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.close()
        raise HttpError("the upstream closed the connection mid-response")

    def finish(self) -> None:
        """Done with the body, whatever else it holds: its connection goes back to the pool
        once the body's end has arrived (read on in the background, bounded in time and
        bytes), and is closed if it does not."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._drain(connection)

    def close(self) -> None:
        """Drop the connection unless the body was read to its end."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.writer.close()

    @property
    def open(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def exchange(
        self,
        method: str,
        endpoint: Endpoint,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        max_body: int,
        stream_types: frozenset[str],
    ) -> tuple[Response, bool]:
        """The response and False; or its head and True, as soon as the head of a 200 of
        a content type in `stream_types` has arrived: its body is for the caller to read."""
        protocol = self.protocol
        request = h11.Request(
            method=method,
            target=endpoint.target,
            headers=[("host", endpoint.host_header), ("content-length", str(len(body))), *headers],
        )
        self.writer.write(
            protocol.send(request)
            + (protocol.send(h11.Data(data=body)) or b"")
            + (protocol.send(h11.EndOfMessage()) or b"")
        )
        await self.writer.drain()
        status = 0
        response_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        size = 0
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(_READ_CHUNK)
                protocol.receive_data(data)  # b"" tells h11 the peer closed
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    key = name.decode("latin-1").lower()
                    text = value.decode("latin-1")
                    response_headers[key] = (
                        f"{response_headers[key]}, {text}" if key in response_headers else text
                    )
                if stream_types and status == 200:
                    media = response_headers.get("content-type", "").split(";")[0]
                    if media.strip().lower() in stream_types:
                        return Response(status, response_headers, b""), True
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:
                    raise HttpError(f"the response is larger than {max_body} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Response(status, response_headers, b"".join(chunks)), False
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError("the upstream closed the connection mid-response")

    def reusable(self) -> bool:
        protocol = self.protocol
        if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()
            return True
        return False


class ConnectionPool:
    """Keep-alive connections to one upstream origin, reused most recent first."""

    def __init__(self, endpoint: Endpoint, *, max_idle: int = 32) -> None:
        self.endpoint = endpoint
        self._idle: deque[_Connection] = deque()
        self._max_idle = max_idle
        self._draining: set[asyncio.Task[None]] = set()
        self._closed = False
        self._tls: ssl.SSLContext | None = (
            ssl.create_default_context() if endpoint.scheme == "https" else None
        )

    @property
    def idle(self) -> int:
        """Connections kept open for the next exchange."""
        return len(self._idle)

    async def request(
        self,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        timeout: float,
        max_body: int,
        stream_types: frozenset[str] = frozenset(),
    ) -> Response:
        """One exchange, bounded by `timeout`. A 200 of a content type in `stream_types`
        comes back as soon as its head has: its `stream` yields the body, each read bounded
        by `timeout` again (an idle bound, not a total one)."""
        try:
            async with asyncio.timeout(timeout):
                return await self._request(
                    method,
                    headers,
                    body,
                    max_body=max_body,
                    stream_types=stream_types,
                    timeout=timeout,
                )
        except TimeoutError as exc:
            raise HttpTimeoutError(f"no answer within {timeout:g} s") from exc

    async def _request(
        self,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        max_body: int,
        stream_types: frozenset[str],
        timeout: float,
    ) -> Response:
        # Sent once, never retried: a tools/call that reached the upstream before the
        # connection failed may have run, and running it twice is not the gateway's call.
        connection = self._take_idle() or await self._connect()
        try:
            response, streamed = await connection.exchange(
                method, self.endpoint, headers, body, max_body=max_body, stream_types=stream_types
            )
        except h11.ProtocolError as exc:
            connection.close()
            raise HttpError(f"the upstream did not speak HTTP/1.1: {exc}") from exc
        except OSError as exc:
            connection.close()
            raise HttpError(f"the connection to {self.endpoint.host_header} failed: {exc}") from exc
        except BaseException:
            connection.close()
            raise
        if streamed:
            stream = BodyStream(self, connection, timeout)
            return Response(response.status, response.headers, b"", stream)
        self._release(connection)
        return response

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.open:
                return connection
            connection.close()  # the server closed it while it was idle
        return None

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(
                self.endpoint.host,
                self.endpoint.port,
                ssl=self._tls,
                server_hostname=self.endpoint.host if self._tls else None,
            )
        except OSError as exc:
            raise HttpError(
                f"cannot connect to {self.endpoint.host_header}: {exc.strerror or exc}"
            ) from exc
        return _Connection(reader, writer)

    def _release(self, connection: _Connection) -> None:
        if not self._closed and connection.reusable() and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def _drain(self, connection: _Connection) -> None:
        """Read what is left of a response body nobody wants, then pool the connection."""
        ended = _body_ended(connection.protocol)
        if ended is not None:  # its end (or its failure) came with the part that was read
            if ended:
                self._release(connection)
            else:
                connection.close()
            return
        task = asyncio.create_task(self._drained(connection))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drained(self, connection: _Connection) -> None:
        ended: bool | None = None
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                received = 0
                while ended is None and received <= DRAIN_BYTES:
                    data = await connection.reader.read(_READ_CHUNK)
                    received += len(data)
                    connection.protocol.receive_data(data)  # b"": the peer closed
                    ended = _body_ended(connection.protocol)
        except (TimeoutError, OSError):
            pass
        finally:
            if ended:
                self._release(connection)
            else:
                connection.close()

    def close(self) -> None:
        self._closed = True
        for task in self._draining:
            task.cancel()
        while self._idle:
            self._idle.pop().close()


def _body_ended(protocol: h11.Connection) -> bool | None:
    """Whether the body being read has ended (True), cannot end (False: cut off, or not
    HTTP), or needs more data to tell (None); the data read on the way is dropped."""
    try:
        while (event := protocol.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.EndOfMessage):
                return True
            if not isinstance(event, h11.Data):
                return False
    except h11.ProtocolError:
        return False
    return None
