"""`subscriptions/listen` (2026-07-28): a client's opt-in stream of notifications.

The response to a listen request is the stream: first `notifications/subscriptions/
acknowledged` with the subset of the requested notifications the gateway honors, then
only notifications of those kinds, each stamped with the subscription id (the listen
request's id) in `_meta`. List changes are honored as asked (the gateway announces what
its upstreams announce); a resource subscription is honored for a URI whose upstream
takes subscriptions, and the gateway subscribes there for the stream's lifetime. When
the session ends, the stream ends with the listen request's result; when the client
leaves, it simply ends. (`listening` opens and ends what a stream needs upstream.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cmcp_cli.wire.jsonrpc import RequestId

SUBSCRIPTION_ID_KEY = "io.modelcontextprotocol/subscriptionId"
LISTEN_BACKLOG = 256  # notifications a listener may have unread before its stream is ended
LIST_CHANGES = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}
UPDATED = "notifications/resources/updated"


@dataclass(eq=False)
class Listener:
    """One open listen stream: what it honors, and the events queued for it."""

    subscription_id: RequestId
    honored: dict[str, Any]  # the acknowledged filter
    subscribed: dict[str, str] = field(default_factory=dict)  # uri -> the upstream subscribed
    watched: set[str] = field(default_factory=set)  # of those, the ones on upstream listen streams
    stops: list[Callable[[], None]] = field(default_factory=list)  # ending those streams
    events: asyncio.Queue[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(LISTEN_BACKLOG)
    )
    ended: bool = False

    def acknowledge(self) -> None:
        self._put(
            {
                "jsonrpc": "2.0",
                "method": "notifications/subscriptions/acknowledged",
                "params": {"notifications": self.honored, "_meta": self._meta()},
            }
        )

    def offer(self, notice: Mapping[str, Any]) -> None:
        """Queue an upstream's notification if this stream asked for its kind."""
        if self.ended or not self._wants(notice):
            return
        params = notice.get("params")
        stamped = {**(params if isinstance(params, Mapping) else {})}
        meta = stamped.get("_meta")
        stamped["_meta"] = {**(meta if isinstance(meta, Mapping) else {}), **self._meta()}
        self._put({"jsonrpc": "2.0", "method": notice["method"], "params": stamped})

    def end(self, *, graceful: bool) -> None:
        """End the stream: with the listen request's result when `graceful`."""
        if self.ended:
            return
        if graceful:
            answer = {"_meta": self._meta(), "resultType": "complete"}
            self._put({"jsonrpc": "2.0", "id": self.subscription_id, "result": answer})
        self.ended = True
        with contextlib.suppress(asyncio.QueueFull):
            self.events.put_nowait(None)

    def _wants(self, notice: Mapping[str, Any]) -> bool:
        method = notice.get("method")
        if method in LIST_CHANGES:
            return self.honored.get(LIST_CHANGES[str(method)]) is True
        if method == UPDATED:
            params = notice.get("params")
            uri = params.get("uri") if isinstance(params, Mapping) else None
            return isinstance(uri, str) and uri in self.subscribed
        return False

    def _put(self, message: dict[str, Any]) -> None:
        """Queue a message; a stream whose client stopped reading is ended (it listens
        again and reads what it missed), never grown without bound."""
        try:
            self.events.put_nowait(message)
        except asyncio.QueueFull:
            self.ended = True
            while not self.events.empty():
                self.events.get_nowait()
            self.events.put_nowait(None)

    def _meta(self) -> dict[str, Any]:
        return {SUBSCRIPTION_ID_KEY: self.subscription_id}


def requested_filter(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `notifications` filter of a listen request, or None when it has none."""
    wanted = params.get("notifications")
    return dict(wanted) if isinstance(wanted, Mapping) else None


def honored_lists(wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The list-change kinds of a filter the gateway honors: every one asked for."""
    return {kind: True for kind in LIST_CHANGES.values() if wanted.get(kind) is True}
