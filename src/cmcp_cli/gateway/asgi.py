"""The few ASGI pieces the gateway needs: read a bounded body, send a response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLargeError(Exception):
    pass


class ClientGoneError(Exception):
    pass


def header(scope: Scope, name: bytes) -> str | None:
    """The value of a request header (names compared lower-case), or None."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    raw = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        raw.append((b"content-type", content_type.encode()))
    for name, value in (headers or {}).items():
        raw.append((name.encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, document: Any, *, headers: Mapping[str, str] | None = None
) -> None:
    await send_bytes(
        send, status, orjson.dumps(document), content_type="application/json", headers=headers
    )
