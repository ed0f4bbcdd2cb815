"""JSON-RPC 2.0 messages as MCP carries them: parsed strictly, answered well-formed.

The gateway decides on the body it parsed here, never on headers. Error codes of its own
stay clear of -32000/-32001, which the official 2.x client uses internally.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

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
    ATTESTATION_STALE = -32062  # the session's evidence went stale under fail_closed


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
    # A response's {"result": ...} or {"error": ...}; None for requests and notifications.
    answer: dict[str, Any] | None = None

    @property
    def is_notification(self) -> bool:
        return self.method is not None and self.id is None


_DECODER = msgspec.json.Decoder()
# What orjson, which writes every answer, can encode: integers in [-2**63, 2**64 - 1] and
# containers nested at most 254 deep (a message is held to limits.max_json_depth first).
MIN_INTEGER = -(2**63)
MAX_INTEGER = 2**64 - 1
MAX_ENCODABLE_DEPTH = 254


def parse_message(body: bytes, *, max_depth: int) -> Message:
    """Parse one JSON-RPC message; `ProtocolError` (HTTP 400) names what is wrong.

    Refused as not JSON (-32700): invalid UTF-8, NaN/Infinity, a number beyond the range of
    an IEEE 754 double (1e400), an escaped lone UTF-16 surrogate. A member name given twice
    keeps its last value, and only that value is decided on and forwarded. An integer the
    gateway could not write back is -32600 in `id` and -32602 anywhere else."""
    try:
        value = _DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(
            Code.PARSE_ERROR,
            f"the body is not JSON as MCP carries it (UTF-8; no NaN or Infinity; numbers "
            f"within IEEE 754 double range; no lone surrogate escapes): {exc}",
        ) from exc
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
    if type(request_id) is int and not MIN_INTEGER <= request_id <= MAX_INTEGER:
        raise ProtocolError(
            Code.INVALID_REQUEST,
            f"id is an integer outside [{MIN_INTEGER}, {MAX_INTEGER}], which no answer "
            "could carry back: use a smaller integer or a string",
        )
    problem = _shape_problem(value, max_depth)
    if problem == _TOO_DEEP:
        raise ProtocolError(
            Code.INVALID_REQUEST,
            f"the message is nested deeper than {max_depth} levels (limits.max_json_depth)",
            request_id=request_id,
        )
    if problem == _HUGE_INTEGER:
        raise ProtocolError(
            Code.INVALID_PARAMS,
            f"{huge_integer_path(value)} is an integer outside [{MIN_INTEGER}, {MAX_INTEGER}], "
            "which the gateway cannot pass on: send it as a string",
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
        answer = {"result": value["result"]} if "result" in value else {"error": value["error"]}
        return Message(None, {}, request_id, answer)
    if not isinstance(method, str) or not method:
        raise ProtocolError(Code.INVALID_REQUEST, "method must be a non-empty string")
    params = value.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError(Code.INVALID_PARAMS, "params must be an object", request_id=request_id)
    return Message(method, params, request_id)


def encoding_problem(value: Any) -> str | None:
    """Why a decoded message could not be written back as JSON (an integer outside
    [-2**63, 2**64 - 1], or nesting deeper than orjson writes), or None if it can.
    Checked by encoding it once (orjson is several times faster than a walk in Python),
    and walked only to name the problem."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        pass
    else:
        return None
    problem = _shape_problem(value, MAX_ENCODABLE_DEPTH)
    if problem == _TOO_DEEP:
        return f"it is nested deeper than {MAX_ENCODABLE_DEPTH} levels"
    if problem == _HUGE_INTEGER:
        return f"{huge_integer_path(value)} is an integer outside [{MIN_INTEGER}, {MAX_INTEGER}]"
    return "it holds a value JSON cannot carry"


_TOO_DEEP = 1
_HUGE_INTEGER = 2


def _shape_problem(value: Any, limit: int) -> int:
    """One walk over a decoded message: _TOO_DEEP past `limit` levels, else _HUGE_INTEGER
    for an integer orjson cannot write, else 0. Depth wins: it bounds the walk itself."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return _HUGE_INTEGER if kind is int and not MIN_INTEGER <= value <= MAX_INTEGER else 0
    huge = False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return _TOO_DEEP
        children = item.values() if type(item) is dict else item
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
            elif kind is int and not MIN_INTEGER <= child <= MAX_INTEGER:
                huge = True
    return _HUGE_INTEGER if huge else 0


def huge_integer_path(value: Any) -> str:
    """Where the first integer outside [-2**63, 2**64 - 1] is, as `params.arguments.n[2]`
    (only called once one is known to be there; the message's depth is bounded)."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if type(item) is int and not MIN_INTEGER <= item <= MAX_INTEGER:
            return path or "the message"
        if type(item) is dict:
            stack.extend(
                (child, f"{path}.{key}" if path else str(key))
                for key, child in reversed(item.items())
            )
        elif type(item) is list:
            stack.extend(
                (child, f"{path}[{index}]") for index, child in reversed(list(enumerate(item)))
            )
    return "the message"


def result(request_id: RequestId | None, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": request_id, "result": value}


def error(
    request_id: RequestId | None, code: int, message: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": int(code), "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": JSONRPC, "id": request_id, "error": body}
