"""Both directions of a forwarded request: what the upstream sends while it runs, and
what the client sends back.

While a request is upstream, the upstream's notifications about it (progress, log
messages) go to the client on that request's response, and so do its own requests
(sampling, elicitation, roots): each is decided by policy before it reaches the client
(a refused one is answered to the upstream and never seen by the client) and goes out
under a gateway id; the client's answer, routed back by that id, is recorded and passed
to the upstream that asked. A forgotten upstream session is renewed and the request
sent once more (an upstream answering 404 ran nothing). The client's cancellation
cancels the request's task, which cancels it upstream.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from cmcp_cli.audit.recorder import ChainEndedError
from cmcp_cli.gateway.enforcement.messages import close_gate, fail_gate, open_gate, refusal
from cmcp_cli.gateway.relay.exchange import Flight, Pending
from cmcp_cli.gateway.relay.sessions import GatewaySession, SessionRegistry
from cmcp_cli.gateway.upstream.api import (
    ON_STREAM_PAUSED,
    MessageHandler,
    UpstreamConversation,
    UpstreamError,
    UpstreamSessionLostError,
)
from cmcp_cli.policy.request import MessageKind
from cmcp_cli.wire.jsonrpc import Code, Message, RequestId
from cmcp_cli.wire.mcp import MODERN_PROTOCOLS

log = logging.getLogger(__name__)

# Server-to-client requests the gateway relays, and the policy action deciding each.
GOVERNED = {
    "sampling/createMessage": MessageKind.CREATE_MESSAGE,
    "elicitation/create": MessageKind.ELICIT,
    "roots/list": MessageKind.LIST_ROOTS,
}
CLIENT_CANCELLED = "cancelled by the client"


class Relay:
    def __init__(self, sessions: SessionRegistry) -> None:
        self.sessions = sessions
        sessions.on_server_message = self.from_upstream
        sessions.on_session_closing = self.abandon

    async def forward(
        self,
        session: GatewaySession,
        flight: Flight | None,
        name: str,
        method: str,
        params: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Send a request to upstream `name`, streaming what it sends meanwhile to the
        client; a session the upstream forgot is renewed and the request sent once more.
        When the upstream closes the request's stream to be resumed later, the client's
        response is closed the same way (it resumes it with Last-Event-ID)."""
        outlet = flight.outlet if flight is not None else None
        token = ON_STREAM_PAUSED.set(outlet.pause if outlet is not None else None)
        try:
            upstream = await self.sessions.upstream(session, name)
            try:
                return await upstream.request(
                    method, params, relay=self._handler(session, flight, name, upstream)
                )
            except UpstreamSessionLostError as lost:
                upstream = await self.sessions.renew(session, name, upstream, str(lost))
                return await upstream.request(
                    method, params, relay=self._handler(session, flight, name, upstream)
                )
        finally:
            ON_STREAM_PAUSED.reset(token)

    def _handler(
        self,
        session: GatewaySession,
        flight: Flight | None,
        name: str,
        upstream: UpstreamConversation,
    ) -> MessageHandler:
        async def relay(message: dict[str, Any]) -> None:
            await self._relayed(session, flight, name, upstream, message)

        return relay

    async def from_upstream(
        self,
        session: GatewaySession,
        name: str,
        upstream: UpstreamConversation,
        message: dict[str, Any],
    ) -> None:
        """A message an upstream sent outside any request: to the session's GET stream."""
        await self._relayed(session, None, name, upstream, message)

    async def _relayed(
        self,
        session: GatewaySession,
        flight: Flight | None,
        name: str,
        upstream: UpstreamConversation,
        message: dict[str, Any],
    ) -> None:
        method = message.get("method")
        request_id = message.get("id")
        if not isinstance(method, str):
            return
        if request_id is None:
            if not session.closed:
                await self._deliver(session, flight, message)
            return
        if not isinstance(request_id, str | int):
            return
        if session.closed:  # nobody will answer it: the upstream must not wait
            await _answer(upstream, request_id, _error(Code.INVALID_REQUEST, "the session ended"))
            return
        try:
            await self._server_request(
                session,
                flight,
                name=name,
                upstream=upstream,
                request_id=request_id,
                message=message,
            )
        except ChainEndedError:
            await _answer(upstream, request_id, _error(Code.INVALID_REQUEST, "the session ended"))

    async def _server_request(
        self,
        session: GatewaySession,
        flight: Flight | None,
        *,
        name: str,
        upstream: UpstreamConversation,
        request_id: RequestId,
        message: dict[str, Any],
    ) -> None:
        method = str(message["method"])
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        if method == "ping":  # the gateway is the upstream's client: it answers
            await _answer(upstream, request_id, {"result": {}})
            return
        kind = GOVERNED.get(method)
        if kind is None:
            await _answer(
                upstream,
                request_id,
                _error(Code.METHOD_NOT_FOUND, f"{method} is not relayed to the client"),
            )
            return
        if session.protocol_version in MODERN_PROTOCOLS:
            text = (
                f"the client speaks {session.protocol_version}, in which a server cannot "
                f"send it requests such as {method}"
            )
            # Nothing reaches the client, but the upstream asked: its refusal is on record.
            async with self.sessions.durably():
                session.evidence.recorder.fault(error=f"upstream {name!r}: {text}", stage=method)
            await _answer(upstream, request_id, _error(Code.METHOD_NOT_FOUND, text))
            return
        gate = await open_gate(
            self.sessions,
            session,
            kind=kind,
            server=name,
            target=name,  # server-wide kinds: the target is the server (Server::"<name>")
            params=params,
            related_call_id=flight.call_id if flight is not None else None,
        )
        if not gate.forwarded:
            refused = refusal(gate, request_id)
            await _answer(upstream, request_id, {"error": refused.get("error")})
            return
        gateway_id = session.exchange.next_gateway_id()
        session.exchange.pending[gateway_id] = Pending(
            gateway_id, name, upstream, request_id, gate, flight
        )
        outgoing: dict[str, Any] = {"jsonrpc": "2.0", "id": gateway_id, "method": method}
        if "params" in message:
            outgoing["params"] = message["params"]
        await self._deliver(session, flight, outgoing)

    async def _deliver(
        self, session: GatewaySession, flight: Flight | None, message: dict[str, Any]
    ) -> None:
        """On the request's own response if it can carry it, else on the GET stream."""
        outlet = flight.outlet if flight is not None else None
        if outlet is None or not await outlet.deliver(message):
            session.notify(message)

    async def answered(self, message: Message, session: GatewaySession) -> None:
        """The client's answer to a request relayed to it: recorded, then passed to the
        upstream that asked. An answer to nothing pending is dropped."""
        pending = (
            session.exchange.pending.pop(message.id, None) if isinstance(message.id, str) else None
        )
        if pending is None or message.answer is None:
            log.debug("session %s: a response to %r, which is not pending", session.id, message.id)
            return
        answer = message.answer
        if pending.gate is not None:
            answer = await close_gate(self.sessions, session, pending.gate, answer)
        await _answer(pending.conversation, pending.upstream_id, answer)

    async def notified(self, message: Message, session: GatewaySession) -> None:
        """A client notification: a cancellation cancels its request; a change of the
        client's roots is passed to every upstream of the session."""
        if message.method == "notifications/cancelled":
            target = message.params.get("requestId")
            flight = session.exchange.flights.get(target) if isinstance(target, str | int) else None
            if flight is not None:
                flight.cancel(CLIENT_CANCELLED)
        elif message.method == "notifications/roots/list_changed":
            for upstream in list(session.upstreams.values()):
                with contextlib.suppress(UpstreamError):
                    await upstream.notify("notifications/roots/list_changed")

    async def settle(self, session: GatewaySession, flight: Flight) -> None:
        """After a request ended (cancelled, timed out): requests its upstream sent during
        it that the client has not answered are closed as faults and answered upstream."""
        stale = [p for p in session.exchange.pending.values() if p.flight is flight]
        await self._give_up(session, stale, "the request ended before the client answered")

    async def abandon(self, session: GatewaySession) -> None:
        """Before a session ends: what its upstreams still wait for is answered with an
        error, and recorded as a fault of its message."""
        await self._give_up(
            session,
            session.exchange.take_pending(),
            "the session closed before the client answered",
        )

    async def _give_up(self, session: GatewaySession, stale: list[Pending], why: str) -> None:
        for pending in stale:
            session.exchange.pending.pop(pending.gateway_id, None)
            if pending.gate is not None:
                with contextlib.suppress(ChainEndedError):
                    await fail_gate(self.sessions, session, pending.gate, why, "cancelled")
            await _answer(
                pending.conversation, pending.upstream_id, _error(Code.INVALID_REQUEST, why)
            )


def _error(code: int, text: str) -> dict[str, Any]:
    return {"error": {"code": int(code), "message": text}}


async def _answer(
    upstream: UpstreamConversation, request_id: RequestId, answer: Mapping[str, Any]
) -> None:
    """Answer the upstream's request; an upstream gone already needs no answer."""
    try:
        await upstream.respond(request_id, answer)
    except UpstreamError as exc:
        log.debug("could not answer the upstream's request %r: %s", request_id, exc)
