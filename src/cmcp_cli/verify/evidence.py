"""The evidence of a GatewayClaim, judged (DESIGN §7): the binding recomputed from the claim,
the CPU platform's evidence by the one platform provider registered for its type, and each
device's (`gateway.attestation.devices`) by the one device provider registered for its.

Device checks are reported as `devices[i].<check>`. Evidence of the wrong scope fails: a
device provider's evidence never stands for the CPU platform, nor a platform provider's
for a device, since each verifier judges only what its hardware signs. The claim is
hardware-attested only when the CPU evidence and every device's is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cmcp_cli.attestation.api import (
    Check,
    EvidenceVerdict,
    ProviderError,
    ProviderScope,
    TrustInputs,
)
from cmcp_cli.attestation.binding import binding_from_claim
from cmcp_cli.attestation.manager import (
    ProviderRegistry,
    ProviderUnavailableError,
    RegisteredProvider,
    load_part,
)
from cmcp_cli.attestation.platform_policy import verifier_trust
from cmcp_cli.attestation.software import PLATFORM as SOFTWARE_PLATFORM
from cmcp_cli.claim.appraisal import policy_document, policy_ref
from cmcp_cli.claim.canonical import CanonicalizationError
from cmcp_cli.errors import UsageError
from cmcp_cli.evidence.appraising import pinned_check, status_of
from cmcp_cli.verify.appraisal import AuditorAppraisal, appraisal_check

if TYPE_CHECKING:
    from cmcp_cli.verify.claim import VerifyOptions


@dataclass
class EvidenceResult:
    checks: list[Check] = field(default_factory=list)
    hardware_attested: bool = False
    software: bool = False  # the CPU evidence is software mode's, judged by its verifier
    # Devices whose evidence could not be judged here (no plugin, or it cannot load): the
    # claim is then not verifiable here, even in software mode.
    unjudged_devices: list[str] = field(default_factory=list)
    # The CPU evidence's verdict by its provider's verifier; None when none judged it.
    cpu_verdict: EvidenceVerdict | None = None


def judge_evidence(
    claim: Mapping[str, Any],
    thumbprint: str,
    options: VerifyOptions,
    registry: ProviderRegistry,
) -> EvidenceResult:
    """The binding, CPU evidence and device checks of a well-formed, signed GatewayClaim."""
    result = EvidenceResult()
    attestation = claim["gateway"]["attestation"]
    binding = binding_from_claim(claim, thumbprint)
    # a claim stating a nonce is bound by version 2 of the preimage, which includes it
    members = (
        "key thumbprint, bundle, catalog, gateway digest and runtime.nonce (binding version 2)"
        if "nonce" in claim["trace"]["runtime"]
        else "key thumbprint, bundle, catalog and gateway digest"
    )
    if attestation["binding"] == binding.hex():
        result.checks.append(Check.passed("binding", f"{members} match it"))
    else:
        result.checks.append(
            Check.failed(
                "binding",
                f"gateway.attestation.binding is not the binding of this claim's {members}",
            )
        )
    trust = TrustInputs(
        binding=binding,
        at=datetime.fromtimestamp(claim["trace"]["iat"], UTC),
        expected_measurements=options.expected_measurements,
        trust_roots=options.trust_roots,
        allow_debug=options.allow_debug,
        policy_hash=claim["trace"]["policy"]["bundle_hash"],
        gateway_digest=claim["trace"]["build_provenance"]["digest"],
        collateral=options.collateral,
    )
    cpu = _judge_cpu(claim, trust, options, registry, result)
    devices = [
        _judge_device(index, item, trust=trust, options=options, registry=registry, result=result)
        for index, item in enumerate(attestation.get("devices", ()))
    ]
    result.hardware_attested = cpu and all(devices)
    appraised = None
    if result.cpu_verdict is not None:
        judged = [check for check in result.checks if check.name != "binding"]
        judged.append(
            pinned_check(claim["trace"]["runtime"]["measurement"], trust.expected_measurements)
        )
        appraised = AuditorAppraisal(
            status=status_of(judged, result.hardware_attested),
            policy_ref=_auditor_policy_ref(attestation["provider"], options),
        )
    result.checks.append(
        appraisal_check(claim["trace"]["appraisal"], result.cpu_verdict, claim, appraised)
    )
    return result


def _auditor_policy_ref(provider: str, options: VerifyOptions) -> str | None:
    """The `policy_ref` the gateway would name had it appraised with the auditor's inputs;
    None when the auditor's platform-policy table has no canonical form (so none names it)."""
    document = policy_document(
        provider=provider,
        expected_measurements=options.expected_measurements,
        trust_roots=options.trust_roots,
        collateral=options.collateral,
        platform_policy=options.platform_policy.get(provider, {}),
        allow_debug=options.allow_debug,
    )
    try:
        return policy_ref(document)
    except CanonicalizationError:
        return None


