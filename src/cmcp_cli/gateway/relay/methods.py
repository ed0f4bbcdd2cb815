"""The methods a server may implement beyond tools and listings, relayed to the upstream
that serves them: completion, logging level, resource subscriptions.

The gateway advertises a capability only when some upstream does (as each advertised it
when its conversation opened; `logging` always, since setting a level on none is done),
routes a request by what it names (a prompt or resource template to the upstream that
listed it; with one upstream, to that one), and answers -32601 for what no upstream of
the session serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from cmcp_cli.gateway.relay.backchannel import Relay
from cmcp_cli.gateway.relay.exchange import Flight
from cmcp_cli.gateway.relay.input_gates import govern_input_required
from cmcp_cli.gateway.relay.sessions import GatewaySession, SessionRegistry
from cmcp_cli.gateway.runtime import GatewayRuntime
from cmcp_cli.gateway.upstream.api import UpstreamError
from cmcp_cli.wire.jsonrpc import Code, Message, RequestId, error
from cmcp_cli.wire.mcp import MODERN_PROTOCOLS, forwardable_meta

CAPABILITY_SECONDS = 0.75  # how long learning what to advertise may delay a handshake
SUBSCRIPTION_METHODS = frozenset({"resources/subscribe", "resources/unsubscribe"})
SERVED = frozenset({"completion/complete", "logging/setLevel", *SUBSCRIPTION_METHODS})
# completion reference type -> (its routing field, the listings that route it, in order)
COMPLETION_REFS = {
    "ref/prompt": ("name", ("prompts/list",)),
    "ref/resource": ("uri", ("resources/templates/list", "resources/list")),
}


def upstream_order(runtime: GatewayRuntime) -> list[str]:
    """The configured upstreams in the config's order: the order of merged listings."""
    ordered = [name for name in runtime.config.upstreams if name in runtime.upstreams]
    return ordered + [name for name in runtime.upstreams if name not in ordered]


