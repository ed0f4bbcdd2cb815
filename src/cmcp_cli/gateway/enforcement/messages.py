"""Governing one MCP message other than a tool call: decide, record, relay, record.

Each governed message passes a gate. `open_gate` decides it with Cedar under its own
action (`MessageKind`) and makes the decision durable before it returns, so nothing is
relayed before its decision is on disk. A gate that does not forward is answered with
`refusal`. An answer to a forwarded message goes through `close_gate`, which redacts it
as the permit's `@redact` says and makes the outcome durable before returning what may
be passed on; a message that fails on the way is ended with `fail_gate` (a fault entry
of the same call id and kind). Client-initiated messages (`list_tools`, `read_resource`,
`get_prompt`) and server-initiated ones (`create_message`, `elicit`, `list_roots`, with
the id of the tool call they belong to) pass the same gates.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from cmcp_cli.config import CmcpConfig
from cmcp_cli.evidence.session import CallVerdict, EvidenceSession
from cmcp_cli.gateway.enforcement.redaction import redact_answer
from cmcp_cli.gateway.enforcement.wiring import server_data_class
from cmcp_cli.policy.decision import Effect
from cmcp_cli.policy.engine import Authorizer
from cmcp_cli.policy.request import KIND_METHODS, MessageKind, ToolResource
from cmcp_cli.wire.jsonrpc import Code, RequestId, error

# The requests an upstream may send to the client, by MCP method: each passes a gate
# (target: the upstream's name) before it reaches the client.
SERVER_REQUEST_KINDS: Mapping[str, MessageKind] = {
    KIND_METHODS[kind]: kind for kind in MessageKind if kind.server_initiated
}


def server_request_kind(method: str) -> MessageKind | None:
    """The kind of a request an upstream sent (`sampling/createMessage` is
    `create_message`, ...); None for a method that moves no data to govern (`ping`)."""
    return SERVER_REQUEST_KINDS.get(method)


class GatePolicy(Protocol):
    """The policy a session was opened under."""

    @property
    def authorizer(self) -> Authorizer: ...


class GateRuntime(Protocol):
    """What a gate reads of the gateway runtime."""

    @property
    def tools(self) -> Mapping[str, ToolResource]: ...
    @property
    def config(self) -> CmcpConfig: ...


class GateRegistry(Protocol):
    """The session registry: the runtime, and a block whose records are durable on exit."""

    @property
    def runtime(self) -> GateRuntime: ...
    def durably(self) -> AbstractAsyncContextManager[None]: ...


class GateSession(Protocol):
    """A client session: its agent, its evidence chain, its policy and its call ids."""

    @property
    def agent(self) -> str: ...
    @property
    def policy(self) -> GatePolicy: ...
    @property
    def evidence(self) -> EvidenceSession: ...
    def next_call_id(self) -> str: ...


@dataclass(frozen=True)
class Gate:
    """One governed message in flight."""

    call_id: str
    kind: MessageKind
    server: str
    target: str
    verdict: CallVerdict
    started_ns: int

    @property
    def forwarded(self) -> bool:
        """Whether the message goes on, under the session's enforcement mode."""
        return self.verdict.forwarded


async def open_gate(
    sessions: GateRegistry,
    session: GateSession,
    *,
    kind: MessageKind,
    server: str,
    target: str,
    params: Mapping[str, Any],
    related_call_id: str | None = None,
) -> Gate:
    """Decide one message and make the decision durable before returning.

    `server` is the upstream the message goes to or comes from; `target` the resource
    URI or prompt name (for server-wide kinds, the server); `params` the message's MCP
    params as received; `related_call_id` the tool call a server-initiated request was
    sent during, if any."""
    if kind is MessageKind.CALL_TOOL:
        raise ValueError("tool calls are governed by the tools/call path, not a gate")
    runtime = sessions.runtime
    data_class = server_data_class(
        runtime.tools.values(), server, runtime.config.policy.data_class_order
    )
    call_id = session.next_call_id()
    async with sessions.durably():
        verdict = session.evidence.decide_message(
            session.policy.authorizer,
            call_id=call_id,
            agent_id=session.agent,
            kind=kind,
            server=server,
            target=target,
            params=params,
            data_class=data_class,
            related_call_id=related_call_id or "",
        )
    return Gate(call_id, kind, server, target, verdict, time.perf_counter_ns())


def refusal(gate: Gate, request_id: RequestId | None) -> dict[str, Any]:
    """The JSON-RPC error for a message its gate does not forward."""
    decision = gate.verdict.decision
    reasons = decision.escalation_reasons if decision.effect is Effect.ESCALATE else ()
    text = "; ".join(reasons or decision.reasons)
    data = {
        "decision": decision.effect.value,
        "call_id": gate.call_id,
        "kind": gate.kind.value,
        "policy_ids": list(decision.policy_ids),
        "reasons": list(decision.reasons),
    }
    return error(
        request_id,
        Code.POLICY_DENIED,
        f"{KIND_METHODS[gate.kind]} ({gate.target}) was denied by policy: {text}",
        data,
    )


async def close_gate(
    sessions: GateRegistry, session: GateSession, gate: Gate, answer: Mapping[str, Any]
) -> dict[str, Any]:
    """Redact `answer["result"]` as the permit's `@redact` says, make the outcome durable,
    and return the (possibly redacted) JSON-RPC answer to pass on. An error answer is
    recorded and passed on as it is."""
    redactions: dict[str, int] = {}
    passed = dict(answer)
    found = answer.get("result")
    if isinstance(found, Mapping):
        if gate.verdict.decision.redacts:
            found, redactions = redact_answer(
                gate.kind.value, found, gate.verdict.decision.redaction
            )
            passed["result"] = found
        outcome: Mapping[str, Any] = found
    else:
        outcome = {"error": answer.get("error")}
    async with sessions.durably():
        session.evidence.outcome(
            call_id=gate.call_id,
            response=outcome,
            latency_us=(time.perf_counter_ns() - gate.started_ns) // 1000,
            redactions=redactions,
        )
    return passed


async def fail_gate(
    sessions: GateRegistry, session: GateSession, gate: Gate, error_text: str, stage: str
) -> None:
    """Record that a forwarded message failed (`stage`: where), as a fault of its call."""
    async with sessions.durably():
        session.evidence.recorder.fault(
            error=error_text, stage=stage, call_id=gate.call_id, kind=gate.kind.value
        )