def _provider_for(
    evidence_type: str, named: str, registry: ProviderRegistry
) -> tuple[RegisteredProvider | None, str]:
    """The provider registered for `evidence_type`, or why there is none."""
    provider = registry.for_evidence_type(evidence_type)
    if provider is not None:
        return provider, ""
    conflict = registry.refused_evidence_type(evidence_type)
    if conflict:
        return None, f"providers conflict: {conflict.error} ({conflict.distribution})"
    return None, (
        f"no installed plugin verifies evidence type {evidence_type!r}; "
        f"install the cmcp plugin for provider {named!r}"
    )


def _verdict(
    provider: RegisteredProvider,
    evidence: Any,
    trust: TrustInputs,
    options: VerifyOptions,
    name: str,
) -> EvidenceVerdict | Check:
    """The provider's verdict on `evidence`, or a skipped check `name` when its verifier
    cannot load here. Raises `UsageError` when the auditor's platform policy is unusable."""
    try:
        verifier = load_part(provider, provider.spec.load_verifier, "verify evidence")
    except ProviderUnavailableError as exc:
        return Check.skipped(
            name, f"the {exc.provider} verifier cannot load here ({exc.reason}); {exc.hint}"
        )
    trust = verifier_trust(
        provider.spec, trust, options.platform_policy, options.platform_policy_dir
    )
    try:
        return verifier.verify(evidence, trust)
    except ProviderError as error:
        raise UsageError(
            f"the platform policy is unusable: {error.message}", hint=error.hint
        ) from None


def _judge_cpu(
    claim: Mapping[str, Any],
    trust: TrustInputs,
    options: VerifyOptions,
    registry: ProviderRegistry,
    result: EvidenceResult,
) -> bool:
    """Judge the CPU platform's evidence; whether it is hardware-attested."""
    attestation = claim["gateway"]["attestation"]
    evidence_type = attestation["evidence_type"]
    provider, missing = _provider_for(evidence_type, attestation["provider"], registry)
    if provider is None:
        result.checks.append(Check.skipped("evidence", missing))
        return False
    if provider.spec.scope is not ProviderScope.PLATFORM:
        result.checks.append(
            Check.failed(
                "evidence",
                f"{evidence_type!r} is evidence of the {provider.spec.name} device provider: "
                "it attests a device beside the platform, never the platform itself",
            )
        )
        return False
    platform = claim["trace"]["runtime"]["platform"]
    if platform != provider.spec.platform:
        result.checks.append(
            Check.failed(
                "evidence",
                f"runtime.platform is {platform!r} but {evidence_type!r} evidence is "
                f"{provider.spec.platform!r}",
            )
        )
        return False
    verdict = _verdict(provider, attestation["evidence"], trust, options, "evidence")
    if isinstance(verdict, Check):
        result.checks.append(verdict)
        return False
    result.checks.extend(verdict.checks)
    result.cpu_verdict = verdict
    # Software mode is accepted (with --allow-software) only once its verifier has judged
    # the evidence: a provider that could not run leaves the claim not verifiable here.
    result.software = provider.spec.platform == SOFTWARE_PLATFORM
    measured = verdict.measurement
    if measured is not None and measured != claim["trace"]["runtime"]["measurement"]:
        result.checks.append(
            Check.failed(
                "evidence.measurement", "the evidence measures another runtime.measurement"
            )
        )
        return False
    return verdict.hardware_attested and not verdict.failed


def _judge_device(
    index: int,
    item: Mapping[str, Any],
    *,
    trust: TrustInputs,
    options: VerifyOptions,
    registry: ProviderRegistry,
    result: EvidenceResult,
) -> bool:
    """Judge one device's evidence, its checks named `devices[<index>].<check>`, over the
    claim's binding; whether it is hardware-attested. Its verifier is given what
    `verifier_trust` gives a device provider's: not the auditor's CPU measurements and
    `--trust-root` roots."""
    prefix = f"devices[{index}]."
    name = f"{prefix}evidence"
    evidence_type = item["evidence_type"]
    provider, missing = _provider_for(evidence_type, item["provider"], registry)
    if provider is None:
        result.checks.append(Check.skipped(name, missing))
        result.unjudged_devices.append(f"devices[{index}]")
        return False
    spec = provider.spec
    problem = None
    if spec.scope is not ProviderScope.DEVICE:
        problem = (
            f"{evidence_type!r} is evidence of the {spec.name} platform provider: a device "
            "item carries only a device provider's evidence"
        )
    elif item["provider"] != spec.name:
        problem = (
            f"the item names provider {item['provider']!r}, but {evidence_type!r} evidence is "
            f"the {spec.name} provider's"
        )
    if problem is not None:
        result.checks.append(Check.failed(name, problem))
        return False
    verdict = _verdict(provider, item["evidence"], trust, options, name)
    if isinstance(verdict, Check):
        result.checks.append(verdict)
        result.unjudged_devices.append(f"devices[{index}]")
        return False
    result.checks.extend(
        Check(f"{prefix}{check.name}", check.status, check.reason) for check in verdict.checks
    )
    return verdict.hardware_attested and not verdict.failed
