"""The provider declaration that `cmcp` finds through the entry point `cmcp = sev-snp`.

Nothing here imports the collector, the verifier or the measurer: each is loaded only when
used, so listing plugins on an auditor's machine never touches a guest device or
sev-snp-measure.
"""

from __future__ import annotations

from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.attestation.hookspecs import provide

NAME = "sev-snp"
PLATFORM = "amd-sev-snp"  # the TRACE runtime.platform value (DESIGN §5)
EVIDENCE_TYPE = "sev-snp-report-v1"
# The keys of the auditor's `[sev-snp]` platform policy (cmcp_sev.appraisal judges them).
PLATFORM_POLICY_KEYS = (
    "minimum_tcb", "minimum_firmware", "minimum_abi", "minimum_guest_svn",
    "forbidden_policy_flags", "require_crl", "id_key_digests",
)  # fmt: skip


SPEC = ProviderSpec(
    name=NAME,
    platform=PLATFORM,
    evidence_types=(EVIDENCE_TYPE,),
    collector="cmcp_sev.collector:SevCollector",
    verifier="cmcp_sev.verifier:SevVerifier",
    measurer="cmcp_sev.measurer:SevMeasurer",
    description="AMD SEV-SNP attestation report signed by the chip's VCEK (or a VLEK)",
    platform_policy_keys=PLATFORM_POLICY_KEYS,
)

cmcp_attestation_providers = provide(SPEC)
