"""MCP methods as the gateway answers them: decide, record, forward, record, return.

Every tools/call gets a Cedar decision made durable before anything is forwarded, and an
outcome (or fault) made durable before the answer goes back. A denial is an HTTP 200 with
a JSON-RPC error by default, so official clients keep their session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cmcp_cli import __version__
from cmcp_cli.audit.recorder import ChainEndedError
from cmcp_cli.audit.store import AuditStoreError
from cmcp_cli.catalog.model import unapproved_reason
from cmcp_cli.errors import CmcpError
from cmcp_cli.gateway.enforcement.messages import Gate, close_gate, fail_gate, open_gate
from cmcp_cli.gateway.enforcement.redaction import redact_result
from cmcp_cli.gateway.relay.backchannel import Relay
from cmcp_cli.gateway.relay.exchange import Flight, Outlet
from cmcp_cli.gateway.relay.freshness import stale_message
from cmcp_cli.gateway.relay.input_gates import gate_input_responses, govern_input_required, retried
from cmcp_cli.gateway.relay.listen import Listener
from cmcp_cli.gateway.relay.listening import LISTEN, Listening
from cmcp_cli.gateway.relay.methods import SERVED, Methods, upstream_order
from cmcp_cli.gateway.relay.passthrough import PASSED_THROUGH, Passthrough
from cmcp_cli.gateway.relay.sessions import GatewaySession, SessionRegistry
from cmcp_cli.gateway.runtime import GatewayRuntime
from cmcp_cli.gateway.upstream.api import KNOWN_PROTOCOLS, UpstreamError
from cmcp_cli.policy.decision import Decision, Effect
from cmcp_cli.policy.request import MessageKind, tool_call_request
from cmcp_cli.wire.jsonrpc import Code, Message, ProtocolError, error, result
from cmcp_cli.wire.mcp import MODERN_PROTOCOLS, SERVER_INFO_KEY, forwardable_meta

LATEST_PROTOCOL = KNOWN_PROTOCOLS[0]
SERVER_INFO = {"name": "cmcp-gateway", "version": __version__}
INSTRUCTIONS = "Tool calls pass through cMCP: each is decided by policy and audited."
DROPPED = "the request was cancelled by the gateway's server (its connection closed, or it stops)"
REQUEST_CANCELLED = -32800  # what MCP servers answer a request cancelled by its client
COUNTED_METHODS = frozenset({"ping", "tools/list", "tools/call", *PASSED_THROUGH, *SERVED})


@dataclass(frozen=True)
class Reply:
    """What to send back: a JSON-RPC message (or nothing, for a notification)."""

    message: dict[str, Any] | None
    status: int = 200
    session_id: str | None = None  # set on the response that opens a session
    outcome: str | None = None  # a tool call's decision, or "fault": for metrics
    stateless_session: str | None = None  # the session a 2026-07-28 request was answered in
    streamed: bool = False  # sent as an event stream even when it is the only message
    listener: Listener | None = None  # a subscriptions/listen stream: the answer is its events


def negotiate(requested: object) -> str:
    """The client's revision when the gateway speaks it, else the newest it does."""
    return (
        requested
        if isinstance(requested, str) and requested in KNOWN_PROTOCOLS
        else LATEST_PROTOCOL
    )


