"""What the gateway needs of an upstream, whatever carries it (streamable HTTP or stdio).

An upstream (`UpstreamChannel`) opens one conversation (`UpstreamConversation`) per client
session, so no two agents ever share upstream state. A conversation answers each request
with the JSON-RPC response object, and raises `UpstreamError` when it cannot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol


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

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send a request; the JSON-RPC response object (with `result` or `error`)."""
        ...

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None: ...

    # Where the upstream's notifications (list_changed, above all) are delivered.
    on_notification: Callable[[dict[str, Any]], Awaitable[None]] | None

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

    async def open_session(self) -> UpstreamConversation: ...

    def describe(self) -> str:
        """Where the upstream is, for people: a URL, or the command that is started."""
        ...

    def close(self) -> None:
        """Release what the upstream holds (connections, child processes) at shutdown."""
        ...
