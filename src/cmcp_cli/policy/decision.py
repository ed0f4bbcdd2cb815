"""What a policy decides about one request, as a value with its reasons."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from cmcp_cli.policy.annotations import EMPTY_REDACTION, RedactionSpec


class Effect(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REDACT = "redact"  # allowed; the response is redacted as `Decision.redaction` says
    # held until an operator approves this exact call; it then runs under the permits that
    # apply to it without the @escalate forbids, redacted as they say
    ESCALATE = "escalate"


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    # the determining policies, sorted; an escalation's are the forbids that hold it and
    # the permits it runs under once approved
    policy_ids: tuple[str, ...]
    reasons: tuple[str, ...]  # why, in words an operator or auditor can act on
    errors: tuple[str, ...] = ()  # Cedar evaluation errors; any error makes the decision a deny
    redaction: RedactionSpec = EMPTY_REDACTION  # of a forwarded response; see `redacts`
    escalation_reasons: tuple[str, ...] = ()
    annotations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def forwards(self) -> bool:
        """Whether the call may reach the upstream under enforcement."""
        return self.effect in (Effect.ALLOW, Effect.REDACT)

    @property
    def redacts(self) -> bool:
        """Whether the response of a forwarded call is redacted: a `redact` decision, or
        an `escalate` whose permits carry `@redact` (an approval does not lift them)."""
        return bool(self.redaction.detectors or self.redaction.pointers)

    @classmethod
    def refused(cls, reason: str) -> Decision:
        """A deny for a request that could not be evaluated at all."""
        return cls(effect=Effect.DENY, policy_ids=(), reasons=(reason,), errors=(reason,))

    def to_json(self) -> dict[str, object]:
        return {
            "decision": self.effect.value,
            "policy_ids": list(self.policy_ids),
            "reasons": list(self.reasons),
            "errors": list(self.errors),
            "redaction": self.redaction.to_json() if self.redacts else None,
            "escalation_reasons": list(self.escalation_reasons),
        }