def advertised(capabilities: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The gateway's capabilities, given those of the upstreams it has heard from."""
    known = list(capabilities)
    resources: dict[str, Any] = {"listChanged": True}
    if any(_flag(found, "resources", "subscribe") for found in known):
        resources["subscribe"] = True
    answer: dict[str, Any] = {
        "tools": {"listChanged": True},
        "resources": resources,
        "prompts": {"listChanged": True},
        "logging": {},
    }
    if any("completions" in found for found in known):
        answer["completions"] = {}
    return answer


def _flag(capabilities: Mapping[str, Any], kind: str, flag: str) -> bool:
    section = capabilities.get(kind)
    return isinstance(section, Mapping) and section.get(flag) is True


class Methods:
    def __init__(self, runtime: GatewayRuntime, sessions: SessionRegistry, relay: Relay) -> None:
        self.runtime = runtime
        self.sessions = sessions
        self.relay = relay  # every request upstream goes through it (streamed, cancellable)
        self.known: dict[str, Mapping[str, Any]] = {}  # upstream -> its last capabilities
        self._background: set[asyncio.Task[None]] = set()

    async def capabilities(self, session: GatewaySession | None) -> dict[str, Any]:
        """What to advertise: an upstream not heard from yet is opened in `session` first,
        waited for CAPABILITY_SECONDS at most so a slow upstream never holds up a handshake
        (the open goes on, never cut short: one that has not finished advertises nothing
        yet, and is known by the next handshake)."""
        pending = [name for name in upstream_order(self.runtime) if name not in self.known]
        if session is not None and pending:
            task = asyncio.create_task(self._learn_capabilities(session, pending))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            await asyncio.wait({task}, timeout=CAPABILITY_SECONDS)
        return advertised(self.known.values())

    async def _learn_capabilities(self, session: GatewaySession, names: list[str]) -> None:
        for name in names:
            await self.capabilities_of(session, name)

    async def handle(
        self, message: Message, session: GatewaySession, flight: Flight | None
    ) -> dict[str, Any]:
        method = message.method or ""
        if method == "completion/complete":
            return await self._complete(message, session, flight)
        if method == "logging/setLevel":
            return await self._set_level(message, session, flight)
        return await self._subscription(message, session, method, flight)

    async def govern_input_required(
        self,
        session: GatewaySession,
        answer: dict[str, Any],
        *,
        server: str,
        request_id: RequestId | None,
        call_id: str | None,
    ) -> dict[str, Any]:
        """An upstream's answer, unless it asks the client for input that is not to be
        asked: each input request of an `input_required` result is a sampling, elicitation
        or roots request in disguise, decided like one before the client sees it
        (`input_gates`); one that is refused, or of a kind the gateway does not know,
        refuses the whole answer."""
        return await govern_input_required(
            self.sessions, session, answer, server=server, request_id=request_id, call_id=call_id
        )

    async def subscribable(self, session: GatewaySession, name: str) -> bool:
        """Whether an upstream takes resources/subscribe in this session: it offers
        subscriptions, in a session of its own (2026-07-28 has listen streams instead)."""
        found = await self.capabilities_of(session, name)
        opened = session.upstreams.get(name)
        return (
            _flag(found, "resources", "subscribe")
            and opened is not None
            and opened.protocol_version not in MODERN_PROTOCOLS
        )

    def _offered_by_none(
        self, message: Message, session: GatewaySession, what: str
    ) -> dict[str, Any]:
        """No reachable upstream offers `what`: a method not found, unless an upstream
        could not be reached (it might offer it), which is an upstream failure."""
        opened = session.upstreams
        unreachable = [name for name in upstream_order(self.runtime) if name not in opened]
        if unreachable:
            return error(
                message.id,
                Code.UPSTREAM_FAILED,
                f"no reachable upstream offers {what}, and {', '.join(map(repr, unreachable))} "
                "cannot be reached: see the gateway's log, and the upstreams' own",
                {"upstreams": unreachable},
            )
        text = f"no upstream of this gateway offers {what}"
        return error(message.id, Code.METHOD_NOT_FOUND, text)

    async def capabilities_of(self, session: GatewaySession, name: str) -> Mapping[str, Any]:
        try:
            upstream = await self.sessions.upstream(session, name)
        except UpstreamError:
            return {}
        self.known[name] = upstream.server_capabilities
        return upstream.server_capabilities

    async def _complete(
        self, message: Message, session: GatewaySession, flight: Flight | None
    ) -> dict[str, Any]:
        ref = message.params.get("ref")
        kind = ref.get("type") if isinstance(ref, Mapping) else None
        if not isinstance(ref, Mapping) or kind not in COMPLETION_REFS:
            return error(
                message.id,
                Code.INVALID_PARAMS,
                "completion/complete needs params.ref of type ref/prompt or ref/resource",
            )
        field, listings = COMPLETION_REFS[kind]
        target = ref.get(field)
        if not isinstance(target, str):
            return error(message.id, Code.INVALID_PARAMS, f"params.ref.{field} must be a string")
        offering = [
            name
            for name in upstream_order(self.runtime)
            if "completions" in await self.capabilities_of(session, name)
        ]
        if not offering:
            return self._offered_by_none(message, session, "completions")
        name = await self.route(session, listings, target, offering)
        if name is None:
            return error(
                message.id,
                Code.INVALID_PARAMS,
                f"{kind} {target!r} is not listed by any upstream that offers completions",
                {field: target},
            )
        return await self._forward(message, session, name, flight)

    async def route(
        self,
        session: GatewaySession,
        listings: tuple[str, ...],
        target: str,
        candidates: list[str],
    ) -> str | None:
        """The upstream that listed `target` (listing first where the session has not),
        or the only candidate."""
        for listing in listings:
            found = session.routes.get((listing, target))
            if found is not None:
                return found if found in candidates else None
        for listing in listings:
            await self._learn(session, listing, candidates)
            found = session.routes.get((listing, target))
            if found is not None:
                return found
        return candidates[0] if len(candidates) == 1 else None

    async def _learn(self, session: GatewaySession, listing: str, names: list[str]) -> None:
        """Record which of `names` lists which items (their first pages)."""
        key, field = {
            "prompts/list": ("prompts", "name"),
            "resources/list": ("resources", "uri"),
            "resources/templates/list": ("resourceTemplates", "uriTemplate"),
        }[listing]
        for name in names:
            try:
                reply = await self.relay.forward(session, None, name, listing, {})
            except UpstreamError:
                continue
            found = reply.get("result")
            items = found.get(key) if isinstance(found, dict) else None
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict) and isinstance(item.get(field), str):
                    session.routes.setdefault((listing, item[field]), name)

    async def _set_level(
        self, message: Message, session: GatewaySession, flight: Flight | None
    ) -> dict[str, Any]:
        level = message.params.get("level")
        if not isinstance(level, str):
            return error(message.id, Code.INVALID_PARAMS, "logging/setLevel needs params.level")
        failed: list[str] = []
        for name in upstream_order(self.runtime):
            found = await self.capabilities_of(session, name)
            if name not in session.upstreams:
                failed.append(f"upstream {name!r} cannot be reached")
            if "logging" not in found:
                continue  # it sends no log messages, so there is no level to set
            try:
                reply = await self.relay.forward(
                    session, flight, name, "logging/setLevel", _forwarded(message)
                )
            except UpstreamError as exc:
                failed.append(str(exc))
                continue
            if "error" in reply:
                failed.append(f"upstream {name!r}: {_text(reply['error'])}")
        if failed:
            return error(
                message.id,
                Code.UPSTREAM_FAILED,
                f"the level {level!r} was not set everywhere: {'; '.join(failed)}",
            )
        return {"jsonrpc": "2.0", "id": message.id, "result": {}}

    async def _subscription(
        self, message: Message, session: GatewaySession, method: str, flight: Flight | None
    ) -> dict[str, Any]:
        uri = message.params.get("uri")
        if not isinstance(uri, str):
            return error(message.id, Code.INVALID_PARAMS, f"{method} needs params.uri")
        offering = [
            name for name in upstream_order(self.runtime) if await self.subscribable(session, name)
        ]
        if not offering:
            return self._offered_by_none(message, session, "resource subscriptions")
        name = await self.route(
            session, ("resources/list", "resources/templates/list"), uri, offering
        )
        if name is None:
            return error(
                message.id,
                Code.INVALID_PARAMS,
                f"uri {uri!r} is not listed by any upstream that offers subscriptions",
                {"uri": uri},
            )
        reply = await self._forward(message, session, name, flight)
        if "result" in reply:
            if method == "resources/subscribe":
                session.subscribed[uri] = name
            else:
                session.subscribed.pop(uri, None)
        return reply

    async def _forward(
        self, message: Message, session: GatewaySession, name: str, flight: Flight | None
    ) -> dict[str, Any]:
        try:
            reply = await self.relay.forward(
                session, flight, name, message.method or "", _forwarded(message)
            )
        except UpstreamError as exc:
            async with self.sessions.durably():
                session.evidence.recorder.fault(error=str(exc), stage=message.method or "")
            return exc.to_jsonrpc(message.id)
        if "result" in reply:
            return {"jsonrpc": "2.0", "id": message.id, "result": reply["result"]}
        return {"jsonrpc": "2.0", "id": message.id, "error": reply.get("error")}


def _forwarded(message: Message) -> dict[str, Any]:
    params = {key: value for key, value in message.params.items() if key != "_meta"}
    meta = forwardable_meta(message.params.get("_meta"))
    if meta is not None:
        params["_meta"] = meta
    return params


def _text(failure: object) -> str:
    if isinstance(failure, Mapping) and isinstance(failure.get("message"), str):
        return str(failure["message"])
    return repr(failure)
