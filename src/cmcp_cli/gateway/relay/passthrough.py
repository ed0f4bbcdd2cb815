"""Resources and prompts, relayed to the upstreams that serve them.

Listings are merged across upstreams in the config's order, each upstream's items in its own
order, and remembered per session so that a
`resources/read` or `prompts/get` goes to the upstream that listed the URI or name. With
several upstreams, pagination cursors are not merged: each listing is the upstreams'
first pages. Listings are relayed as the upstreams answer them; a `resources/read` or
`prompts/get` moves data, so it passes a gate (`enforcement.messages`): decided by policy
as `read_resource` or `get_prompt` before it is forwarded, its answer redacted and its
outcome recorded before it is returned.
"""

from __future__ import annotations

from typing import Any

from cmcp_cli.gateway.enforcement.messages import close_gate, fail_gate, open_gate, refusal
from cmcp_cli.gateway.relay.backchannel import Relay
from cmcp_cli.gateway.relay.exchange import Flight
from cmcp_cli.gateway.relay.input_gates import (
    RETRY_FIELDS,
    gate_input_responses,
    govern_input_required,
    retried,
)
from cmcp_cli.gateway.relay.methods import upstream_order
from cmcp_cli.gateway.relay.sessions import GatewaySession, SessionRegistry
from cmcp_cli.gateway.runtime import GatewayRuntime
from cmcp_cli.gateway.upstream.api import UpstreamError
from cmcp_cli.policy.request import MessageKind
from cmcp_cli.wire.jsonrpc import Code, Message, error
from cmcp_cli.wire.mcp import forwardable_meta

# listing method -> (the key of its items, the item field that routes later requests)
LISTINGS = {
    "resources/list": ("resources", "uri"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate"),
    "prompts/list": ("prompts", "name"),
}
# request method -> (the parameter naming the item, the listing that routes it)
ROUTED = {"resources/read": ("uri", "resources/list"), "prompts/get": ("name", "prompts/list")}
GOVERNED = {"resources/read": MessageKind.READ_RESOURCE, "prompts/get": MessageKind.GET_PROMPT}
PASSED_THROUGH = frozenset({*LISTINGS, *ROUTED})


class Passthrough:
    def __init__(self, runtime: GatewayRuntime, sessions: SessionRegistry, relay: Relay) -> None:
        self.runtime = runtime
        self.sessions = sessions
        self.relay = relay

    async def handle(
        self, message: Message, session: GatewaySession, flight: Flight
    ) -> dict[str, Any]:
        method = message.method or ""
        if method in LISTINGS:
            return await self._listing(message, session, method, flight)
        return await self._routed(message, session, method, flight)

    async def _listing(
        self, message: Message, session: GatewaySession, method: str, flight: Flight
    ) -> dict[str, Any]:
        key, route_field = LISTINGS[method]
        names = upstream_order(self.runtime)
        params = self._forwarded_params(message)
        if len(names) > 1:
            params.pop("cursor", None)
        merged: list[Any] = []
        answer: dict[str, Any] = {}
        for name in names:
            try:
                reply = await self.relay.forward(session, flight, name, method, params)
            except UpstreamError as exc:
                return await self._failed(message, session, exc)
            found = reply.get("result")
            if not isinstance(found, dict):
                continue  # this upstream does not serve resources or prompts
            items = found.get(key)
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict) and isinstance(item.get(route_field), str):
                    session.routes[(method, item[route_field])] = name
                    merged.append(item)
            if len(names) == 1 and "nextCursor" in found:
                answer["nextCursor"] = found["nextCursor"]
        answer[key] = merged
        return {"jsonrpc": "2.0", "id": message.id, "result": answer}

    async def _routed(
        self, message: Message, session: GatewaySession, method: str, flight: Flight
    ) -> dict[str, Any]:
        parameter, listing = ROUTED[method]
        target = message.params.get(parameter)
        if not isinstance(target, str):
            return error(message.id, Code.INVALID_PARAMS, f"{method} needs params.{parameter}")
        name = session.routes.get((listing, target))
        if name is None and len(self.runtime.upstreams) == 1:
            name = next(iter(self.runtime.upstreams))
        if name is None:
            return error(
                message.id,
                Code.INVALID_PARAMS,
                f"{parameter} {target!r} is not in any upstream's {listing}: list first",
                {parameter: target},
            )
        return await self._governed(message, session, flight, name, target)

    async def _governed(
        self,
        message: Message,
        session: GatewaySession,
        flight: Flight,
        name: str,
        target: str,
    ) -> dict[str, Any]:
        """Forward a routed read through its gate: decided first, outcome after."""
        kind_method = message.method or ""
        kind = GOVERNED[kind_method]
        gate = await open_gate(
            self.sessions, session, kind=kind, server=name, target=target, params=message.params
        )
        if not gate.forwarded:
            return refusal(gate, message.id)
        flight.gates.append(gate)  # if the request is cancelled, its fault (dispatch)
        try:
            forwarded = self._forwarded_params(message)
            for key in RETRY_FIELDS:
                forwarded.pop(key, None)
            forwarded.update(
                await gate_input_responses(
                    self.sessions, session, retried(message.params), server=name
                )
            )
            reply = await self.relay.forward(session, flight, name, kind_method, forwarded)
        except UpstreamError as exc:
            flight.gates.remove(gate)
            await fail_gate(self.sessions, session, gate, str(exc), message.method or "")
            return exc.to_jsonrpc(message.id)
        reply = await govern_input_required(
            self.sessions, session, reply, server=name, request_id=message.id, call_id=gate.call_id
        )
        answer = {"jsonrpc": "2.0", "id": message.id, **_answer_of(reply)}
        passed = await close_gate(self.sessions, session, gate, answer)
        flight.gates.remove(gate)
        return passed

    async def _failed(
        self, message: Message, session: GatewaySession, failure: UpstreamError
    ) -> dict[str, Any]:
        """An upstream failure is a fault of the session, recorded like a tool call's."""
        async with self.sessions.durably():
            session.evidence.recorder.fault(error=str(failure), stage=message.method or "")
        return failure.to_jsonrpc(message.id)

    @staticmethod
    def _forwarded_params(message: Message) -> dict[str, Any]:
        params = {key: value for key, value in message.params.items() if key != "_meta"}
        meta = forwardable_meta(message.params.get("_meta"))
        if meta is not None:
            params["_meta"] = meta
        return params


def _answer_of(reply: dict[str, Any]) -> dict[str, Any]:
    if "result" in reply:
        return {"result": reply["result"]}
    return {"error": reply.get("error")}
