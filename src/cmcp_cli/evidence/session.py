"""One session from key to claim, as the gateway runs it.

Opening a session generates the claim-signing key in memory, computes the DESIGN §6
binding, has the attestation provider collect evidence over it, and writes the
`session_start` entry that roots the chain in the bundle, catalog, key and platform. A
session opened with a verifier's challenge binds it (binding version 2) at its opening and
at every re-attestation, keeps it in `session_start`, and every claim states it as
`trace.runtime.nonce`.
Closing it writes `session_end` and signs the GatewayClaim from the chain's own state.
With claims per call, `issue_claim` records a `claim` entry after a call and fixes the
claim over the chain up to it; its signing is left to the caller (`PendingClaim.sign`), so
it can happen off the call's path. Each claim links the one before it (`previous_claim`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cmcp_cli.attestation.api import Evidence
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.audit.chain import ChainState
from cmcp_cli.audit.entry import SealedEntry
from cmcp_cli.audit.recorder import Clock, SessionRecorder, utc_now
from cmcp_cli.audit.session_record import (
    SessionPolicy,
    claim_facts,
    claim_record,
    end_record,
    start_record,
)
from cmcp_cli.audit.store import AuditStore
from cmcp_cli.claim.canonical import CanonicalizationError, canonical_sha256, sha256_tagged
from cmcp_cli.claim.challenge import challenge_problem
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import (
    SessionFacts,
    build_claim,
    claim_body,
    claim_digest,
)
from cmcp_cli.errors import CmcpError
from cmcp_cli.evidence.attesting import (
    GATEWAY_PROCESS,
    Attestor,
    attest_key,
)
from cmcp_cli.policy.decision import Decision, Effect
from cmcp_cli.policy.engine import Authorizer
from cmcp_cli.policy.request import (
    MessageFacts,
    MessageKind,
    ToolResource,
    message_request,
    message_target,
    tool_call_request,
)


@dataclass(frozen=True)
class CallVerdict:
    decision: Decision
    forwarded: bool  # whether the call goes upstream under the session's enforcement mode
    approval: Mapping[str, Any] | None = None  # an escalated call's approval, as recorded


# Given an escalated decision and the call's request_sha256: the approval fields to record
# with the decision, and whether an operator's approval lets this very call run.
EscalationHandler = Callable[[Decision, str], tuple[Mapping[str, Any], bool]]


@dataclass(frozen=True)
class ClosedSession:
    claim: dict[str, Any]
    # The key that signed the claim and its record, kept in memory only: it signs the
    # record's SCRAPI statement when the record is queued for anchoring (anchor_queue).
    key: ClaimKey | None = field(default=None, repr=False, compare=False)

    @property
    def trace_record(self) -> dict[str, Any]:
        """The standalone TRACE record: the claim's `trace`, signed on its own."""
        record: dict[str, Any] = self.claim["trace"]
        return record


@dataclass(frozen=True)
class PendingClaim:
    """A claim whose issuance is recorded (its `claim` entry) but which is not signed yet:
    every member is fixed; signing adds only the signature."""

    facts: SessionFacts
    key: ClaimKey

    @property
    def sequence_number(self) -> int:
        return self.facts.sequence_number

    def sign(self) -> ClosedSession:
        claim = build_claim(self.facts, self.key)
        return ClosedSession(claim=claim, key=self.key)


