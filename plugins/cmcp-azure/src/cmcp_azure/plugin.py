"""The provider declarations that `cmcp` finds through the entry point `cmcp = azure`: one
per hardware behind the paravisor, each with the TRACE platform of that hardware, since what
a verifier proves is an AMD or Intel report (the paravisor and its vTPM only carry it).

Nothing here imports a collector, verifier or measurer: each is loaded only when used.
"""

from __future__ import annotations

from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.attestation.hookspecs import provide
from cmcp_sev.plugin import PLATFORM_POLICY_KEYS as SEV_POLICY_KEYS
from cmcp_tdx.plugin import PLATFORM_POLICY_KEYS as TDX_POLICY_KEYS

SNP_NAME = "azure-sev-snp"
TDX_NAME = "azure-tdx"
SNP_EVIDENCE_TYPE = "azure-sev-snp-hcl-v1"
TDX_EVIDENCE_TYPE = "azure-tdx-hcl-v1"
# The keys every Azure table of the auditor's platform policy takes besides the hardware's
# own: what the runtime data's `vm-configuration` must say, and PCR values the vTPM quote
# must hold (the guest OS is measured into the vTPM, not into the hardware report).
AZURE_POLICY_KEYS = ("require_secure_boot", "require_tpm_enabled", "allow_console", "pcrs")

SNP_SPEC = ProviderSpec(
    name=SNP_NAME,
    platform="amd-sev-snp",
    evidence_types=(SNP_EVIDENCE_TYPE,),
    collector="cmcp_azure.collector:AzureSnpCollector",
    verifier="cmcp_azure.snp_verifier:AzureSnpVerifier",
    measurer="cmcp_azure.measurer:AzureSnpMeasurer",
    description="Azure SEV-SNP CVM: the paravisor's SNP report, VCEK chain and vTPM AK quote",
    platform_policy_keys=SEV_POLICY_KEYS + AZURE_POLICY_KEYS,
)
TDX_SPEC = ProviderSpec(
    name=TDX_NAME,
    platform="intel-tdx",
    evidence_types=(TDX_EVIDENCE_TYPE,),
    collector="cmcp_azure.collector:AzureTdxCollector",
    verifier="cmcp_azure.tdx_verifier:AzureTdxVerifier",
    measurer="cmcp_azure.measurer:AzureTdxMeasurer",
    description="Azure TDX CVM: the paravisor's TD report, its DCAP quote and vTPM AK quote",
    platform_policy_keys=TDX_POLICY_KEYS + AZURE_POLICY_KEYS,
)

cmcp_attestation_providers = provide(SNP_SPEC, TDX_SPEC)
