"""The shared provider contract, run against a real software TPM: declaration, lazy
loading, detection as an answer, verification failing closed on garbage and on a wrong
binding, the collector's own evidence verifying, and every single-leaf change of that
evidence (its AK enrolled with a privacy CA, the CA's and the EK maker's roots given)
failing."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from cmcp_cli.attestation.api import ProviderSpec, TrustInputs
from cmcp_cli.testing.provider_contract import FACTS, PinnedEvidence, ProviderContract
from cmcp_tpm import plugin
from cmcp_tpm.collector import TpmCollector
from cmcp_tpm.testing import SoftwareTpm, TestCa, enroll_attestation_key

CONTRACT_AK_HANDLE = 0x81010020


@pytest.fixture(scope="module")
def enrolled_evidence(software_tpm: SoftwareTpm, test_ca: TestCa) -> PinnedEvidence:
    """The collector's evidence once its AK is certified, with the roots an auditor gives."""
    settings = {"tcti": software_tpm.tcti, "ak_handle": CONTRACT_AK_HANDLE}
    binding = bytes(range(32))
    collector = TpmCollector()
    try:
        collector.prepare(FACTS, settings)  # creates the AK, as a first gateway start does
        collector.close()
        enroll_attestation_key(software_tpm.tcti, CONTRACT_AK_HANDLE, test_ca)
        collector.prepare(FACTS, settings)
        evidence = collector.collect(binding, settings)
    finally:
        collector.close()
    trust = TrustInputs(
        binding=binding,
        at=datetime.now(UTC),
        trust_roots=(test_ca.root_pem, software_tpm.ek_ca_pem),
        policy_hash=FACTS.bundle_hash,
    )
    assert evidence.evidence["ak_tie"] == {"status": "certified"}
    # swtpm certifies an RSA and an ECC EK, each on its own; a TPM may carry only one
    assert len(evidence.evidence["ek_certificates"]) == 2
    return PinnedEvidence(evidence.evidence, trust, frozenset({("ek_certificates",)}))


class TestTpmProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.SPEC

    @pytest.fixture
    def provider_settings(self, software_tpm: SoftwareTpm) -> Mapping[str, Any]:
        return {"tcti": software_tpm.tcti, "ak_handle": CONTRACT_AK_HANDLE}

    @pytest.fixture
    def pinned_evidence(self, enrolled_evidence: PinnedEvidence) -> PinnedEvidence:
        return enrolled_evidence


def test_detection_without_a_tpm_says_where_it_looked() -> None:
    collector = plugin.SPEC.load_collector()
    detection = collector.detect({"tcti": "device:/dev/no-such-tpm"})
    assert not detection.present
    assert "/dev/no-such-tpm" in detection.detail