class EvidenceSession:
    def __init__(
        self,
        *,
        store: AuditStore,
        session_id: str,
        policy: SessionPolicy,
        attestor: Attestor,
        agent: str = "anonymous",
        process_id: str = GATEWAY_PROCESS,
        key: ClaimKey | None = None,
        gateway_digest: str | None = None,
        clock: Clock = utc_now,
        challenge: str | None = None,
    ) -> None:
        problem = None if challenge is None else challenge_problem(challenge)
        if problem is not None:
            raise CmcpError(
                f"the session's challenge cannot be bound: {problem}",
                hint="refuse the request that gave it before opening a session",
            )
        self.policy = policy
        self.challenge = challenge
        # Held while the evidence the claim carries is replaced (a re-attestation) and while
        # the claim is built, so a claim states the evidence of the newest attestation entry.
        self.evidence_lock = threading.Lock()
        self.key = key or ClaimKey.generate()
        self.gateway_digest = gateway_digest or installation_digest()
        self._clock = clock
        attested = attest_key(
            attestor,
            key=self.key,
            bundle_hash=policy.bundle_hash,
            catalog_hash=policy.catalog_hash,
            gateway_digest=self.gateway_digest,
            process_id=process_id,
            clock=clock,
            nonce=challenge,
        )
        self.binding = attested.binding
        self.evidence: Evidence = attested.evidence
        self.attestation: dict[str, Any] = attested.attestation
        self.issuer = attested.issuer
        self.recorder = SessionRecorder(store, session_id, clock=clock)
        self.start_fields = self.recorder.start(
            start_record(agent, policy, self.issuer, challenge)
        ).fields
        # The claims issued so far and the digest of the last (what the next links to),
        # changed together so the sequence and its links stay in chain order.
        self._issuing = threading.Lock()
        self.claims_issued = 0
        self._last_claim: str | None = None

    @property
    def session_id(self) -> str:
        return self.recorder.session_id

    @property
    def clock(self) -> Clock:
        return self._clock

    def decide_call(
        self,
        authorizer: Authorizer,
        *,
        call_id: str,
        agent_id: str,
        tool: ToolResource,
        arguments: Mapping[str, Any] | None,
        workflow_id: str = "",
        escalation: EscalationHandler | None = None,
    ) -> CallVerdict:
        """Decide one tool call and make the decision durable before anything is forwarded.

        The decision is the policy's; whether the call goes upstream also depends on the
        enforcement mode (advisory and silent forward what enforcing would block). The
        recorded request is exactly what Cedar saw, so a replay can decide it again. An
        escalated call runs under `enforcing` only when `escalation` says an operator
        approved this exact request; the approval is recorded with the decision.
        """
        state = self.recorder.state
        record: dict[str, Any] | None = None
        request_sha256, canonical = _request_digest(tool.name, arguments)
        if not canonical:
            decision = Decision.refused("tool arguments have no canonical JSON form")
        else:
            try:
                request = tool_call_request(
                    agent_id=agent_id,
                    tool=tool.name,
                    arguments=arguments,
                    data_class=tool.data_class,
                    session_max_sensitivity=state.max_data_class or self.policy.data_class_order[0],
                    workflow_id=workflow_id,
                    platform=self.evidence.platform,
                )
            except CmcpError as exc:
                decision = Decision.refused(exc.message)
            else:
                decision = authorizer.decide(request)
                if self.policy.record_inputs == "full":
                    record = request.to_record(tool)
        forwarded = decision.forwards or self.policy.enforcement_mode != "enforcing"
        approval: Mapping[str, Any] | None = None
        if decision.effect is Effect.ESCALATE and escalation is not None and not forwarded:
            approval, approved = escalation(decision, request_sha256)
            forwarded = forwarded or approved
        self.recorder.decision(
            call_id=call_id,
            tool=tool.name,
            decision=decision.effect.value,
            policy_ids=decision.policy_ids,
            request_sha256=request_sha256,
            data_class=tool.data_class,
            forwarded=forwarded,
            cedar_request=record,
            approval=approval,
        )
        return CallVerdict(decision=decision, forwarded=forwarded, approval=approval)

    def decide_message(
        self,
        authorizer: Authorizer,
        *,
        call_id: str,
        agent_id: str,
        kind: MessageKind,
        server: str,
        target: str,
        params: Mapping[str, Any],
        data_class: str,
        related_call_id: str = "",
    ) -> CallVerdict:
        """Decide one message other than a tool call (`kind`), about `target` on upstream
        `server` (the resource URI, the prompt name; the server itself for server-wide
        kinds), and make the decision durable before anything is forwarded.

        Like `decide_call`: the policy decides, the enforcement mode says whether the
        message goes on, and the recorded request is exactly what Cedar saw. An escalated
        message is not forwarded under `enforcing`: no operator approval exists for
        messages, so a hold is a deny until the agent repeats it after a policy change.
        """
        if kind is MessageKind.CALL_TOOL:
            raise ValueError("tool calls are decided by decide_call")
        state = self.recorder.state
        record: dict[str, Any] | None = None
        request_sha256, canonical = _message_digest(kind, server, target, params)
        if not canonical:
            decision = Decision.refused(f"{kind} params have no canonical JSON form")
        else:
            facts = MessageFacts(
                agent_id=agent_id,
                server=server,
                data_class=data_class,
                session_max_sensitivity=state.max_data_class or self.policy.data_class_order[0],
                platform=self.evidence.platform,
                call_id=related_call_id,
            )
            entity = message_target(kind, server=server, target=target, data_class=data_class)
            try:
                request = message_request(kind, facts, entity, params)
            except CmcpError as exc:
                decision = Decision.refused(exc.message)
            else:
                decision = authorizer.decide(request, entity)
                if self.policy.record_inputs == "full":
                    record = request.to_record(entity)
        forwarded = decision.forwards or self.policy.enforcement_mode != "enforcing"
        self.recorder.decision(
            call_id=call_id,
            tool=target,
            decision=decision.effect.value,
            policy_ids=decision.policy_ids,
            request_sha256=request_sha256,
            data_class=data_class,
            forwarded=forwarded,
            cedar_request=record,
            kind=kind.value,
            server=server,
            related_call_id=related_call_id,
        )
        return CallVerdict(decision=decision, forwarded=forwarded)

    def refuse_call(
        self, *, call_id: str, tool_name: str, arguments: Mapping[str, Any] | None, reason: str
    ) -> Decision:
        """Deny a call that never reaches Cedar (a tool outside the catalog, or one whose
        advertised definition drifted), under every enforcement mode, and record it like
        any other decision."""
        decision = Decision.refused(reason)
        self.recorder.decision(
            call_id=call_id,
            tool=tool_name,
            decision=decision.effect.value,
            policy_ids=(),
            request_sha256=_request_digest(tool_name, arguments)[0],
            data_class=UNCLASSIFIED,
            forwarded=False,
            cedar_request=None,
        )
        return decision

    def outcome(
        self,
        *,
        call_id: str,
        response: Mapping[str, Any],
        latency_us: int,
        redactions: Mapping[str, int] | None = None,
    ) -> None:
        """Record what a forwarded message (of any kind) returned, as it goes back to
        whoever asked, after any redaction; durable before the response is returned. Only
        its hash is kept."""
        self.recorder.outcome(
            call_id=call_id,
            response_sha256=_response_digest(response),
            latency_us=latency_us,
            redactions=redactions,
        )

    def issue_claim(self) -> PendingClaim:
        """Record a `claim` entry and fix the claim over the chain up to and including it:
        the next in the session's sequence, linked to the one before. The entry is durable
        when the recorder's append is (within `deferred_durability`, once its future is
        done); serve the claim only after that."""
        # the claim and its record agree on the newest evidence: no renewal between them
        with self._issuing, self.evidence_lock:
            record = claim_record(
                issued_at=int(self._clock().timestamp()),
                sequence_number=self.claims_issued + 1,
                previous=self._last_claim,
            )
            facts = self.recorder.claim(record, self._facts)
            self._issued(facts)
        return PendingClaim(facts, self.key)

    def close(self, *, reason: str = "closed") -> ClosedSession:
        """End the chain and sign the session's last claim, which continues the sequence of
        the claims issued per call. Every fact the claim states is one the chain records
        (`session_record.claim_facts`), so a verifier holding the log can check each of
        them."""
        # the claim and its record agree on the newest evidence: no renewal between them
        with self._issuing, self.evidence_lock:
            issued_at = int(self._clock().timestamp())
            end = self.recorder.end(
                end_record(
                    reason=reason,
                    issued_at=issued_at,
                    sequence_number=self.claims_issued + 1,
                    previous=self._last_claim,
                )
            )
            facts = self._facts(end, self.recorder.state)
            self._issued(facts)
        return PendingClaim(facts, self.key).sign()

    def _facts(self, issued: SealedEntry, state: ChainState) -> SessionFacts:
        return claim_facts(self.start_fields, issued.fields, state, self.attestation)

    def _issued(self, facts: SessionFacts) -> None:
        self.claims_issued = facts.sequence_number
        self._last_claim = claim_digest(claim_body(facts, self.key.public_jwk))


