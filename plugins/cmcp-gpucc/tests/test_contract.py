"""The shared provider contract for the gpu-cc device provider: declaration, lazy loading,
the verifier failing closed on garbage, and every single-leaf change of hardware-attested
evidence failing. The pinned evidence is synthetic (a report over the binding from a test
device chain, matching RIMs and good OCSP responses under test roots), since no public
evidence and RIM pair appraises clean. Collecting needs a confidential GPU: those contract
tests skip here with the reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import ProviderScope, ProviderSpec, TrustInputs
from cmcp_cli.testing.provider_contract import PinnedEvidence, ProviderContract
from cmcp_gpucc import plugin, synthetic
from cmcp_gpucc.rim_signing import AT, RimPki, good_responses, rim_from_blocks
from cmcp_gpucc.synthetic import DevicePki

BINDING = bytes(range(32))


class TestGpuProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.SPEC

    @pytest.fixture
    def provider_settings(self) -> Mapping[str, Any]:
        return {}  # this machine's NVML, if any

    @pytest.fixture
    def pinned_evidence(self, device_pki: DevicePki, rim_pki: RimPki) -> PinnedEvidence:
        blocks = synthetic.block_values()
        rims = {
            "driver": rim_from_blocks(blocks, synthetic.DRIVER_INDICES, version=synthetic.DRIVER),
            "vbios": rim_from_blocks(blocks, synthetic.VBIOS_INDICES, version=synthetic.VBIOS_TEXT),
        }
        evidence = synthetic.evidence(
            synthetic.report(device_pki, BINDING),
            device_pki.chain,
            rims={kind: rim_pki.sign(document) for kind, document in rims.items()},
            ocsp=good_responses(device_pki.ocsp_pairs) + rim_pki.responses(),
        )
        roots = (device_pki.root_pem(), rim_pki.root.cert.public_bytes(Encoding.PEM))
        return PinnedEvidence(evidence, TrustInputs(binding=BINDING, at=AT, trust_roots=roots))


def test_gpus_are_devices_beside_the_cpu_platform() -> None:
    assert plugin.SPEC.scope is ProviderScope.DEVICE
    assert plugin.SPEC.evidence_types == ("nvidia-gpu-cc-v1",)
    assert plugin.SPEC.platform == "nvidia-gpu-cc"
    with pytest.raises(TypeError, match="load_device_collector"):
        plugin.SPEC.load_collector()
