"""The provider declaration that `cmcp` finds through the entry point `cmcp = sev-snp`.

Nothing here imports the collector, the verifier or the measurer: each is loaded only when
used, so listing plugins on an auditor's machine never touches a guest device or
sev-snp-measure.
"""

from __future__ import annotations

from collections.abc import Sequence

from cmcp_cli.attestation.api import Collector, Measurer, ProviderSpec, Verifier
from cmcp_cli.attestation.hookspecs import hookimpl

NAME = "sev-snp"
PLATFORM = "amd-sev-snp"  # the TRACE runtime.platform value (DESIGN §5)
EVIDENCE_TYPE = "sev-snp-report-v1"
# The keys of the auditor's `[sev-snp]` platform policy (cmcp_sev.appraisal judges them).
PLATFORM_POLICY_KEYS = (
    "minimum_tcb", "minimum_firmware", "minimum_abi", "minimum_guest_svn",
    "forbidden_policy_flags", "require_crl",
)  # fmt: skip


def _collector() -> Collector:
    from cmcp_sev.collector import SevCollector  # noqa: PLC0415 - loaded on demand

    return SevCollector()


def _verifier() -> Verifier:
    from cmcp_sev.verifier import SevVerifier  # noqa: PLC0415 - loaded on demand

    return SevVerifier()


def _measurer() -> Measurer:
    from cmcp_sev.measurer import SevMeasurer  # noqa: PLC0415 - loaded on demand

    return SevMeasurer()


SPEC = ProviderSpec(
    name=NAME,
    platform=PLATFORM,
    evidence_types=(EVIDENCE_TYPE,),
    load_collector=_collector,
    load_verifier=_verifier,
    load_measurer=_measurer,
    description="AMD SEV-SNP attestation report signed by the chip's VCEK (or a VLEK)",
    platform_policy_keys=PLATFORM_POLICY_KEYS,
)


@hookimpl
def cmcp_attestation_providers() -> Sequence[ProviderSpec]:
    return [SPEC]