UNCLASSIFIED = "unclassified"  # the data class recorded for a call to a tool outside the catalog


def _message_digest(
    kind: MessageKind, server: str, target: str, params: Mapping[str, Any]
) -> tuple[str, bool]:
    """`request_sha256` of a message other than a tool call: the JCS digest of its kind,
    server, target and params (without `_meta`), and whether they have a canonical form."""
    body = {k: v for k, v in params.items() if k != "_meta"} if isinstance(params, Mapping) else {}
    request = {"kind": kind.value, "server": server, "target": target, "params": body}
    try:
        return canonical_sha256(request), True
    except CanonicalizationError:
        return sha256_tagged(json.dumps(request, sort_keys=True, default=str).encode()), False


def _request_digest(tool_name: str, arguments: Mapping[str, Any] | None) -> tuple[str, bool]:
    """`request_sha256`, the JCS digest of the call's name and arguments, and whether they
    have a canonical form. Those without (a lone surrogate, say) are still bound, through
    an ASCII-escaped serialisation; their call is denied."""
    request = {"name": tool_name, "arguments": dict(arguments or {})}
    try:
        return canonical_sha256(request), True
    except CanonicalizationError:
        return sha256_tagged(json.dumps(request, sort_keys=True).encode()), False


def _response_digest(response: Mapping[str, Any]) -> str:
    """`response_sha256`: the JCS digest of what the call returned, or, for an answer with
    no canonical form (an integer beyond 2**53, which JSON carries but JCS refuses), the
    digest of its sorted ASCII-escaped serialisation, so the outcome is still recorded."""
    try:
        return canonical_sha256(dict(response))
    except CanonicalizationError:
        return sha256_tagged(json.dumps(dict(response), sort_keys=True).encode())
