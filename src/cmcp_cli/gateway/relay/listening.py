"""Serving `subscriptions/listen` (2026-07-28) from the session's upstreams.

A listen stream's resource URIs are routed like `resources/read`. Where the session's
conversation with that upstream is a session of 2025-11-25, the gateway subscribes there
(`resources/subscribe`) for the stream's lifetime; where it is stateless (2026-07-28), the
gateway opens a listen stream of its own upstream for those URIs. A URI neither kind of
upstream takes is left out of the acknowledgment, as the revision says.
"""

from __future__ import annotations

import contextlib
from typing import Any

from cmcp_cli.gateway.relay.listen import Listener, honored_lists, requested_filter
from cmcp_cli.gateway.relay.methods import Methods, upstream_order
from cmcp_cli.gateway.relay.sessions import GatewaySession
from cmcp_cli.gateway.upstream.api import UpstreamError
from cmcp_cli.gateway.upstream.modern_client import ModernConversation
from cmcp_cli.wire.jsonrpc import Code, Message, error
from cmcp_cli.wire.mcp import MODERN_PROTOCOLS

LISTEN = "subscriptions/listen"
MAX_LISTENED_URIS = 256  # resource subscriptions one listen request may ask for
RESOURCE_LISTINGS = ("resources/list", "resources/templates/list")


class Listening:
    def __init__(self, methods: Methods) -> None:
        self.methods = methods

    async def listen(
        self, message: Message, session: GatewaySession
    ) -> tuple[Listener | None, dict[str, Any] | None]:
        """Open a listen stream (acknowledged, registered with the session), or the error
        that answers the request instead."""
        if session.protocol_version not in MODERN_PROTOCOLS:
            return None, error(
                message.id,
                Code.METHOD_NOT_FOUND,
                f"{LISTEN} is a 2026-07-28 method: on 2025-11-25, open the GET stream and "
                "use resources/subscribe",
            )
        wanted = requested_filter(message.params)
        if wanted is None or message.id is None:
            return None, error(
                message.id, Code.INVALID_PARAMS, f"{LISTEN} needs an id and params.notifications"
            )
        listener = Listener(message.id, honored_lists(wanted))
        uris = wanted.get("resourceSubscriptions")
        if isinstance(uris, list):
            await self._subscribe(session, listener, [u for u in uris if isinstance(u, str)])
            if listener.subscribed:
                listener.honored["resourceSubscriptions"] = list(listener.subscribed)
        session.listeners.add(listener)
        listener.acknowledge()
        return listener, None

    async def unlisten(self, session: GatewaySession, listener: Listener) -> None:
        """A listen stream ended: its upstream listen streams end, and its upstream
        subscriptions that nothing else of the session still wants (bounded by the
        upstream's timeout; a failure is moot)."""
        listener.end(graceful=False)
        session.listeners.discard(listener)
        for stop in listener.stops:
            stop()
        still = set(session.subscribed)
        for other in session.listeners:
            still.update(other.subscribed)
        for uri, name in listener.subscribed.items():
            if uri in still or uri in listener.watched or session.closed:
                continue
            upstream = session.upstreams.get(name)
            if upstream is not None:
                with contextlib.suppress(UpstreamError):
                    await upstream.request("resources/unsubscribe", {"uri": uri})

    async def _subscribe(
        self, session: GatewaySession, listener: Listener, uris: list[str]
    ) -> None:
        methods = self.methods
        offering = [
            name
            for name in upstream_order(methods.runtime)
            if await methods.subscribable(session, name) or await self._listens(session, name)
        ]
        routed: dict[str, list[str]] = {}
        for uri in uris[:MAX_LISTENED_URIS]:
            name = await methods.route(session, RESOURCE_LISTINGS, uri, offering)
            if name is not None:
                routed.setdefault(name, []).append(uri)
        for name, group in routed.items():
            upstream = session.upstreams.get(name)
            if isinstance(upstream, ModernConversation):
                watch = await upstream.watch({"resourceSubscriptions": group})
                honored = watch.honored.get("resourceSubscriptions") if watch else None
                if watch is None or not isinstance(honored, list):
                    continue
                listener.stops.append(watch.stop)
                for uri in group:
                    if uri in honored:
                        listener.subscribed[uri] = name
                        listener.watched.add(uri)
                continue
            for uri in group:
                try:
                    reply = await methods.relay.forward(
                        session, None, name, "resources/subscribe", {"uri": uri}
                    )
                except UpstreamError:
                    continue
                if "result" in reply:
                    listener.subscribed[uri] = name

    async def _listens(self, session: GatewaySession, name: str) -> bool:
        """Whether the session's conversation with an upstream is stateless and the upstream
        offers resource subscriptions (on that revision: on listen streams)."""
        found = await self.methods.capabilities_of(session, name)
        resources = found.get("resources")
        return isinstance(session.upstreams.get(name), ModernConversation) and (
            isinstance(resources, dict) and resources.get("subscribe") is True
        )
