"""The input a 2026-07-28 upstream asks for in its results, governed like the requests it
stands for.

An `input_required` result carries server-to-client requests in disguise
(`inputRequests`: sampling, elicitation, roots), which the client answers by retrying the
original request with `inputResponses` under the same keys. Each input request passes its
own gate (`create_message`, `elicit` or `list_roots`) before the client sees it; the gate
stays open in the session, keyed by (upstream, key), until the retry brings its answer,
which passes `close_gate` (redacted as the permit says, outcome durable) before the
upstream is sent what it returned.

A refused input request refuses the whole answer (the JSON-RPC error of its gate): an
input response has no error shape in the revision, and the upstream holds no state
between the rounds (the client does, in `requestState`), so there is nobody upstream to
tell and nothing to leave half-answered. The answer's other input requests, already
decided, end with a fault. An input response for which the session has no open gate
(never asked, already answered, or of a session since closed) is not forwarded: the
upstream asks again, through a gate, if it still needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cmcp_cli.gateway.enforcement.messages import (
    Gate,
    close_gate,
    fail_gate,
    open_gate,
    refusal,
    server_request_kind,
)
from cmcp_cli.gateway.relay.sessions import GatewaySession, SessionRegistry
from cmcp_cli.policy.request import MessageKind
from cmcp_cli.wire.jsonrpc import Code, RequestId, error

# Fields of a retried request that answer an input_required result.
RETRY_FIELDS = ("inputResponses", "requestState")
INPUT_STAGE = "input"  # the stage of faults of input requests


def retried(params: Mapping[str, Any]) -> dict[str, Any]:
    """What a retry of an input_required request carries back, as the client sent it."""
    return {key: params[key] for key in RETRY_FIELDS if key in params}


def input_requests(answer: Mapping[str, Any]) -> dict[str, Any] | None:
    """The input requests of an `input_required` result, or None for any other answer."""
    found = answer.get("result")
    if not isinstance(found, Mapping) or found.get("resultType") != "input_required":
        return None
    requests = found.get("inputRequests")
    return dict(requests) if isinstance(requests, Mapping) else {}


async def govern_input_required(
    sessions: SessionRegistry,
    session: GatewaySession,
    answer: dict[str, Any],
    *,
    server: str,
    request_id: RequestId | None,
    call_id: str | None,
) -> dict[str, Any]:
    """`answer`, unless it asks the client for input that is not to be asked: then the
    JSON-RPC error to answer the client's request with instead."""
    requests = input_requests(answer)
    if not requests:
        return answer
    asked: dict[str, tuple[MessageKind, Mapping[str, Any]]] = {}
    for key, request in requests.items():
        method = request.get("method") if isinstance(request, Mapping) else None
        kind = server_request_kind(method) if isinstance(method, str) else None
        if kind is None:
            return error(
                request_id,
                Code.POLICY_DENIED,
                f"upstream {server!r} asked for input {key!r} of an unknown kind "
                f"({method!r}); the gateway relays sampling, elicitation and roots only",
            )
        params = request.get("params")
        asked[key] = (kind, params if isinstance(params, Mapping) else {})
    opened: dict[str, Gate] = {}
    for key, (kind, params) in asked.items():
        opened[key] = await open_gate(
            sessions,
            session,
            kind=kind,
            server=server,
            target=server,
            params=params,
            related_call_id=call_id,
        )
    refused = next((gate for gate in opened.values() if not gate.forwarded), None)
    if refused is not None:
        for key, gate in opened.items():
            if gate.forwarded:
                denied = f"{refused.kind.value} {refused.call_id}"
                why = f"input {key!r} was not asked: {denied} of the same answer was denied"
                await fail_gate(sessions, session, gate, why, INPUT_STAGE)
        return refusal(refused, request_id)
    for key, gate in opened.items():
        superseded = session.awaiting_input.pop((server, key), None)
        if superseded is not None:
            why = f"input {key!r} was asked again before the client answered it"
            await fail_gate(sessions, session, superseded, why, INPUT_STAGE)
        session.awaiting_input[(server, key)] = gate
    return answer


async def gate_input_responses(
    sessions: SessionRegistry,
    session: GatewaySession,
    retry: Mapping[str, Any],
    *,
    server: str,
) -> dict[str, Any]:
    """What the upstream is sent of a retry's fields: each input response through the gate
    its input request opened (redacted as its permit says, its outcome durable); one the
    session has no open gate for, or that is not an object, is left out."""
    sent = {key: value for key, value in retry.items() if key != "inputResponses"}
    responses = retry.get("inputResponses")
    if not isinstance(responses, Mapping):
        return sent
    passed: dict[str, Any] = {}
    for key, response in responses.items():
        gate = session.awaiting_input.pop((server, key), None)
        if gate is None:
            continue
        answered = await close_gate(sessions, session, gate, {"result": response})
        if isinstance(answered.get("result"), Mapping):
            passed[key] = answered["result"]
    sent["inputResponses"] = passed
    return sent
