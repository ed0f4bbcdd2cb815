"""MCP methods as the gateway answers them: decide, record, forward, record, return.

Every tools/call gets a Cedar decision made durable before anything is forwarded, and an
outcome (or fault) made durable before the answer goes back. A denial is an HTTP 200 with
a JSON-RPC error by default, so official clients keep their session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cmcp_cli import __version__
from cmcp_cli.gateway.jsonrpc import Code, Message, ProtocolError, error, result
from cmcp_cli.gateway.redaction import redact_result
from cmcp_cli.gateway.runtime import GatewayRuntime
from cmcp_cli.gateway.sessions import GatewaySession, SessionRegistry
from cmcp_cli.gateway.upstream import KNOWN_PROTOCOLS, UpstreamError
from cmcp_cli.policy.decision import Decision, Effect

LATEST_PROTOCOL = KNOWN_PROTOCOLS[0]
SERVER_INFO = {"name": "cmcp-gateway", "version": __version__}


@dataclass(frozen=True)
class Reply:
    """What to send back: a JSON-RPC message (or nothing, for a notification)."""

    message: dict[str, Any] | None
    status: int = 200
    session_id: str | None = None  # set on the response that opens a session


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

    async def initialize(self, message: Message, agent: str) -> Reply:
        version = negotiate(message.params.get("protocolVersion"))
        session = await self.sessions.open(agent, version)
        answer = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": SERVER_INFO,
            "instructions": "Tool calls pass through cMCP: each is decided by policy and audited.",
        }
        return Reply(result(message.id, answer), session_id=session.id)

    async def handle(self, message: Message, session: GatewaySession) -> Reply:
        if message.method is None or message.is_notification:
            return Reply(None, status=202)  # responses and notifications: accepted
        method = message.method
        if method == "ping":
            return Reply(result(message.id, {}))
        if method == "tools/list":
            return Reply(result(message.id, {"tools": await self.list_tools(session)}))
        if method == "tools/call":
            return await self.call_tool(message, session)
        return Reply(
            error(message.id, Code.METHOD_NOT_FOUND, f"{method} is not served by this gateway")
        )

    async def list_tools(self, session: GatewaySession) -> list[dict[str, Any]]:
        """The catalog's approved definitions of the tools each upstream still advertises
        as approved: a drifted or unlisted tool is not shown."""
        for name in sorted(self.runtime.catalog.servers):
            await self.sessions.upstream(session, name)
        listed = []
        for name, tool in sorted(self.runtime.catalog.tools.items()):
            if name in session.advertised and name not in session.drifted:
                listed.append(dict(tool.definition))
        return listed

    async def call_tool(self, message: Message, session: GatewaySession) -> Reply:
        params = message.params
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
        call_id = session.next_call_id()
        evidence = session.evidence
        tool = self.runtime.tools.get(name)
        if tool is None:
            return await self._refuse(
                message,
                session,
                call_id,
                name=name,
                arguments=arguments,
                reason=f"{name!r} is not in the approved catalog",
            )
        try:
            upstream = await self.sessions.upstream(session, tool.server)
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
        verdict = await self.sessions.in_thread(
            evidence.decide_call,
            self.runtime.authorizer,
            call_id=call_id,
            agent_id=session.agent,
            tool=tool,
            arguments=arguments,
        )
        if not verdict.forwarded:
            return self._denied(message, call_id, verdict.decision)
        started = time.perf_counter_ns()
        forwarded: dict[str, Any] = {"name": name}
        if arguments is not None:
            forwarded["arguments"] = arguments
        if "_meta" in params:
            forwarded["_meta"] = params["_meta"]
        try:
            answer = await upstream.request("tools/call", forwarded)
        except UpstreamError as exc:
            return await self._fault(message, session, call_id, exc, stage="forward")
        redactions: dict[str, int] = {}
        outcome: dict[str, Any]
        if isinstance(answer.get("result"), dict):
            outcome = answer["result"]
            if verdict.decision.effect is Effect.REDACT:
                outcome, redactions = redact_result(outcome, verdict.decision.redaction)
            reply = result(message.id, outcome)
        else:
            outcome = {"error": answer.get("error")}
            reply = {"jsonrpc": "2.0", "id": message.id, "error": answer.get("error")}
        await self.sessions.in_thread(
            evidence.outcome,
            call_id=call_id,
            response=outcome,
            latency_us=(time.perf_counter_ns() - started) // 1000,
            redactions=redactions,
        )
        return Reply(reply)

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
        await self.sessions.in_thread(
            session.evidence.recorder.fault, error=str(failure), stage=stage, call_id=call_id
        )
        code = Code.UPSTREAM_TIMEOUT if failure.timed_out else Code.UPSTREAM_FAILED
        return Reply(error(message.id, code, str(failure), {"upstream": failure.upstream}))

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
        decision = await self.sessions.in_thread(
            session.evidence.refuse_call,
            call_id=call_id,
            tool_name=name,
            arguments=arguments,
            reason=reason,
        )
        return self._denied(message, call_id, decision, code)

    def _denied(
        self, message: Message, call_id: str, decision: Decision, code: Code = Code.POLICY_DENIED
    ) -> Reply:
        escalated = decision.effect is Effect.ESCALATE
        reasons = "; ".join(decision.escalation_reasons if escalated else decision.reasons)
        text = (
            f"the call needs an operator's approval: {reasons}"
            if escalated
            else f"the call was denied by policy: {reasons}"
        )
        data = {
            "decision": decision.effect.value,
            "call_id": call_id,
            "policy_ids": list(decision.policy_ids),
            "reasons": list(decision.reasons),
        }
        mode = self.runtime.config.policy.deny_response
        if mode == "tool-error":
            body = {
                "content": [{"type": "text", "text": text}],
                "isError": True,
                "_meta": {"cmcp": data},
            }
            return Reply(result(message.id, body))
        code = Code.APPROVAL_REQUIRED if escalated else code
        return Reply(error(message.id, code, text, data), status=403 if mode == "http-403" else 200)
