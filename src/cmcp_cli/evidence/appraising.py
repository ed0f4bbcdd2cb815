"""The gateway's own appraisal of the evidence it collects (TRACE `appraisal`).

In a hardware mode every collection of evidence (a session's open, each re-attestation, a
recovery) is appraised where it is collected, by the provider's own verifier given what
`cmcp verify` would be given (`TrustInputs`): the binding, the evidence's time, the pinned
measurements (`attestation.expected_measurement`), the roots, collateral, platform-policy
table and debug setting of `trace.appraisal`, the session's policy hash and the gateway's
digest; each device's evidence by its device provider's verifier likewise
(`verifier_trust`). The status follows from the checks alone: any failed check makes it
`contraindicated`; hardware-attested with no check skipped, `affirming`; else `warning`.

Software mode is never appraised (`none`): nothing there is hardware's to judge. Evidence
that is itself a third party's appraisal (an OPAQUE token) keeps that appraisal: the gateway
does not put its own name over another verifier's verdict.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cmcp_cli import __version__
from cmcp_cli.attestation.api import (
    Check,
    CheckStatus,
    Evidence,
    EvidenceVerdict,
    ProviderError,
    ProviderSpec,
    TrustInputs,
)
from cmcp_cli.attestation.platform_policy import PlatformPolicy, verifier_trust
from cmcp_cli.attestation.software import NAME as SOFTWARE_NAME
from cmcp_cli.attestation.software import PLATFORM as SOFTWARE_PLATFORM
from cmcp_cli.claim import appraisal as names
from cmcp_cli.errors import CmcpError

# How each status ranks against `trace.appraisal.required_status`: `none` (not appraised)
# and `contraindicated` meet only `any`.
_RANK: Final = {"none": 0, "contraindicated": 0, "warning": 1, "affirming": 2}
REQUIRED_RANK: Final = {"any": 0, "warning": 1, "affirming": 2}
MEASUREMENT_CHECK: Final = "measurement"


class AppraisalPolicyError(CmcpError):
    """The verifier refused the operator's platform-policy table (`ProviderError`): the
    evidence was not judged, so nothing is attested on it."""


@dataclass(frozen=True)
class AppraisalInputs:
    """What the gateway's appraisal trusts beside the pinned measurements: the contents of
    `trace.appraisal`, read once at start."""

    trust_roots: tuple[bytes, ...] = ()
    collateral: tuple[bytes, ...] = ()
    platform_policy: PlatformPolicy = field(default_factory=dict)
    platform_policy_dir: Path | None = None
    allow_debug: bool = False
    required_status: str = "any"
    # The files they came from, for the operator (`/readyz`, the start output).
    sources: Mapping[str, Any] = field(default_factory=dict)

    def policy_ref(self, provider: str, pins: Sequence[str]) -> str:
        return names.policy_ref(
            names.policy_document(
                provider=provider,
                expected_measurements=pins,
                trust_roots=self.trust_roots,
                collateral=self.collateral,
                platform_policy=self.platform_policy.get(provider, {}),
                allow_debug=self.allow_debug,
            )
        )


@dataclass(frozen=True)
class RuntimeAppraisal:
    """One appraisal of the evidence of one collection: its status and what it names."""

    status: str
    verifier: str
    policy_ref: str
    timestamp: int  # Unix seconds of the evidence's generated_at
    checks: tuple[Check, ...]

    @property
    def not_passed(self) -> tuple[Check, ...]:
        """The checks that failed or were skipped: why the status is not `affirming`."""
        return tuple(check for check in self.checks if check.status is not CheckStatus.PASS)

    def record(self) -> list[dict[str, str]]:
        """As the log keeps it beside the appraisal (`appraisal_checks`)."""
        return [check.to_json() for check in self.not_passed]

    def to_json(self, *, operator: bool) -> dict[str, Any]:
        """The appraisal and how many checks failed or were skipped; which ones and why
        (the host's state, to an attacker a map of what to aim at) only for the operator."""
        shown: dict[str, Any] = {
            "status": self.status,
            "verifier": self.verifier,
            "policy_ref": self.policy_ref,
            "timestamp": self.timestamp,
            "checks": len(self.checks),
            "failed": sum(check.status is CheckStatus.FAIL for check in self.checks),
            "skipped": sum(check.status is CheckStatus.SKIP for check in self.checks),
        }
        if operator:
            shown["not_passed"] = self.record()
        return shown


@dataclass
class AppraisalLedger:
    """The latest appraisal the gateway made, for `/readyz`; written from several threads."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _latest: RuntimeAppraisal | None = None
    made: int = 0

    def note(self, appraisal: RuntimeAppraisal) -> None:
        with self._lock:
            self._latest = appraisal
            self.made += 1

    @property
    def latest(self) -> RuntimeAppraisal | None:
        with self._lock:
            return self._latest


def below_required(status: str, required: str) -> bool:
    """Whether an appraisal `status` does not meet `trace.appraisal.required_status`."""
    return _RANK.get(status, 0) < REQUIRED_RANK[required]


def status_of(checks: Sequence[Check], hardware_attested: bool) -> str:
    """Any failed check: `contraindicated`; hardware-attested with none skipped: `affirming`;
    otherwise `warning` (something was not judged, or not to a pinned root)."""
    if any(check.status is CheckStatus.FAIL for check in checks):
        return "contraindicated"
    if hardware_attested and all(check.status is CheckStatus.PASS for check in checks):
        return "affirming"
    return "warning"


def better_than(status: str, other: str) -> bool:
    """Whether an appraisal `status` ranks above `other` (`contraindicated` and `none`
    rank lowest)."""
    return _RANK.get(status, 0) > _RANK.get(other, 0)


def unappraised_reason(spec: ProviderSpec) -> str | None:
    """Why the gateway never appraises the evidence of `spec`'s provider, or None when it
    does. The one predicate behind every decision (config checks, collection, `/readyz`):
    a software-only platform is never the gateway's to judge, and the providers that state
    a third party's appraisal (OPAQUE's token) are software-only platforms too."""
    if spec.platform != SOFTWARE_PLATFORM:
        return None
    if spec.name == SOFTWARE_NAME:
        return "software-only evidence is never appraised"
    return (
        f"the {spec.name} provider's evidence is software-only: it states its issuer's "
        "appraisal, which the gateway keeps and never appraises itself"
    )


def appraises(spec: ProviderSpec, evidence: Evidence) -> bool:
    """Whether the gateway appraises this evidence itself: evidence of a provider it
    appraises (`unappraised_reason`) that does not state a third party's appraisal."""
    return unappraised_reason(spec) is None and evidence.appraisal is None


