"""The built-in software-only provider: same API, no hardware root of trust.

Its evidence carries the binding and the gateway digest so that the chain from key to
policy is recorded and checked the same way as on hardware, but nothing vouches for it:
its verdict is never `hardware_attested`, and `cmcp verify` exits 3 on it unless the
auditor passes `--allow-software`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cmcp_cli import __version__
from cmcp_cli.attestation.api import (
    Check,
    Detection,
    Evidence,
    EvidenceVerdict,
    ProviderSpec,
    TrustInputs,
)
from cmcp_cli.attestation.hookspecs import hookimpl
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.claim.canonical import is_sha256_tagged

NAME = "software-only"
EVIDENCE_TYPE = "cmcp-software-v1"
PLATFORM = "software-only"


class SoftwareCollector:
    def detect(self) -> Detection:
        return Detection(True, "always available; no hardware root of trust (dev mode only)")

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        digest = str(settings.get("gateway_digest") or installation_digest())
        return Evidence(
            evidence_type=EVIDENCE_TYPE,
            evidence={"binding": binding.hex(), "gateway_digest": digest},
            platform=PLATFORM,
            measurement=digest,
        )


class SoftwareVerifier:
    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        checks: list[Check] = []
        binding = evidence.get("binding")
        digest = evidence.get("gateway_digest")
        if (
            not isinstance(binding, str)
            or not isinstance(digest, str)
            or not is_sha256_tagged(digest)
        ):
            checks.append(
                Check.failed("evidence.shape", "software evidence needs binding and gateway_digest")
            )
            return EvidenceVerdict(tuple(checks), hardware_attested=False)
        checks.append(
            Check.passed("evidence.shape", "software evidence with binding and gateway digest")
        )
        if binding == trust.binding.hex():
            checks.append(
                Check.passed("evidence.binding", "the evidence names the claim's binding")
            )
        else:
            checks.append(
                Check.failed("evidence.binding", "the evidence names a different binding")
            )
        checks.append(
            Check.skipped(
                "evidence.hardware", "software mode: no hardware root of trust vouches for it"
            )
        )
        return EvidenceVerdict(tuple(checks), hardware_attested=False, measurement=digest)


SPEC = ProviderSpec(
    name=NAME,
    platform=PLATFORM,
    evidence_types=(EVIDENCE_TYPE,),
    load_collector=SoftwareCollector,
    load_verifier=SoftwareVerifier,
    description="no TEE; for development with CMCP_DEV_MODE=1",
)


class SoftwarePlugin:
    """Registered by the plugin manager itself, like any entry point would be."""

    distribution = "cmcp"
    version = __version__

    @hookimpl
    def cmcp_attestation_providers(self) -> Sequence[ProviderSpec]:
        return [SPEC]
