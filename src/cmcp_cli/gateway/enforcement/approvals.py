"""Operator approvals for escalated calls: single-use, expiring, bound to one exact request.

A call whose decision is `escalate` is held: the agent is told an approval id, and the
call does not run. An operator approves or rejects that id. The agent then repeats the
call; it runs only if it is the same session, the same request (`request_sha256`, the
JCS digest of tool name and arguments) and the same workflow id (which the policy also
decides on, so an approval given under one workflow never runs a call under another), the
approval is still within its lifetime, and it
has not been used. Any other request, even one differing in a single argument, is held
again. Approvals live in memory: a restarted gateway has none, so nothing approved before
a restart can run after it.
"""

from __future__ import annotations

import enum
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cmcp_cli.evidence.session import EscalationHandler
from cmcp_cli.policy.decision import Decision


class ApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    USED = "used"
    EXPIRED = "expired"


class ApprovalError(Exception):
    """An operator's decision that cannot be taken, with the HTTP status to answer."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Approval:
    id: str
    session_id: str
    agent: str
    call_id: str  # the call that was held
    tool: str
    request_sha256: str
    reasons: tuple[str, ...]
    policy_ids: tuple[str, ...]
    created_at: float  # wall clock, for people
    expires_at: float  # wall clock
    status: ApprovalStatus = ApprovalStatus.PENDING
    note: str = ""
    workflow_id: str = ""  # the held call's `context.workflow_id`; "" for none

    def to_json(self) -> dict[str, Any]:
        return {
            "approval_id": self.id,
            "status": self.status.value,
            "session_id": self.session_id,
            "agent": self.agent,
            "call_id": self.call_id,
            "tool": self.tool,
            "request_sha256": self.request_sha256,
            "workflow_id": self.workflow_id,
            "reasons": list(self.reasons),
            "policy_ids": list(self.policy_ids),
            "created_at": int(self.created_at),
            "expires_at": int(self.expires_at),
            "note": self.note,
        }


class ApprovalDesk:
    """Every approval the gateway has issued. Thread-safe: the evidence threads consume
    approvals while the event loop issues and decides them."""

    def __init__(self, ttl_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._approvals: dict[str, Approval] = {}

    def hold(
        self,
        *,
        session_id: str,
        agent: str,
        call_id: str,
        tool: str,
        request_sha256: str,
        reasons: tuple[str, ...],
        policy_ids: tuple[str, ...],
        workflow_id: str = "",
    ) -> Approval:
        """A pending approval for a held call; an identical request already waiting in the
        same session gets the same approval, so a retrying agent does not pile them up."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            for approval in self._approvals.values():
                if (
                    approval.status is ApprovalStatus.PENDING
                    and approval.session_id == session_id
                    and approval.request_sha256 == request_sha256
                    and approval.workflow_id == workflow_id
                ):
                    return approval
            approval = Approval(
                id=secrets.token_urlsafe(18),
                session_id=session_id,
                agent=agent,
                call_id=call_id,
                tool=tool,
                request_sha256=request_sha256,
                reasons=reasons,
                policy_ids=policy_ids,
                created_at=now,
                expires_at=now + self.ttl_seconds,
                workflow_id=workflow_id,
            )
            self._approvals[approval.id] = approval
            return approval

    def escalation(
        self, *, session_id: str, agent: str, call_id: str, tool: str, workflow_id: str
    ) -> EscalationHandler:
        """What an escalated call does: run on an operator's approval of this exact request
        under this workflow id, else wait under a (new or still pending) approval id."""

        def escalate(decision: Decision, request_sha256: str) -> tuple[dict[str, Any], bool]:
            approved = self.consume(session_id, request_sha256, workflow_id)
            if approved is not None:
                return {"approval_id": approved.id, "status": "approved"}, True
            held = self.hold(
                session_id=session_id,
                agent=agent,
                call_id=call_id,
                tool=tool,
                request_sha256=request_sha256,
                reasons=decision.escalation_reasons,
                policy_ids=decision.policy_ids,
                workflow_id=workflow_id,
            )
            expires_at = int(held.expires_at)
            return {"approval_id": held.id, "status": "pending", "expires_at": expires_at}, False

        return escalate

    def decide(self, approval_id: str, *, approve: bool, note: str = "") -> Approval:
        """The operator's decision on a pending approval; anything else is refused."""
        with self._lock:
            self._expire(self._clock())
            approval = self._approvals.get(approval_id)
            if approval is None:
                raise ApprovalError(f"no approval {approval_id!r}", status=404)
            if approval.status is not ApprovalStatus.PENDING:
                raise ApprovalError(
                    f"approval {approval_id!r} is {approval.status.value}, not pending",
                    status=409,
                )
            approval.status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
            approval.note = note
            return approval

    def consume(
        self, session_id: str, request_sha256: str, workflow_id: str = ""
    ) -> Approval | None:
        """Use the approval granted for exactly this request, in this session and under
        this workflow id, once."""
        with self._lock:
            self._expire(self._clock())
            for approval in self._approvals.values():
                if (
                    approval.status is ApprovalStatus.APPROVED
                    and approval.session_id == session_id
                    and approval.request_sha256 == request_sha256
                    and approval.workflow_id == workflow_id
                ):
                    approval.status = ApprovalStatus.USED
                    return approval
            return None

    def get(self, approval_id: str) -> Approval | None:
        with self._lock:
            self._expire(self._clock())
            return self._approvals.get(approval_id)

    def listing(self) -> list[Approval]:
        with self._lock:
            self._expire(self._clock())
            return sorted(self._approvals.values(), key=lambda a: a.created_at)

    def end_session(self, session_id: str) -> None:
        """A closed session's approvals can never be used: forget them."""
        with self._lock:
            for approval_id in [
                a.id for a in self._approvals.values() if a.session_id == session_id
            ]:
                del self._approvals[approval_id]

    def _expire(self, now: float) -> None:
        for approval in self._approvals.values():
            if (
                approval.status in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED)
                and now >= approval.expires_at
            ):
                approval.status = ApprovalStatus.EXPIRED
