"""The shared provider contract for both Azure providers: declaration, lazy loading,
detection as an answer, the verifier failing closed on garbage, and every single-leaf
change of a genuine set failing (the Milan set that carries its nonce as user data, and
the TDX set). Collecting needs an Azure CVM's vTPM: on another host those contract tests
skip with the reason, and test_contract_collector.py runs them on the paravisor double."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cmcp_azure import plugin
from cmcp_azure.testing.vectors import AzureSet
from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.testing.provider_contract import PinnedEvidence, ProviderContract

# The vTPM device of this machine, which is not an Azure CVM's.
HOST_TPM = {"tcti": "device:/dev/tpmrm0"}


class TestAzureSnpProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.SNP_SPEC

    @pytest.fixture
    def provider_settings(self) -> Mapping[str, Any]:
        return HOST_TPM

    @pytest.fixture
    def pinned_evidence(self, userdata_set: AzureSet) -> PinnedEvidence:
        return PinnedEvidence(userdata_set.evidence, userdata_set.trust)


class TestAzureTdxProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.TDX_SPEC

    @pytest.fixture
    def provider_settings(self) -> Mapping[str, Any]:
        return HOST_TPM

    @pytest.fixture
    def pinned_evidence(self, tdx_set: AzureSet) -> PinnedEvidence:
        return PinnedEvidence(tdx_set.evidence, tdx_set.trust)


def test_the_milan_set_with_its_host_chain_survives_every_change(
    milan_set: AzureSet, tmp_path: Path
) -> None:
    """The set with a cert_chain: a host may give fewer of its ASK and ARK, so losing the
    last is judged as such a host (the roots decide), every other change fails."""
    contract = TestAzureSnpProviderContract()
    pinned = PinnedEvidence(milan_set.evidence, milan_set.trust, frozenset({("cert_chain",)}))
    contract.test_pinned_evidence_verifies(plugin.SNP_SPEC, pinned)
    contract.test_every_changed_leaf_of_the_evidence_fails(plugin.SNP_SPEC, pinned)