class Dispatcher:
    def __init__(self, runtime: GatewayRuntime, sessions: SessionRegistry) -> None:
        self.runtime = runtime
        self.sessions = sessions
        self.relay = Relay(sessions)
        self.methods = Methods(runtime, sessions, self.relay)
        self.listening = Listening(self.methods)
        self.passthrough = Passthrough(runtime, sessions, self.relay)
        # (agent, platform, bundle hash) -> tools
        self._callable: dict[tuple[str, str, str], frozenset[str]] = {}

    async def initialize(
        self, message: Message, agent: str, *, challenge: str | None = None
    ) -> Reply:
        """Open a session of `agent` (bound to the verifier's `challenge`, when given)."""
        version = negotiate(message.params.get("protocolVersion"))
        session = await self.sessions.open(agent, version, challenge=challenge)
        answer = {
            "protocolVersion": version,
            "capabilities": await self.methods.capabilities(session),
            "serverInfo": SERVER_INFO,
            "instructions": INSTRUCTIONS,
        }
        return Reply(result(message.id, answer), session_id=session.id)

    async def discover(self, message: Message, session: GatewaySession | None) -> Reply:
        """`server/discover` (2026-07-28): what an auto-mode client needs to skip initialize;
        the capabilities are those of the upstreams as `session` opens them."""
        answer = {
            "supportedVersions": list(MODERN_PROTOCOLS),
            "capabilities": await self.methods.capabilities(session),
            "instructions": INSTRUCTIONS,
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {SERVER_INFO_KEY: SERVER_INFO},
        }
        return Reply(result(message.id, answer))

    async def handle(
        self,
        message: Message,
        session: GatewaySession,
        outlet: Outlet | None = None,
        *,
        workflow_id: str = "",
    ) -> Reply:
        """Answer one message of the session; a request's messages from upstream go to
        `outlet` (its response) while it is in flight. `workflow_id` is the workflow the
        request says it belongs to (`context.workflow_id` of a tool call)."""
        if message.method is None:
            await self.relay.answered(message, session)
            return Reply(None, status=202)
        if message.id is None:
            await self.relay.notified(message, session)
            return Reply(None, status=202)
        if session.closed:
            return Reply(
                error(message.id, Code.SESSION_NOT_FOUND, "the session is closing"), status=404
            )
        if session.stale is not None:
            return Reply(error(message.id, Code.ATTESTATION_STALE, stale_message(session.stale)))
        flight = session.exchange.begin(message.id, outlet)
        try:
            return await self._request(message, session, flight, workflow_id)
        except asyncio.CancelledError:
            task = flight.task
            if flight.cancel_reason is not None and task is not None and task.uncancel() == 0:
                return await self._cancelled(message, session, flight, flight.cancel_reason)
            # Cancelled from outside (its connection dropped, the server stopping): a call
            # that may have gone upstream still gets its fault, then the cancellation goes on.
            if flight.call_id is not None and flight.cancellable:
                with contextlib.suppress(ChainEndedError, AuditStoreError):
                    async with self.sessions.durably():
                        session.evidence.recorder.fault(
                            error=DROPPED, stage="cancelled", call_id=flight.call_id
                        )
            await self._fail_gates(session, flight, DROPPED)
            raise
        finally:
            if session.exchange.pending:
                await self.relay.settle(session, flight)
            session.exchange.end(flight)

    async def _request(
        self, message: Message, session: GatewaySession, flight: Flight, workflow_id: str
    ) -> Reply:
        method = message.method or ""
        self.sessions.metrics.requests[method if method in COUNTED_METHODS else "other"] += 1
        if method == "ping":
            return Reply(result(message.id, {}))
        if method == "tools/list":
            return Reply(result(message.id, {"tools": await self.list_tools(session, flight)}))
        if method == "tools/call":
            started = time.perf_counter()
            call_id = flight.call_id = session.next_call_id()
            try:
                async with asyncio.timeout(self.runtime.config.limits.request_timeout_seconds):
                    reply = await self.call_tool(message, session, flight, workflow_id)
            except TimeoutError:
                reply = await self._timed_out(message, session, call_id)
            self.sessions.metrics.call(reply.outcome or "fault", time.perf_counter() - started)
            return reply
        if method in PASSED_THROUGH:
            return Reply(await self.passthrough.handle(message, session, flight))
        if method in SERVED:
            return Reply(await self.methods.handle(message, session, flight))
        if method == LISTEN:
            listener, refused = await self.listening.listen(message, session)
            return Reply(refused, listener=listener)
        return Reply(
            error(message.id, Code.METHOD_NOT_FOUND, f"{method} is not served by this gateway")
        )

    async def list_tools(
        self, session: GatewaySession, flight: Flight | None = None
    ) -> list[dict[str, Any]]:
        """The catalog's approved definitions of the tools the session's agent may call,
        among those each upstream still advertises as approved: a drifted, unlisted or
        forbidden tool is not shown, nor any tool of a server whose listing policy denies
        (`list_tools`, decided and recorded per server), nor of one that cannot be reached
        (a fault of that server's listing; the others are still listed). Upstreams in the
        config's order, each one's tools in the order it lists them."""
        gates = {}
        for name in upstream_order(self.runtime):
            if name not in self.runtime.catalog.servers:
                continue
            gate = await self._list_gate(session, name)
            if gate is not None:
                gates[name] = gate
                if flight is not None:
                    flight.gates.append(gate)
        allowed = self._callable_tools(session)
        listed: dict[str, list[dict[str, Any]]] = {name: [] for name in gates}
        for server in gates:
            for name in session.tool_order.get(server, ()):
                tool = self.runtime.catalog.tools.get(name)
                shown = name in session.advertised and name not in session.drifted
                if shown and name in allowed and tool is not None and tool.server == server:
                    listed[server].append(dict(tool.definition))
        for server, gate in gates.items():
            answer = {"result": {"tools": listed[server]}}
            await close_gate(self.sessions, session, gate, answer)
            if flight is not None:
                flight.gates.remove(gate)
        return [definition for server in gates for definition in listed[server]]

    async def _list_gate(self, session: GatewaySession, server: str) -> Gate | None:
        """Decide listing one server's tools; connect to it when allowed (which pins its
        catalog). None when policy denies it, or when the server cannot be reached (then
        a fault of the gate, so every forwarded listing ends in an outcome or a fault)."""
        gate = await open_gate(
            self.sessions,
            session,
            kind=MessageKind.LIST_TOOLS,
            server=server,
            target=server,
            params={},
        )
        if not gate.forwarded:
            return None
        try:
            await self.sessions.upstream(session, server)
        except UpstreamError as exc:
            await fail_gate(self.sessions, session, gate, str(exc), "connect")
            return None
        return gate

    def _callable_tools(self, session: GatewaySession) -> frozenset[str]:
        """The tools the policy does not deny this agent outright: decided once per agent
        with a call that has no arguments. A tool that policy permits only for certain
        arguments is therefore not listed (it can still be called, and is decided then);
        one that policy escalates is listed, since an operator may approve it."""
        platform = session.evidence.evidence.platform
        key = (session.agent, platform, session.policy.hash)
        known = self._callable.get(key)
        if known is not None:
            return known
        floor = self.runtime.config.policy.data_class_order[0]
        allowed = set()
        for tool in self.runtime.tools.values():
            try:
                request = tool_call_request(
                    agent_id=session.agent,
                    tool=tool.name,
                    arguments={},
                    data_class=tool.data_class,
                    session_max_sensitivity=floor,
                    platform=platform,
                )
            except CmcpError:
                continue
            if session.policy.authorizer.decide(request).effect is not Effect.DENY:
                allowed.add(tool.name)
        self._callable[key] = frozenset(allowed)
        return self._callable[key]

    async def call_tool(
        self, message: Message, session: GatewaySession, flight: Flight, workflow_id: str = ""
    ) -> Reply:
        params = message.params
        call_id = flight.call_id or session.next_call_id()
        name = params.get("name")
        arguments = params.get("arguments")
        if not isinstance(name, str) or not name:
            raise ProtocolError(
                Code.INVALID_PARAMS,
                "tools/call needs params.name",
                request_id=message.id,
                http_status=200,
            )
        if arguments is not None and not isinstance(arguments, dict):
            raise ProtocolError(
                Code.INVALID_PARAMS,
                "params.arguments must be an object",
                request_id=message.id,
                http_status=200,
            )
        evidence = session.evidence
        tool = self.runtime.tools.get(name)
        if tool is None:
            return await self._refuse(
                message,
                session,
                call_id,
                name=name,
                arguments=arguments,
                reason=unapproved_reason(self.runtime.catalog, name),
            )
        try:
            await self.sessions.upstream(session, tool.server)
        except UpstreamError as exc:
            return await self._fault(message, session, call_id, exc, stage="connect")
        if name in session.drifted:
            return await self._refuse(
                message,
                session,
                call_id,
                name=name,
                arguments=arguments,
                reason=f"{name!r} no longer matches its approved definition (catalog drift)",
                code=Code.TOOL_DRIFTED,
            )
        async with self.sessions.durably():  # the decision is durable before forwarding
            verdict = evidence.decide_call(
                session.policy.authorizer,
                call_id=call_id,
                agent_id=session.agent,
                tool=tool,
                arguments=arguments,
                workflow_id=workflow_id,
                escalation=self.sessions.approvals.escalation(
                    session_id=session.id,
                    agent=session.agent,
                    call_id=call_id,
                    tool=name,
                    workflow_id=workflow_id,
                ),
            )
        if not verdict.forwarded:
            return self._denied(message, call_id, verdict.decision, approval=verdict.approval)
        started = time.perf_counter_ns()
        forwarded: dict[str, Any] = {"name": name}
        if arguments is not None:
            forwarded["arguments"] = arguments
        meta = forwardable_meta(params.get("_meta"))
        if meta is not None:
            forwarded["_meta"] = meta
        forwarded.update(
            await gate_input_responses(self.sessions, session, retried(params), server=tool.server)
        )
        try:
            answer = await self.relay.forward(session, flight, tool.server, "tools/call", forwarded)
        except UpstreamError as exc:
            return await self._fault(message, session, call_id, exc, stage="forward")
        flight.cancellable = False  # the upstream ran it: its outcome is recorded
        answer = await govern_input_required(
            self.sessions,
            session,
            answer,
            server=tool.server,
            request_id=message.id,
            call_id=call_id,
        )
        redactions: dict[str, int] = {}
        outcome: dict[str, Any]
        if isinstance(answer.get("result"), dict):
            outcome = answer["result"]
            if verdict.decision.redacts:
                outcome, redactions = redact_result(outcome, verdict.decision.redaction)
            reply = result(message.id, outcome)
        else:
            outcome = {"error": answer.get("error")}
            reply = {"jsonrpc": "2.0", "id": message.id, "error": answer.get("error")}

        pending = None
        async with self.sessions.durably():  # the outcome is durable before the answer
            evidence.outcome(
                call_id=call_id,
                response=outcome,
                latency_us=(time.perf_counter_ns() - started) // 1000,
                redactions=redactions,
            )
            if self.sessions.per_call:  # its claim entry is durable before the answer too
                pending = evidence.issue_claim()
        if pending is not None:
            self.sessions.publish_claim(session, pending)
        return Reply(reply, outcome=verdict.decision.effect.value)

    async def _fault(
        self,
        message: Message,
        session: GatewaySession,
        call_id: str,
        failure: UpstreamError,
        *,
        stage: str,
    ) -> Reply:
        """Record an upstream failure as a fault of the call, and tell the agent."""
        async with self.sessions.durably():
            session.evidence.recorder.fault(error=str(failure), stage=stage, call_id=call_id)
        return Reply(failure.to_jsonrpc(message.id), outcome="fault")

    async def _cancelled(
        self, message: Message, session: GatewaySession, flight: Flight, reason: str
    ) -> Reply:
        """A request cancelled by the client or by the session's close: the fault of its
        call is recorded before anything else of it, and the client gets an answer."""
        if flight.gates and flight.call_id is None:  # the faults of its own messages
            await self._fail_gates(session, flight, reason)
        else:
            async with self.sessions.durably():
                session.evidence.recorder.fault(
                    error=reason, stage="cancelled", call_id=flight.call_id
                )
        if flight.call_id is not None:
            self.sessions.metrics.call("fault", 0.0)
        answer = error(message.id, REQUEST_CANCELLED, "request cancelled", {"reason": reason})
        # Always as an event: a client that cancelled may be leaving its session, and SDK
        # clients read a late answer on a stream without failing, but not a late JSON body.
        return Reply(answer, streamed=True)

    async def _fail_gates(self, session: GatewaySession, flight: Flight, reason: str) -> None:
        """A fault for each governed message the cancelled request forwarded and had not
        answered: forwarded, its outcome is unknown."""
        gates, flight.gates = flight.gates, []
        with contextlib.suppress(ChainEndedError, AuditStoreError):
            for gate in gates:
                await fail_gate(self.sessions, session, gate, reason, "cancelled")

    async def _timed_out(self, message: Message, session: GatewaySession, call_id: str) -> Reply:
        """A call that outlived limits.request_timeout_seconds: a fault of the call, and an
        error the agent can tell from a decision. An entry already queued (the decision)
        is still written, before the fault."""
        limit = self.runtime.config.limits.request_timeout_seconds
        text = f"the call took longer than {limit} s (limits.request_timeout_seconds)"
        async with self.sessions.durably():
            session.evidence.recorder.fault(error=text, stage="request", call_id=call_id)
        return Reply(error(message.id, Code.REQUEST_TIMEOUT, text), outcome="fault")

    async def _refuse(
        self,
        message: Message,
        session: GatewaySession,
        call_id: str,
        *,
        name: str,
        arguments: dict[str, Any] | None,
        reason: str,
        code: Code = Code.POLICY_DENIED,
    ) -> Reply:
        async with self.sessions.durably():
            decision = session.evidence.refuse_call(
                call_id=call_id, tool_name=name, arguments=arguments, reason=reason
            )
        return self._denied(message, call_id, decision, code)

    def _denied(
        self,
        message: Message,
        call_id: str,
        decision: Decision,
        code: Code = Code.POLICY_DENIED,
        *,
        approval: Mapping[str, Any] | None = None,
    ) -> Reply:
        escalated = decision.effect is Effect.ESCALATE
        reasons = "; ".join(decision.escalation_reasons if escalated else decision.reasons)
        data: dict[str, Any] = {
            "decision": decision.effect.value,
            "call_id": call_id,
            "policy_ids": list(decision.policy_ids),
            "reasons": list(decision.reasons),
        }
        if escalated and approval is not None:
            data["approval_id"] = approval["approval_id"]
            data["expires_at"] = approval["expires_at"]
            text = (
                f"the call needs an operator's approval ({reasons}); it is held as approval "
                f"{approval['approval_id']}: once an operator approves it, repeat this exact call"
            )
        else:
            text = f"the call was denied by policy: {reasons}"
        mode = self.runtime.config.policy.deny_response
        if mode == "tool-error":
            body = {
                "content": [{"type": "text", "text": text}],
                "isError": True,
                "_meta": {"cmcp": data},
            }
            return Reply(result(message.id, body), outcome=decision.effect.value)
        code = Code.APPROVAL_REQUIRED if escalated else code
        return Reply(
            error(message.id, code, text, data),
            status=403 if mode == "http-403" else 200,
            outcome=decision.effect.value,
        )
