"""Azure confidential VMs end to end: `cmcp start` on the paravisor double (a real process
in front of swtpm) and, for TDX, the IMDS double (a real HTTP process), an agent's calls
through the official MCP SDK, and `cmcp verify --trust-root <test root>` of the claim
through the real CLI: hardware-attested, every Azure link passing, the session binding in
the vTPM quote and as the report's user data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmcp_azure.testing.checks import BINDING_LINKS, EVIDENCE_LINKS, SNP_HARDWARE, TDX_HARDWARE
from cmcp_azure.testing.imds import RunningImds
from cmcp_azure.testing.paravisor import RunningParavisor
from tests.gateway_support import Served, session_claim, statuses, verify


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningParavisor]:
    with RunningParavisor.start(tmp_path_factory.mktemp("snp"), "snp") as paravisor:
        yield paravisor


def _assert_attested(report: dict[str, Any], hardware: tuple[str, ...]) -> None:
    assert report["hardware_attested"] is True, report
    found = statuses(report)
    assert {
        name: found[name] for name in (*EVIDENCE_LINKS, *BINDING_LINKS, *hardware)
    } == dict.fromkeys((*EVIDENCE_LINKS, *BINDING_LINKS, *hardware), "pass"), found
    assert found["azure.pcrs.pinned"] == "skip"  # no PCRs pinned by this auditor


@pytest.mark.parametrize("provider", ["azure-sev-snp", "auto"])
def test_a_gateway_on_an_azure_snp_cvm_is_verified_as_hardware_attested(
    tmp_path: Path, upstream: Served, snp: RunningParavisor, provider: str
) -> None:
    settings = snp.snp_settings()
    # auto tries sev-snp and tdx first, whose devices are absent here, then finds it
    attestation = {"provider": provider, "providers": {"azure-sev-snp": settings}}
    _, claim_path = session_claim(tmp_path, upstream, attestation)
    claim = json.loads(claim_path.read_text())
    assert claim["trace"]["runtime"]["platform"] == "amd-sev-snp"
    assert claim["gateway"]["attestation"]["provider"] == "azure-sev-snp"
    assert claim["gateway"]["attestation"]["evidence_type"] == "azure-sev-snp-hcl-v1"

    measurement = claim["trace"]["runtime"]["measurement"]
    code, report = verify(
        claim_path,
        "--trust-root",
        snp.folder / "ark.pem",
        "--expected-measurement",
        measurement,
    )
    assert code == 0, report
    _assert_attested(report, SNP_HARDWARE)

    # AMD's vendored roots did not issue the test ASK: the chain is not pinned
    code, report = verify(claim_path)
    assert code == 1 and report["hardware_attested"] is False
    assert statuses(report)["sev.ark.pinned"] == "fail"


def test_a_gateway_on_an_azure_tdx_cvm_is_verified_as_hardware_attested(
    tmp_path: Path, upstream: Served
) -> None:
    paravisor_dir, imds_dir = tmp_path / "paravisor", tmp_path / "imds"
    paravisor_dir.mkdir()
    imds_dir.mkdir()
    with (
        RunningParavisor.start(paravisor_dir, "tdx") as paravisor,
        RunningImds.start(imds_dir) as imds,
    ):
        settings = {"tcti": paravisor.tcti, "imds_url": imds.url}
        attestation = {"provider": "azure-tdx", "providers": {"azure-tdx": settings}}
        _, claim_path = session_claim(tmp_path, upstream, attestation)
        quotes = [r for r in imds.requests() if r["path"] == "/acc/tdquote"]
    claim = json.loads(claim_path.read_text())
    assert claim["trace"]["runtime"]["platform"] == "intel-tdx"
    assert claim["gateway"]["attestation"]["evidence_type"] == "azure-tdx-hcl-v1"
    assert len(quotes) >= 2  # one at start, one per session at least
    code, report = verify(claim_path, "--trust-root", imds.intel_root)
    assert code == 0, report
    _assert_attested(report, TDX_HARDWARE)
