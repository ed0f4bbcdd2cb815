"""Genuine confidential-VM evidence carried in a real claim, through `cmcp verify`.

A session is recorded with the gateway's own code, its attestation being a vendor's genuine
TDX quote or SEV-SNP report (../shared/attestation-vectors). The vendor's hardware did not
bind our session key, so the claim must fail on the report_data check (and the Milan guest,
which allows debugging, on the debug policy unless the auditor allows it) and on nothing
the evidence itself proves: its signatures, certificate chains and event log replay all
pass through the CLI, from the claim to the installed plugin's verifier.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import (
    Detection,
    Evidence,
    GatewayFacts,
    ProviderSpec,
)
from cmcp_cli.evidence.attesting import Attestor
from cmcp_sev.plugin import EVIDENCE_TYPE as SEV_EVIDENCE_TYPE
from cmcp_sev.plugin import PLATFORM as SEV_PLATFORM
from cmcp_sev.plugin import SPEC as SEV_SPEC
from cmcp_sev.structures import parse_report
from cmcp_tdx.measurement import measurement_string
from cmcp_tdx.plugin import EVIDENCE_TYPE as TDX_EVIDENCE_TYPE
from cmcp_tdx.plugin import PLATFORM as TDX_PLATFORM
from cmcp_tdx.plugin import SPEC as TDX_SPEC
from cmcp_tdx.quote import parse_quote
from tests.sessions import record_session
from tests.support import run_cmcp

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "attestation-vectors"


class RecordedEvidence:
    """A collector that hands out evidence recorded elsewhere, whatever the binding."""

    def __init__(self, evidence: Evidence) -> None:
        self.evidence = evidence

    def detect(self, settings: Mapping[str, Any]) -> Detection:  # noqa: ARG002
        return Detection(True, "recorded evidence")

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:  # noqa: ARG002
        return None

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:  # noqa: ARG002
        return self.evidence

    def close(self) -> None:
        return None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def claim_with(tmp_path: Path, spec: ProviderSpec, evidence: Evidence, start: datetime) -> Path:
    attestor = Attestor(spec, "0.1.0", RecordedEvidence(evidence))
    return record_session(tmp_path, attestor=attestor, start=start).claim_path


def verify(claim: Path, *args: str) -> tuple[int, dict[str, tuple[str, str]]]:
    result = run_cmcp("verify", claim, "--json", *args)
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    checks = {c["name"]: (c["status"], c["reason"]) for c in report["checks"]}
    return result.returncode, checks


def assert_only_the_binding_fails(
    code: int, checks: dict[str, tuple[str, str]], report_data_check: str, proven: tuple[str, ...]
) -> None:
    assert code == 1, checks
    failed = sorted(name for name, (status, _) in checks.items() if status == "fail")
    assert failed == [report_data_check], checks
    for name in (*proven, "signature", "measurement"):
        assert checks[name][0] == "pass", (name, checks[name])


# ------------------------------------------------------------------ Intel TDX


def tdx_evidence(quote_file: str, **extra: str) -> Evidence:
    raw = (VECTORS / "tdx" / quote_file).read_bytes()
    body = parse_quote(raw).body
    return Evidence(
        evidence_type=TDX_EVIDENCE_TYPE,
        evidence={"quote": b64(raw), **extra},
        platform=TDX_PLATFORM,
        measurement=measurement_string(body.mrtd, body.rtmrs),
    )


TDX_PROVEN = (
    "tdx.quote.header",
    "tdx.pck.chain",
    "tdx.root.pinned",
    "tdx.qe.signature",
    "tdx.qe.binding",
    "tdx.quote.signature",
    "tdx.td.debug",
)


def test_a_genuine_tdx_quote_with_its_ccel_log_fails_only_on_the_binding(
    tmp_path: Path,
) -> None:
    ccel = b64((VECTORS / "tdx" / "gotdx-cos113-ccel-data.dat").read_bytes())
    evidence = tdx_evidence("gotdx-cos113-quote-v4.dat", ccel=ccel)
    claim = claim_with(tmp_path, TDX_SPEC, evidence, datetime.now(UTC) - timedelta(minutes=5))
    code, checks = verify(claim, "--expected-measurement", evidence.measurement)
    assert_only_the_binding_fails(code, checks, "tdx.report_data", (*TDX_PROVEN, "tdx.rtmr.replay"))
    assert "not appraised" in checks["tdx.tcb.status"][1]


def test_auditor_collateral_appraises_the_tcb_through_the_cli(tmp_path: Path) -> None:
    evidence = tdx_evidence("dcapqvl-b0c06f-quote-v4.dat")
    issued = datetime(2025, 6, 20, 12, tzinfo=UTC)  # inside the collateral's validity
    claim = claim_with(tmp_path, TDX_SPEC, evidence, issued)
    collateral = VECTORS / "tdx" / "dcapqvl-b0c06f-collateral.json"
    at = (issued + timedelta(minutes=1)).isoformat()
    code, checks = verify(
        claim,
        "--collateral",
        str(collateral),
        "--at",
        at,
        "--expected-measurement",
        evidence.measurement,
    )
    assert_only_the_binding_fails(code, checks, "tdx.report_data", (*TDX_PROVEN, "tdx.tcb.status"))
    assert "UpToDate" in checks["tdx.tcb.status"][1]


@pytest.mark.parametrize("quote", ["gotdx-spr-e4-quote-v4.dat", "gotdx-cos113-quote-v4.dat"])
def test_a_foreign_root_leaves_a_genuine_quote_unattested(tmp_path: Path, quote: str) -> None:
    evidence = tdx_evidence(quote)
    claim = claim_with(tmp_path, TDX_SPEC, evidence, datetime.now(UTC) - timedelta(minutes=5))
    amd_root = VECTORS / "sev-snp" / "amd-ask-ark-milan.pem"
    code, checks = verify(claim, "--trust-root", str(amd_root))
    assert code == 1
    assert checks["tdx.pck.chain"][0] == "fail"
    assert checks["tdx.root.pinned"][0] == "fail"


# ------------------------------------------------------------------ AMD SEV-SNP


def milan_evidence() -> Evidence:
    report = (VECTORS / "sev-snp" / "gosev-milan-report.bin").read_bytes()
    vcek = (VECTORS / "sev-snp" / "gosev-milan-vcek.der").read_bytes()
    return Evidence(
        evidence_type=SEV_EVIDENCE_TYPE,
        evidence={"report": b64(report), "signing_key": "vcek", "vcek": b64(vcek)},
        platform=SEV_PLATFORM,
        measurement="sha384:" + parse_report(report).measurement.hex(),
    )


SEV_PROVEN = (
    "sev.report.version",
    "sev.product",
    "sev.vcek.chain",
    "sev.ark.pinned",
    "sev.report.signature",
    "sev.vcek.tcb",
    "sev.vcek.chip_id",
)


def test_a_genuine_milan_report_fails_on_debug_and_on_the_binding(tmp_path: Path) -> None:
    evidence = milan_evidence()
    claim = claim_with(tmp_path, SEV_SPEC, evidence, datetime.now(UTC) - timedelta(minutes=5))
    code, checks = verify(claim, "--expected-measurement", evidence.measurement)
    assert code == 1
    failed = sorted(name for name, (status, _) in checks.items() if status == "fail")
    assert failed == ["sev.policy.debug", "sev.report_data"], checks
    # an auditor who accepts a debuggable guest is left with the binding alone
    code, checks = verify(claim, "--expected-measurement", evidence.measurement, "--allow-debug")
    assert_only_the_binding_fails(
        code, checks, "sev.report_data", (*SEV_PROVEN, "sev.policy.debug")
    )


def test_a_milan_report_under_a_foreign_product_root_is_not_attested(tmp_path: Path) -> None:
    evidence = milan_evidence()
    claim = claim_with(tmp_path, SEV_SPEC, evidence, datetime.now(UTC) - timedelta(minutes=5))
    genoa = VECTORS / "sev-snp" / "amd-ask-ark-genoa.pem"
    code, checks = verify(claim, "--trust-root", str(genoa), "--allow-debug")
    assert code == 1
    assert checks["sev.ark.pinned"][0] == "fail", checks["sev.ark.pinned"]


# ------------------------------------------------------------------ either


@pytest.mark.parametrize("vector", ["tdx", "sev-snp"])
def test_a_measurement_outside_the_pinned_set_fails(tmp_path: Path, vector: str) -> None:
    if vector == "tdx":
        spec, evidence = TDX_SPEC, tdx_evidence("gotdx-cos113-quote-v4.dat")
    else:
        spec, evidence = SEV_SPEC, milan_evidence()
    claim = claim_with(tmp_path, spec, evidence, datetime.now(UTC) - timedelta(minutes=5))
    other = "sha384:" + "ab" * 48
    code, checks = verify(claim, "--expected-measurement", other, "--allow-debug")
    assert code == 1
    assert checks["measurement"][0] == "fail"
    assert evidence.measurement in checks["measurement"][1]


# ------------------------------------------------------------------ the auditor's platform policy


def policy_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "platform-policy.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_platform_policy_reaches_the_sev_verifier(tmp_path: Path) -> None:
    evidence = milan_evidence()
    claim = claim_with(tmp_path, SEV_SPEC, evidence, datetime.now(UTC) - timedelta(minutes=5))
    met = policy_file(
        tmp_path,
        "[sev-snp]\nminimum_tcb = { bootloader = 2, snp = 5, microcode = 68 }\n"
        'minimum_firmware = "1.49"\nforbidden_policy_flags = ["MIGRATE_MA"]\n',
    )
    pins = ("--expected-measurement", evidence.measurement, "--allow-debug")
    code, checks = verify(claim, *pins, "--platform-policy", met)
    assert_only_the_binding_fails(
        code, checks, "sev.report_data", (*SEV_PROVEN, "sev.tcb.minimum", "sev.policy.guest")
    )
    raised = policy_file(tmp_path, "[sev-snp]\nminimum_tcb = { snp = 8, microcode = 115 }\n")
    code, checks = verify(claim, *pins, "--platform-policy", raised)
    assert code == 1
    assert checks["sev.tcb.minimum"][0] == "fail"
    assert "REPORTED_TCB snp 5 < 8, microcode 68 < 115" in checks["sev.tcb.minimum"][1]


def test_the_platform_policy_reaches_the_tdx_verifier(tmp_path: Path) -> None:
    evidence = tdx_evidence("gotdx-cos113-quote-v4.dat")
    claim = claim_with(tmp_path, TDX_SPEC, evidence, datetime.now(UTC) - timedelta(minutes=5))
    strict = policy_file(tmp_path, "[tdx]\nrequire_collateral = true\n")
    code, checks = verify(claim, "--platform-policy", strict)
    assert code == 1
    assert checks["tdx.tcb.status"][0] == "fail"
    assert "requires it" in checks["tdx.tcb.status"][1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sev-snpp]\nminimum_firmware = '1.55'\n", "no installed provider is named 'sev-snpp'"),
        ("[sev-snp]\nminimum_tcbs = {}\n", "minimum_tcbs, which the 'sev-snp' provider"),
        ("[software-only]\nx = 1\n", "takes no platform policy"),
        ("minimum_firmware = '1.55'\n", "outside a provider table"),
        ("[sev-snp\n", "not valid TOML"),
        ("[sev-snp]\nminimum_firmware = 'new'\n", "unusable: [sev-snp] minimum_firmware must be"),
        ("[tdx]\naccepted_tcb_statuses = ['Revoked']\n", "may not include Revoked"),
    ],
)
def test_an_unusable_platform_policy_is_a_usage_error(
    tmp_path: Path, text: str, message: str
) -> None:
    spec, evidence = (
        (TDX_SPEC, tdx_evidence("gotdx-cos113-quote-v4.dat"))
        if "[tdx]" in text
        else (SEV_SPEC, milan_evidence())
    )
    claim = claim_with(tmp_path, spec, evidence, datetime.now(UTC) - timedelta(minutes=5))
    result = run_cmcp("verify", claim, "--platform-policy", policy_file(tmp_path, text))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in " ".join(result.stderr.split()), result.stderr
