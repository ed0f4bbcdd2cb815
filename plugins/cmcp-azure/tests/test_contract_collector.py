"""The shared provider contract for both Azure providers' collectors, on the paravisor
double (a real process in front of swtpm) and the IMDS double: detection, the collector's
own evidence verifying to the test roots and failing for a wrong binding, and every
single-leaf change of that evidence failing. (tests/test_contract.py runs the same contract
on the genuine sets, where no collector can run.)"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from cmcp_azure import plugin
from cmcp_azure.collector import AzureSnpCollector, AzureTdxCollector
from cmcp_azure.testing.imds import RunningImds
from cmcp_azure.testing.paravisor import RunningParavisor
from cmcp_cli.attestation.api import ProviderSpec, TrustInputs
from cmcp_cli.testing.provider_contract import FACTS, PinnedEvidence, ProviderContract

BINDING = bytes(range(32))


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningParavisor]:
    with RunningParavisor.start(tmp_path_factory.mktemp("snp"), "snp") as paravisor:
        yield paravisor


@pytest.fixture(scope="module")
def tdx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningParavisor, RunningImds]]:
    with (
        RunningParavisor.start(tmp_path_factory.mktemp("tdx"), "tdx") as paravisor,
        RunningImds.start(tmp_path_factory.mktemp("imds")) as imds,
    ):
        yield paravisor, imds


def _pinned(
    collector: AzureSnpCollector | AzureTdxCollector,
    settings: Mapping[str, Any],
    root: bytes,
    independent: frozenset[tuple[str | int, ...]] = frozenset(),
) -> PinnedEvidence:
    collector.prepare(FACTS, settings)
    try:
        evidence = collector.collect(BINDING, settings)
    finally:
        collector.close()
    trust = TrustInputs(binding=BINDING, at=datetime.now(UTC), trust_roots=(root,))
    return PinnedEvidence(evidence.evidence, trust, independent)


class TestAzureSnpCollectorContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.SNP_SPEC

    @pytest.fixture
    def provider_settings(self, snp: RunningParavisor) -> Mapping[str, Any]:
        return snp.snp_settings()

    @pytest.fixture
    def collected_trust_roots(self, snp: RunningParavisor) -> tuple[bytes, ...]:
        return ((snp.folder / "ark.pem").read_bytes(),)

    @pytest.fixture
    def pinned_evidence(
        self, snp: RunningParavisor, provider_settings: Mapping[str, Any]
    ) -> PinnedEvidence:
        # the host's ASK and ARK are independent of each other: the ARK the auditor pins
        # stands in for one left out, as a host that gives fewer does
        root = (snp.folder / "ark.pem").read_bytes()
        return _pinned(AzureSnpCollector(), provider_settings, root, frozenset({("cert_chain",)}))


class TestAzureTdxCollectorContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.TDX_SPEC

    @pytest.fixture
    def provider_settings(self, tdx: tuple[RunningParavisor, RunningImds]) -> Mapping[str, Any]:
        paravisor, imds = tdx
        return {"tcti": paravisor.tcti, "imds_url": imds.url}

    @pytest.fixture
    def collected_trust_roots(self, tdx: tuple[RunningParavisor, RunningImds]) -> tuple[bytes, ...]:
        return (tdx[1].intel_root.read_bytes(),)

    @pytest.fixture
    def pinned_evidence(
        self, tdx: tuple[RunningParavisor, RunningImds], provider_settings: Mapping[str, Any]
    ) -> PinnedEvidence:
        return _pinned(AzureTdxCollector(), provider_settings, tdx[1].intel_root.read_bytes())
