"""What the gateway needs of an upstream, whatever carries it (streamable HTTP or stdio).

An upstream (`UpstreamChannel`) opens one conversation (`UpstreamConversation`) per client
session, so no two agents ever share upstream state. A conversation answers each request
with the JSON-RPC response object, and raises `UpstreamError` when it cannot. Everything
else the upstream sends (notifications, and its own requests: sampling/createMessage,
elicitation/create, roots/list, ping) is handed on as it arrives: to the `relay` of the
request it belongs to, or to `on_notification`; such a request keeps the upstream's id,
and is answered with `respond`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec

from cmcp_cli import __version__
from cmcp_cli.wire.jsonrpc import Code, RequestId, encoding_problem, error

MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]
UPSTREAM_PROTOCOL = "2025-11-25"
KNOWN_PROTOCOLS = ("2025-11-25", "2025-06-18", "2025-03-26")
# Awaited (when set in the requesting context) each time an upstream closes a request's
# stream before answering it, to be resumed with Last-Event-ID (polling): the relay closes
# the client's response the same way. The answer still follows from `request`.
ON_STREAM_PAUSED: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = (
    contextvars.ContextVar("on_stream_paused", default=None)
)
CLOSE_TIMEOUT_SECONDS = 2.0  # ending an upstream session never holds up the gateway longer


class UpstreamConversation(Protocol):
    """One client session's own MCP session with one upstream, initialized."""

    @property
    def session_id(self) -> str | None:
        """The upstream's session id, if its transport has one."""
        ...

    @property
    def protocol_version(self) -> str:
        """The revision negotiated with the upstream."""
        ...

    @property
    def server_capabilities(self) -> Mapping[str, Any]:
        """What the upstream advertised when the conversation opened (initialize or
        server/discover): the gateway advertises and serves only what some upstream does."""
        ...

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        relay: MessageHandler | None = None,
    ) -> dict[str, Any]:
        """The JSON-RPC response (with `result` or `error`). While the request is in flight,
        every other message the upstream sends about it (progress, logging/message, its own
        requests) is passed to `relay` in order, awaited, or to `on_notification` when
        `relay` is None. If the awaiting task is cancelled, the upstream is sent
        notifications/cancelled for it (in the background, bounded) and CancelledError
        propagates. An HTTP 404 to our session id raises UpstreamSessionLostError."""
        ...

    async def respond(self, request_id: RequestId, answer: Mapping[str, Any]) -> None:
        """Answer a request the upstream sent: `answer` is {"result": ...} or {"error": ...}."""
        ...

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None: ...

    # Messages outside any request: notifications (list_changed, above all) AND the
    # upstream's own requests that belong to no request of ours.
    on_notification: MessageHandler | None

    async def listen(self) -> None:
        """Start receiving notifications the upstream sends outside any request; returns
        once they flow (or the upstream has shown it sends none), so that a change the
        upstream makes after this returns is announced."""
        ...

    async def close(self) -> None:
        """End the session; bounded in time, and never raises for an upstream gone already."""
        ...


class UpstreamChannel(Protocol):
    """A configured upstream, able to open conversations."""

    @property
    def name(self) -> str: ...

    async def open_session(
        self, *, capabilities: Mapping[str, Any] | None = None
    ) -> UpstreamConversation:
        """An initialized conversation; `capabilities` are the client capabilities declared
        to the upstream (sampling, elicitation, roots: what the gateway can relay)."""
        ...

    def describe(self) -> str:
        """Where the upstream is, for people: a URL, or the command that is started."""
        ...

    def close(self) -> None:
        """Release what the upstream holds (connections, child processes) at shutdown."""
        ...


class _Requesting(Protocol):
    server_capabilities: Mapping[str, Any]

    async def request(
        self, method: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]: ...


async def negotiate(
    session: _Requesting,
    upstream: str,
    *,
    capabilities: Mapping[str, Any] | None = None,
    protocol: str = UPSTREAM_PROTOCOL,
) -> str:
    """Send `initialize` offering `protocol` and return the revision the upstream answered,
    if cMCP speaks it (its capabilities are kept on `session`); the caller then sends
    notifications/initialized in that revision."""
    answer = await session.request(
        "initialize",
        {
            "protocolVersion": protocol,
            "capabilities": dict(capabilities or {}),
            "clientInfo": {"name": "cmcp-gateway", "version": __version__},
        },
    )
    result = answer.get("result")
    if not isinstance(result, dict):
        raise UpstreamError(upstream, f"initialize failed: {answer.get('error')}")
    version = result.get("protocolVersion")
    if not isinstance(version, str) or version not in KNOWN_PROTOCOLS:
        raise UpstreamError(upstream, f"speaks protocol {version!r}, which cMCP does not")
    offered = result.get("capabilities")
    session.server_capabilities = offered if isinstance(offered, dict) else {}
    return version


class UpstreamError(Exception):
    """An upstream could not answer: unreachable, too slow, or not speaking MCP."""

    def __init__(self, upstream: str, message: str, *, timed_out: bool = False) -> None:
        super().__init__(f"upstream {upstream!r}: {message}")
        self.upstream = upstream
        self.timed_out = timed_out

    def to_jsonrpc(self, request_id: RequestId | None) -> dict[str, Any]:
        """The error an agent gets for a request this failure ended."""
        code = Code.UPSTREAM_TIMEOUT if self.timed_out else Code.UPSTREAM_FAILED
        return error(request_id, code, str(self), {"upstream": self.upstream})


class UpstreamSessionLostError(UpstreamError):
    """The upstream answered HTTP 404 to our session id: it forgot the session (it
    restarted, or expired it) and did not run the request. A new session is the fix."""


def unhandled(request: Mapping[str, Any]) -> dict[str, Any]:
    """The answer to an upstream's request when no one takes it: `ping` is answered, any
    other method refused, so that the upstream never waits for an answer that won't come."""
    if request.get("method") == "ping":
        return {"result": {}}
    return {
        "error": {
            "code": int(Code.METHOD_NOT_FOUND),
            "message": f"the cMCP gateway does not serve {request.get('method')} to upstreams",
        }
    }


def cancel_reason(cancelled: BaseException) -> str:
    """The reason sent with notifications/cancelled: the cancel message, if it has one."""
    if cancelled.args and isinstance(cancelled.args[0], str):
        return cancelled.args[0]
    return "the request was cancelled at the gateway"


_DECODER = msgspec.json.Decoder()


def decode_message(upstream: str, data: bytes) -> Any:
    """One JSON-RPC message an upstream sent, as JSON the gateway can write back: a message
    that is not JSON, or holds what the encoder cannot write (an integer past 64 bits),
    is an `UpstreamError`, recorded as a fault of the upstream, never an answer that fails
    on its way out."""
    try:
        message = _DECODER.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UpstreamError(upstream, f"sent a message that is not JSON: {exc}") from exc
    problem = encoding_problem(message)
    if problem is not None:
        raise UpstreamError(upstream, f"sent a message the gateway cannot pass on: {problem}")
    return message


def answers(message: Mapping[str, Any], request_id: int) -> bool:
    """Whether `message` is the response to `request_id` (JSON true is not id 1)."""
    answered = message.get("id")
    return (
        type(answered) is int
        and answered == request_id
        and ("result" in message or "error" in message)
    )
