"""A minimal, fast MCP server (streamable HTTP) for benchmarking the gateway in front of it.

The official SDK server answers a few hundred calls per second here, so a benchmark in
front of it measures the SDK. This one is asyncio protocol callbacks, a strict minimal
HTTP/1.1 parser (h11 alone costs about 100 us a request here) and orjson, and serves
exactly what the gateway needs:

  POST /mcp  initialize                 -> result and a new Mcp-Session-Id
             notifications (no id)      -> 202, empty
             tools/list                 -> the definitions of examples/quickstart/catalog.json,
                                           so the gateway's catalog pin matches
             tools/call get_weather     -> "Sunny, 21 C in <city>"; any other tool -> isError
             ping                       -> {}
             anything else              -> JSON-RPC error -32601
             a request without a known session id -> 400 (missing) or 404 (unknown),
             except a stateless one (MCP-Protocol-Version: 2026-07-28, no initialize)
  DELETE /mcp                           -> 200 and the session ends
  GET /healthz                          -> 200

    .venv/bin/python benchmarks/fast_upstream.py --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson

CATALOG = Path(__file__).resolve().parent.parent / "examples" / "quickstart" / "catalog.json"
PROTOCOLS = ("2025-11-25", "2025-06-18", "2025-03-26")
STATELESS = b"2026-07-28"  # the revision without initialize or sessions
MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_JSON = [(b"content-type", b"application/json")]


def catalog_tools() -> list[dict[str, Any]]:
    return [
        {"name": entry["name"], **entry["definition"]}
        for entry in json.loads(CATALOG.read_text())["tools"]
    ]


class McpState:
    """Sessions and answers, shared by every connection of the server."""

    def __init__(self) -> None:
        self.sessions: set[str] = set()
        self.tools = {"tools": catalog_tools()}

    def answer(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, extra headers and body for one complete request."""
        if target == b"/healthz" and method == b"GET":
            return 200, _JSON, b'{"status":"ok"}'
        if target != b"/mcp":
            return 404, _JSON, b'{"error":"not found"}'
        session = headers.get(b"mcp-session-id", b"").decode("latin-1")
        if method == b"DELETE":
            if session not in self.sessions:
                return 404, _JSON, b'{"error":"unknown session"}'
            self.sessions.discard(session)
            return 200, [], b""
        if method != b"POST":
            return 405, [(b"allow", b"POST, DELETE")], b""
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, _JSON, _error(None, -32700, "the body is not JSON")
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return 400, _JSON, _error(None, -32600, "not a JSON-RPC 2.0 message")
        request_id, method_name = message.get("id"), message.get("method")
        params = message.get("params") or {}
        if not isinstance(params, dict):
            return 400, _JSON, _error(request_id, -32602, "params must be an object")
        if method_name == "initialize":
            created = secrets.token_hex(16)
            self.sessions.add(created)
            requested = params.get("protocolVersion")
            result = {
                "protocolVersion": requested if requested in PROTOCOLS else PROTOCOLS[0],
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "cmcp-bench-upstream", "version": "1"},
            }
            headers_out = [*_JSON, (b"mcp-session-id", created.encode())]
            return 200, headers_out, _result(request_id, result)
        if headers.get(b"mcp-protocol-version") != STATELESS:
            if not session:
                return 400, _JSON, _error(request_id, -32600, "Mcp-Session-Id is missing")
            if session not in self.sessions:
                return 404, _JSON, _error(request_id, -32001, "unknown session")
        if request_id is None:
            return 202, [], b""  # a notification or a response: accepted
        if method_name == "tools/call":
            return 200, _JSON, _result(request_id, _call(params))
        if method_name == "tools/list":
            return 200, _JSON, _result(request_id, self.tools)
        if method_name == "ping":
            return 200, _JSON, _result(request_id, {})
        return 200, _JSON, _error(request_id, -32601, f"{method_name} is not served")


def _call(params: dict[str, Any]) -> dict[str, Any]:
    arguments = params.get("arguments") or {}
    if params.get("name") == "get_weather":
        text = f"Sunny, 21 C in {arguments.get('city', 'nowhere')}"
        return {"content": [{"type": "text", "text": text}], "isError": False}
    text = f"unknown tool {params.get('name')}"
    return {"content": [{"type": "text", "text": text}], "isError": True}


def _result(request_id: object, result: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def _error(request_id: object, code: int, message: str) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    )


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, requests answered in arrival order (pipelining
    included). Strict and small: a request line, header fields and a Content-Length body;
    anything else (a transfer coding, a malformed line, an oversized head or body) is
    answered 4xx/501 and the connection closed, never guessed at."""

    def __init__(self, state: McpState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        transport = self.transport
        assert transport is not None
        while not transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._fail(431, "the request head is too large")
                return
            request = _parse_head(bytes(self.buffer[:end]))
            if isinstance(request, tuple):
                self._fail(*request)
                return
            total = end + 4 + request.length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            status, extra, answer = self.state.answer(
                request.method, request.target, request.headers, body
            )
            self._send(status, extra, answer, close=request.close)

    def _send(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, close: bool
    ) -> None:
        transport = self.transport
        assert transport is not None
        lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Unknown"))]
        lines += [name + b": " + value for name, value in headers]
        lines.append(b"content-length: %d" % len(body))
        if close:
            lines.append(b"connection: close")
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        if close:
            transport.close()

    def _fail(self, status: int, reason: str) -> None:
        self._send(status, _JSON, _error(None, -32600, reason), close=True)


@dataclass(frozen=True, slots=True)
class Request:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]  # lower-case names
    length: int
    close: bool


def _parse_head(head: bytes) -> Request | tuple[int, str]:
    """The request, or the status and reason to refuse it with."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[0].isalpha():
        return 400, "not an HTTP/1.x request line"
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            return 400, "a malformed header field"
        key = name.lower()
        if key in headers and key in (b"content-length", b"host"):
            return 400, f"{key.decode()} is repeated"
        headers[key] = value.strip()
    if b"transfer-encoding" in headers:
        return 501, "transfer codings are not supported: send Content-Length"
    length = headers.get(b"content-length", b"0")
    if not length.isdigit():
        return 400, "Content-Length is not a number"
    if int(length) > MAX_BODY:
        return 413, "the body is too large"
    connection = headers.get(b"connection", b"").lower()
    close = connection == b"close" or (parts[2] == b"HTTP/1.0" and connection != b"keep-alive")
    return Request(parts[0], parts[1], headers, int(length), close)


async def serve(host: str, port: int) -> None:
    state = McpState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpConnection(state), host, port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
