"""Genuine Azure CVM evidence carried in a real claim, through `cmcp verify`.

A session is recorded with the gateway's own code, its attestation being a genuine Azure
set (../shared/attestation-vectors/azure-cvm): an HCL report, its VCEK or DCAP quote, and
a vTPM quote whose extraData is trustee's test nonce, not our session binding. The claim
must fail on the session binding alone: the quote's nonce (and, for the set whose
paravisor carried that nonce as user data, the user data) and on nothing the evidence
itself proves: the quote's signature by HCLAkPub, the runtime data's hash in the hardware
report, the hardware report's signature and its chain to AMD's or Intel's root all pass
through the CLI, from the claim to the installed plugin's verifier.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cmcp_azure import plugin
from cmcp_azure.snp_verifier import AzureSnpVerifier
from cmcp_azure.tdx_verifier import AzureTdxVerifier
from cmcp_azure.testing import vectors
from cmcp_azure.testing.checks import EVIDENCE_LINKS, SNP_HARDWARE, TDX_HARDWARE
from cmcp_azure.testing.vectors import AzureSet
from cmcp_cli.attestation.api import Evidence, ProviderSpec
from tests.test_confidential_vm_claims import VECTORS, claim_with, verify

AZURE = VECTORS / "azure-cvm"
# The claim's time: inside the validity of every certificate of the three sets.
ISSUED = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _evidence(spec: ProviderSpec, azure_set: AzureSet) -> Evidence:
    verifier = AzureSnpVerifier() if spec is plugin.SNP_SPEC else AzureTdxVerifier()
    measurement = verifier.verify(azure_set.evidence, azure_set.trust).measurement
    assert measurement is not None
    return Evidence(
        evidence_type=spec.evidence_types[0],
        evidence=azure_set.evidence,
        platform=spec.platform,
        measurement=measurement,
    )


def _verify_claim(
    tmp_path: Path, spec: ProviderSpec, azure_set: AzureSet
) -> tuple[int, dict[str, tuple[str, str]]]:
    evidence = _evidence(spec, azure_set)
    claim = claim_with(tmp_path, spec, evidence, ISSUED)
    at = (ISSUED + timedelta(minutes=1)).isoformat()
    assert evidence.measurement is not None
    return verify(claim, "--at", at, "--expected-measurement", evidence.measurement)


def _failed(checks: dict[str, tuple[str, str]]) -> list[str]:
    return sorted(name for name, (status, _) in checks.items() if status == "fail")


def _assert_proven(checks: dict[str, tuple[str, str]], proven: tuple[str, ...]) -> None:
    for name in (*proven, "signature", "measurement"):
        assert checks[name][0] == "pass", (name, checks[name])


@pytest.fixture
def azure_vectors() -> Path:
    if not AZURE.is_dir():
        pytest.skip(f"the shared attestation vectors are not at {AZURE}")
    return AZURE


def test_a_genuine_azure_snp_set_fails_only_on_the_quotes_nonce(
    tmp_path: Path, azure_vectors: Path
) -> None:
    code, checks = _verify_claim(tmp_path, plugin.SNP_SPEC, vectors.milan_set(azure_vectors))
    assert code == 1, checks
    # the quote's extraData is trustee's "challenge", not this session's binding
    assert _failed(checks) == ["azure.quote.nonce"], checks
    assert "not the session binding" in checks["azure.quote.nonce"][1]
    _assert_proven(checks, EVIDENCE_LINKS + SNP_HARDWARE)
    assert checks["azure.user_data"][0] == "skip"  # this paravisor carried no user data


def test_a_genuine_azure_snp_set_with_user_data_fails_on_both_bindings(
    tmp_path: Path, azure_vectors: Path
) -> None:
    code, checks = _verify_claim(tmp_path, plugin.SNP_SPEC, vectors.userdata_set(azure_vectors))
    assert code == 1, checks
    # the quote's extraData and the report's user data both carry trustee's nonce
    assert _failed(checks) == ["azure.quote.nonce", "azure.user_data"], checks
    assert "another session" in checks["azure.user_data"][1]
    _assert_proven(checks, EVIDENCE_LINKS + SNP_HARDWARE)


def test_a_genuine_azure_tdx_set_fails_only_on_the_quotes_nonce(
    tmp_path: Path, azure_vectors: Path
) -> None:
    code, checks = _verify_claim(tmp_path, plugin.TDX_SPEC, vectors.tdx_set(azure_vectors))
    assert code == 1, checks
    assert _failed(checks) == ["azure.quote.nonce"], checks
    _assert_proven(checks, EVIDENCE_LINKS + TDX_HARDWARE)
    assert "not appraised" in checks["tdx.tcb.status"][1]  # no collateral for its FMSPC


def test_a_foreign_root_leaves_a_genuine_azure_snp_set_unattested(
    tmp_path: Path, azure_vectors: Path
) -> None:
    evidence = _evidence(plugin.SNP_SPEC, vectors.milan_set(azure_vectors))
    claim = claim_with(tmp_path, plugin.SNP_SPEC, evidence, ISSUED)
    genoa = VECTORS / "sev-snp" / "amd-ask-ark-genoa.pem"
    at = (ISSUED + timedelta(minutes=1)).isoformat()
    code, checks = verify(claim, "--at", at, "--trust-root", str(genoa))
    assert code == 1
    assert checks["sev.ark.pinned"][0] == "fail", checks["sev.ark.pinned"]
