"""A small HTTP/1.1 client for upstream MCP servers: pooled keep-alive connections.

Upstream calls are on every tool call's path, so this is asyncio streams and h11 (the
parser hypercorn itself uses) with nothing else in between. Plain HTTP and HTTPS; every
exchange is bounded by a timeout and a response size limit.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

_READ_CHUNK = 64 * 1024


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
    body: bytes


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
        max_body: int,
    ) -> Response:
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
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:
                    raise HttpError(f"the response is larger than {max_body} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Response(status, response_headers, b"".join(chunks))
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
        self._tls: ssl.SSLContext | None = (
            ssl.create_default_context() if endpoint.scheme == "https" else None
        )

    async def request(
        self,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        timeout: float,
        max_body: int,
    ) -> Response:
        try:
            async with asyncio.timeout(timeout):
                return await self._request(method, headers, body, max_body)
        except TimeoutError as exc:
            raise HttpTimeoutError(f"no answer within {timeout:g} s") from exc

    async def _request(
        self, method: str, headers: list[tuple[str, str]], body: bytes, max_body: int
    ) -> Response:
        # Sent once, never retried: a tools/call that reached the upstream before the
        # connection failed may have run, and running it twice is not the gateway's call.
        connection = self._take_idle() or await self._connect()
        try:
            response = await connection.exchange(method, self.endpoint, headers, body, max_body)
        except h11.ProtocolError as exc:
            connection.close()
            raise HttpError(f"the upstream did not speak HTTP/1.1: {exc}") from exc
        except OSError as exc:
            connection.close()
            raise HttpError(f"the connection to {self.endpoint.host_header} failed: {exc}") from exc
        except BaseException:
            connection.close()
            raise
        self._release(connection)
        return response

    async def stream(
        self,
        method: str,
        headers: list[tuple[str, str]],
        *,
        connect_timeout: float,
        on_open: Callable[[], None] | None = None,
        body: bytes = b"",
    ) -> AsyncIterator[bytes]:
        """A long-lived response (to `body`, if any) on a connection of its own (never
        pooled): each chunk of its body as it arrives; `on_open` is called once its 200
        head has arrived. Raises HttpError for a status other than 200."""
        async with asyncio.timeout(connect_timeout):
            connection = await self._connect()
        protocol = connection.protocol
        try:
            sized = [("content-length", str(len(body)))] if body else []
            request = h11.Request(
                method=method,
                target=self.endpoint.target,
                headers=[("host", self.endpoint.host_header), *headers, *sized],
            )
            sent = protocol.send(request) or b""
            if body:
                sent += protocol.send(h11.Data(data=body)) or b""
            connection.writer.write(sent + (protocol.send(h11.EndOfMessage()) or b""))
            await connection.writer.drain()
            while True:
                event = protocol.next_event()
                if event is h11.NEED_DATA:
                    protocol.receive_data(await connection.reader.read(_READ_CHUNK))
                elif isinstance(event, h11.Response):
                    if event.status_code != 200:
                        raise HttpError(f"answered HTTP {event.status_code}")
                    if on_open is not None:
                        on_open()
                elif isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return
        except (h11.ProtocolError, OSError) as exc:
            raise HttpError(f"the stream from {self.endpoint.host_header} failed: {exc}") from exc
        finally:
            connection.close()

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
        if connection.reusable() and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
