"""The few ASGI pieces the gateway needs: read a bounded body, send a response."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_LOG = logging.getLogger(__name__)


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


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer` header; "" for any other scheme, which no
    credential matches; None without the header."""
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


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
    """Send `document` as JSON; one that cannot be written (the relay refuses those before
    they get here) is logged and answered with a JSON-RPC internal error, never an empty 500."""
    body, written = encode_json(document)
    await send_bytes(
        send,
        status if written else 500,
        body,
        content_type="application/json",
        headers=headers,
    )


def encode_json(document: Any) -> tuple[bytes, bool]:
    """The JSON bytes of `document`, and True; or, if it cannot be written, those of a
    JSON-RPC -32603 error for its id, and False."""
    try:
        return orjson.dumps(document), True
    except orjson.JSONEncodeError as exc:
        request_id = document.get("id") if isinstance(document, dict) else None
        if not (request_id is None or isinstance(request_id, str) or _writable(request_id)):
            request_id = None
        _LOG.error("an answer could not be written as JSON (%s): sent -32603 instead", exc)
        failure = {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {"code": -32603, "message": f"the answer cannot be written as JSON: {exc}"},
        }
        return orjson.dumps(failure), False


def _writable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True
