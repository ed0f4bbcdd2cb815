"""JSON-RPC 2.0 messages as MCP carries them: parsed strictly, answered well-formed.

The gateway decides on the body it parsed here, never on headers. Error codes of its own
stay clear of -32000/-32001, which the official 2.x client uses internally.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

JSONRPC = "2.0"
RequestId = str | int


class Code(enum.IntEnum):
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    # 2026-07-28: headers that disagree with the body, and an unsupported revision.
    HEADER_MISMATCH = -32020
    MISSING_REQUIRED_CLIENT_CAPABILITY = -32021
    UNSUPPORTED_PROTOCOL_VERSION = -32022
    # The gateway's own: a decision, or a failure of something behind it.
    POLICY_DENIED = -32040
    APPROVAL_REQUIRED = -32041
    TOOL_DRIFTED = -32042
    SESSION_NOT_FOUND = -32043
    UPSTREAM_FAILED = -32050
    UPSTREAM_TIMEOUT = -32051
    REQUEST_TIMEOUT = -32052
    AUDIT_FAILED = -32060
    ATTESTATION_FAILED = -32061


class ProtocolError(Exception):
    """A message the gateway cannot take, with the JSON-RPC error and HTTP status to send."""

    def __init__(
        self,
        code: Code,
        message: str,
        *,
        request_id: RequestId | None = None,
        http_status: int = 400,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.http_status = http_status
        self.data = data

    def to_json(self) -> dict[str, Any]:
        return error(self.request_id, self.code, self.message, self.data)


@dataclass(frozen=True, slots=True)
class Message:
    """One client-to-server message: a request (with `id`) or a notification (without),
    or a response to something the server asked (with `result` or `error`)."""

    method: str | None
    params: dict[str, Any]
    id: RequestId | None

    @property
    def is_notification(self) -> bool:
        return self.method is not None and self.id is None


_DECODER = msgspec.json.Decoder()


def parse_message(body: bytes, *, max_depth: int) -> Message:
    """Parse one JSON-RPC message; `ProtocolError` (HTTP 400) names what is wrong."""
    try:
        value = _DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(Code.PARSE_ERROR, f"the body is not JSON: {exc}") from exc
    if isinstance(value, list):
        raise ProtocolError(
            Code.INVALID_REQUEST,
            "JSON-RPC batches are not accepted: send one message per request "
            "(MCP removed batching in 2025-06-18)",
        )
    if not isinstance(value, dict):
        raise ProtocolError(Code.INVALID_REQUEST, "a JSON-RPC message is a JSON object")
    request_id = value.get("id")
    if request_id is not None and (type(request_id) not in (str, int)):
        raise ProtocolError(Code.INVALID_REQUEST, "id must be a string or an integer")
    if _depth_exceeds(value, max_depth):
        raise ProtocolError(
            Code.INVALID_REQUEST,
            f"the message is nested deeper than {max_depth} levels (limits.max_json_depth)",
            request_id=request_id,
        )
    if value.get("jsonrpc") != JSONRPC:
        raise ProtocolError(Code.INVALID_REQUEST, 'jsonrpc must be "2.0"', request_id=request_id)
    method = value.get("method")
    if method is None:
        if request_id is None or ("result" in value) == ("error" in value):
            raise ProtocolError(
                Code.INVALID_REQUEST,
                "a message needs a method (request or notification), or an id with exactly "
                "one of result and error (response)",
                request_id=request_id,
            )
        return Message(None, {}, request_id)
    if not isinstance(method, str) or not method:
        raise ProtocolError(Code.INVALID_REQUEST, "method must be a non-empty string")
    params = value.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError(Code.INVALID_PARAMS, "params must be an object", request_id=request_id)
    return Message(method, params, request_id)


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if type(item) is dict:
            stack.extend((child, depth + 1) for child in item.values() if type(child) in _NESTED)
        elif type(item) is list:
            stack.extend((child, depth + 1) for child in item if type(child) in _NESTED)
    return False


_NESTED = (dict, list)


def result(request_id: RequestId | None, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": request_id, "result": value}


def error(
    request_id: RequestId | None, code: int, message: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": int(code), "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": JSONRPC, "id": request_id, "error": body}
