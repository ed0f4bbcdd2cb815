"""Governance of server-initiated, data-moving messages (sampling, elicitation, roots).

PLACEHOLDER for the relay branch: it has the signatures the relay calls, lets every
message through and records nothing. The governance module that decides each message
with Cedar, records it and redacts the answer replaces this file; call sites use only
`open_gate`, `close_gate`, `refusal` and `fail_gate`.
"""

# ruff: noqa: ARG001
from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cmcp_cli.evidence.session import CallVerdict
from cmcp_cli.policy.decision import Decision
from cmcp_cli.wire.jsonrpc import Code, RequestId, error


class MessageKind(enum.StrEnum):
    CALL_TOOL = "call_tool"
    LIST_TOOLS = "list_tools"
    READ_RESOURCE = "read_resource"
    GET_PROMPT = "get_prompt"
    CREATE_MESSAGE = "create_message"
    ELICIT = "elicit"
    LIST_ROOTS = "list_roots"


class _Durable(Protocol):
    def durably(self) -> Any: ...


@dataclass(frozen=True)
class Gate:
    """One governed message in flight."""

    call_id: str
    kind: MessageKind
    verdict: CallVerdict
    started_ns: int

    @property
    def forwarded(self) -> bool:
        return self.verdict.forwarded


async def open_gate(
    sessions: _Durable,
    session: Any,
    *,
    kind: MessageKind,
    server: str,
    target: str,
    params: Mapping[str, Any],
    related_call_id: str | None,
) -> Gate:
    verdict = CallVerdict(decision=Decision.refused("placeholder"), forwarded=True)
    return Gate(session.next_call_id(), kind, verdict, time.perf_counter_ns())


def refusal(gate: Gate, request_id: RequestId) -> dict[str, Any]:
    return error(request_id, Code.POLICY_DENIED, f"{gate.kind} was denied by policy")


async def close_gate(
    sessions: _Durable, session: Any, gate: Gate, answer: dict[str, Any]
) -> dict[str, Any]:
    return answer


async def fail_gate(sessions: _Durable, session: Any, gate: Gate, error: str, stage: str) -> None:
    return None
