"""The provider declaration that `cmcp` finds through the entry point `cmcp = gpu-cc`.

Nothing here imports the collector, the verifier or the measurer: each is loaded only when
used, so listing plugins never loads NVML. GPUs are attested beside the CPU platform
(`ProviderScope.DEVICE`), never instead of it.
"""

from __future__ import annotations

from cmcp_cli.attestation.api import ProviderScope, ProviderSpec
from cmcp_cli.attestation.hookspecs import provide

NAME = "gpu-cc"
PLATFORM = "nvidia-gpu-cc"
EVIDENCE_TYPE = "nvidia-gpu-cc-v1"
# The keys of the auditor's `[gpu-cc]` platform policy (cmcp_gpucc.policy reads them).
PLATFORM_POLICY_KEYS = (
    "allow_unchecked_revocation",
    "minimum_driver_version",
    "minimum_vbios_version",
    "allow_debug",
    "rim_measurements",
    "trust_roots",
)


SPEC = ProviderSpec(
    name=NAME,
    platform=PLATFORM,
    evidence_types=(EVIDENCE_TYPE,),
    collector="cmcp_gpucc.collector:GpuCollector",
    verifier="cmcp_gpucc.verifier:GpuVerifier",
    measurer="cmcp_gpucc.measurer:GpuMeasurer",
    description=(
        "NVIDIA GPU confidential computing (Hopper, Blackwell): SPDM measurements signed by "
        "the device key, chain to the NVIDIA Device Identity CA, appraised against signed RIMs"
    ),
    platform_policy_keys=PLATFORM_POLICY_KEYS,
    scope=ProviderScope.DEVICE,
)

cmcp_attestation_providers = provide(SPEC)