@dataclass(frozen=True)
class Collected:
    """One collection's evidence, as the verifiers are given it."""

    spec: ProviderSpec
    evidence: Evidence
    devices: Sequence[tuple[ProviderSpec, Mapping[str, Any]]]  # each device's evidence
    binding: bytes
    generated_at: datetime
    bundle_hash: str
    gateway_digest: str


def appraise(
    collected: Collected, inputs: AppraisalInputs, pins: tuple[str, ...]
) -> RuntimeAppraisal:
    """Judge one collection's evidence as `cmcp verify` would with the same inputs. Raises
    `AppraisalPolicyError` when a verifier refuses the platform-policy table."""
    trust = TrustInputs(
        binding=collected.binding,
        at=collected.generated_at,
        expected_measurements=pins,
        trust_roots=inputs.trust_roots,
        allow_debug=inputs.allow_debug,
        policy_hash=collected.bundle_hash,
        gateway_digest=collected.gateway_digest,
        collateral=inputs.collateral,
    )
    evidence = collected.evidence
    checks: list[Check] = []
    verdict = _verdict(collected.spec, evidence.evidence, trust, inputs, "evidence")
    attested = False
    if isinstance(verdict, EvidenceVerdict):
        checks.extend(verdict.checks)
        attested = verdict.hardware_attested and not verdict.failed
        if verdict.measurement is not None and verdict.measurement != evidence.measurement:
            checks.append(
                Check.failed(
                    "evidence.measurement",
                    f"the evidence measures {verdict.measurement}, but its provider stated "
                    f"{evidence.measurement}",
                )
            )
    else:
        checks.append(verdict)
    checks.append(pinned_check(evidence.measurement, pins))
    for index, (spec, item) in enumerate(collected.devices):
        prefix = f"devices[{index}]."
        judged = _verdict(spec, item, trust, inputs, f"{prefix}evidence")
        if isinstance(judged, Check):
            checks.append(judged)
            attested = False
            continue
        checks.extend(Check(f"{prefix}{c.name}", c.status, c.reason) for c in judged.checks)
        attested = attested and judged.hardware_attested and not judged.failed
    return RuntimeAppraisal(
        status=status_of(checks, attested),
        verifier=names.runtime_verifier(__version__),
        policy_ref=inputs.policy_ref(collected.spec.name, pins),
        timestamp=int(collected.generated_at.timestamp()),
        checks=tuple(checks),
    )


def _verdict(
    spec: ProviderSpec,
    evidence: Mapping[str, Any],
    trust: TrustInputs,
    inputs: AppraisalInputs,
    name: str,
) -> EvidenceVerdict | Check:
    """The verdict of `spec`'s verifier, or the check `name` saying why there is none."""
    try:
        verifier = spec.load_verifier()
    except (ProviderError, ImportError) as exc:
        return Check.skipped(name, f"the {spec.name} verifier cannot load here ({exc})")
    given = verifier_trust(spec, trust, inputs.platform_policy, inputs.platform_policy_dir)
    try:
        return verifier.verify(evidence, given)
    except ProviderError as exc:
        raise AppraisalPolicyError(
            f"the {spec.name} verifier refuses trace.appraisal.platform_policy: {exc.message}",
            hint=exc.hint or f"fix the [{spec.name}] table of the platform policy",
        ) from None
    except Exception as exc:  # noqa: BLE001 - a verifier's bug judges nothing: a failed check
        return Check.failed(
            name, f"the {spec.name} verifier failed ({exc!r}): a bug in its plugin, report it"
        )


def pinned_check(measurement: str, pins: Sequence[str]) -> Check:
    """`attestation.expected_measurement` against the measurement the evidence states."""
    if not pins:
        return Check.skipped(
            MEASUREMENT_CHECK,
            f"attestation.expected_measurement pins nothing; the evidence states {measurement}",
        )
    if measurement in pins:
        return Check.passed(MEASUREMENT_CHECK, f"{measurement} is pinned")
    return Check.failed(
        MEASUREMENT_CHECK, f"{measurement} is not among attestation.expected_measurement"
    )
