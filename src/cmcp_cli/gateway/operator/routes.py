"""Routes for people and tooling around the gateway: approvals, audit export, metrics.

Approving a call needs the operator token. A session's audit chain, like its claim, is
read by the session's own agent and the operator (`readable`, the one rule for both); an
agent may read the state of an approval for its own session (to know when to repeat the
call). Metrics: aggregate counters for any authenticated caller, per-agent detail for the
operator only.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import msgspec

from cmcp_cli.audit.store import iter_lines
from cmcp_cli.gateway.enforcement.approvals import ApprovalError, ApprovalStatus
from cmcp_cli.gateway.relay.metrics import CONTENT_TYPE, AgentLoad
from cmcp_cli.gateway.relay.sessions import SessionRegistry
from cmcp_cli.gateway.runtime import Caller, GatewayRuntime
from cmcp_cli.wire import asgi
from cmcp_cli.wire.asgi import Receive, Scope, Send

_APPROVAL_PATH = re.compile(r"/approvals/(?P<id>[A-Za-z0-9_-]{1,64})")
_AUDIT_PATH = re.compile(r"/audit/(?P<id>[A-Za-z0-9_-]{1,64})")
_MAX_DECISION_BYTES = 16 * 1024
_NDJSON = "application/x-ndjson"


class _OperatorDecision(msgspec.Struct, forbid_unknown_fields=True):
    decision: str
    note: str = ""


class OperatorRoutes:
    def __init__(self, runtime: GatewayRuntime, sessions: SessionRegistry) -> None:
        self.runtime = runtime
        self.sessions = sessions

    async def route(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request if it is one of these routes; False when it is not."""
        path, method = scope["path"], scope["method"]
        if path == "/metrics" and method == "GET":
            await self._metrics(scope, send)
        elif path == "/approvals" and method == "GET":
            await self._list_approvals(scope, send)
        elif match := _APPROVAL_PATH.fullmatch(path):
            if method == "POST":
                await self._decide(scope, receive, send, match.group("id"))
            elif method == "GET":
                await self._approval(scope, send, match.group("id"))
            else:
                await asgi.send_json(send, 405, {"error": f"{method} is not served on {path}"})
        elif (match := _AUDIT_PATH.fullmatch(path)) and method == "GET":
            await self._audit(scope, send, match.group("id"))
        else:
            return False
        return True

    async def _metrics(self, scope: Scope, send: Send) -> None:
        caller = self.caller(scope)
        if not caller.authenticated:
            await _unauthorized(send, "a valid bearer token is required")
            return
        pending = Counter(
            approval.agent
            for approval in self.sessions.approvals.listing()
            if approval.status is ApprovalStatus.PENDING
        )
        load = AgentLoad(self.sessions.open_by_agent(), pending) if caller.operator else None
        anchors = self.sessions.anchors
        body = self.sessions.metrics.render(
            open_sessions=len(self.sessions),
            pending_approvals=pending.total(),
            agents=load,
            anchoring=() if anchors is None else anchors.status().metric_lines(),
        )
        await asgi.send_bytes(send, 200, body, content_type=CONTENT_TYPE)

    async def _list_approvals(self, scope: Scope, send: Send) -> None:
        if not self._is_operator(scope):
            await _unauthorized(send, "listing approvals needs the operator token")
            return
        listing = [approval.to_json() for approval in self.sessions.approvals.listing()]
        await asgi.send_json(send, 200, {"approvals": listing})

    async def _approval(self, scope: Scope, send: Send, approval_id: str) -> None:
        approval = self.sessions.approvals.get(approval_id)
        agent = self._agent(scope)
        if not self._is_operator(scope) and (approval is None or approval.agent != agent):
            if agent is None:
                await _unauthorized(send, "a valid bearer token is required")
                return
            approval = None  # another agent's approval does not exist for this caller
        if approval is None:
            await asgi.send_json(send, 404, {"error": f"no approval {approval_id!r}"})
            return
        await asgi.send_json(send, 200, approval.to_json())

    async def _decide(self, scope: Scope, receive: Receive, send: Send, approval_id: str) -> None:
        if not self._is_operator(scope):
            await _unauthorized(send, "approving or rejecting a call needs the operator token")
            return
        try:
            body = await asgi.read_body(receive, _MAX_DECISION_BYTES)
            decision = msgspec.json.decode(body, type=_OperatorDecision)
        except asgi.BodyTooLargeError:
            await asgi.send_json(send, 413, {"error": f"body exceeds {_MAX_DECISION_BYTES} bytes"})
            return
        except msgspec.DecodeError as exc:
            await _bad_decision(send, str(exc))
            return
        if decision.decision not in ("approve", "reject"):
            await _bad_decision(send, f"decision {decision.decision!r} is unknown")
            return
        try:
            approval = self.sessions.approvals.decide(
                approval_id, approve=decision.decision == "approve", note=decision.note[:500]
            )
        except ApprovalError as exc:
            await asgi.send_json(send, exc.status, {"error": str(exc)})
            return
        await asgi.send_json(send, 200, approval.to_json())

    async def readable(
        self, scope: Scope, send: Send, session_id: str | None, missing: str
    ) -> bool:
        """Whether the caller may read this session's claim or audit chain. When not, the
        refusal is sent: 401 without a valid token; to an agent the session is not its
        own, the same 404 (`missing`) as for a session that does not exist (or None: no
        session named), so probing ids tells it nothing."""
        caller = self.caller(scope)
        if not caller.authenticated:
            await _unauthorized(send, "a valid bearer token is required")
            return False
        if session_id is None or not await self.sessions.readable_by(caller, session_id):
            await asgi.send_json(send, 404, {"error": missing})
            return False
        return True

    def caller(self, scope: Scope) -> Caller:
        return self.runtime.credentials.caller(asgi.bearer_token(scope))

    async def _audit(self, scope: Scope, send: Send, session_id: str) -> None:
        missing = f"no audit entries for {session_id!r}"
        if not await self.readable(scope, send, session_id, missing):
            return
        path = self.runtime.config.audit.path
        lines = await self.sessions.in_thread(lambda: list(iter_lines(path, session_id)))
        if not lines:
            await asgi.send_json(send, 404, {"error": missing})
            return
        body = b"".join(line + b"\n" for line in lines)
        await asgi.send_bytes(send, 200, body, content_type=_NDJSON)

    def _is_operator(self, scope: Scope) -> bool:
        return self.runtime.credentials.is_operator(asgi.bearer_token(scope))

    def _agent(self, scope: Scope) -> str | None:
        return self.runtime.credentials.agent_for(asgi.bearer_token(scope))


async def _unauthorized(send: Send, message: str) -> None:
    await asgi.send_json(
        send, 401, {"error": message}, headers={"www-authenticate": 'Bearer realm="cmcp"'}
    )


async def _bad_decision(send: Send, problem: str) -> None:
    example: dict[str, Any] = {"decision": "approve", "note": "checked with the account owner"}
    await asgi.send_json(
        send,
        400,
        {"error": f"the body is not an operator decision: {problem}", "example": example},
    )
