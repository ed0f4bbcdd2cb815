"""The provider declaration that `cmcp` finds through the entry point `cmcp = tdx`.

Nothing here imports the collector, the verifier or the measurer: each is loaded only when
used, so listing plugins never touches a TDX device.
"""

from __future__ import annotations

from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.attestation.hookspecs import provide

NAME = "tdx"
PLATFORM = "intel-tdx"  # the TRACE runtime.platform of a TDX trust domain
EVIDENCE_TYPE = "tdx-quote-v1"
# The keys of the auditor's `[tdx]` platform policy (cmcp_tdx.appraisal judges them).
PLATFORM_POLICY_KEYS = ("accepted_tcb_statuses", "require_collateral")


SPEC = ProviderSpec(
    name=NAME,
    platform=PLATFORM,
    evidence_types=(EVIDENCE_TYPE,),
    collector="cmcp_tdx.collector:TdxCollector",
    verifier="cmcp_tdx.verifier:TdxVerifier",
    measurer="cmcp_tdx.measurer:TdxMeasurer",
    description="Intel TDX DCAP quote (v4/v5) with the PCK chain to the Intel SGX Root CA",
    platform_policy_keys=PLATFORM_POLICY_KEYS,
)

cmcp_attestation_providers = provide(SPEC)
