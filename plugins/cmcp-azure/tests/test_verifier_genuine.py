"""The genuine Azure sets through both verifiers: each verifies hardware-attested with its
own nonce as the binding, and every link refuses what an attacker would change: a flipped
byte in each signed part, the runtime data edited, HCLAkPub swapped (with a quote re-signed
by the new key), another VM's quote, the HCL framing, a TD quote of another TD report."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cmcp_azure import hcl, runtime_data, tdreport
from cmcp_azure.evidence import encode
from cmcp_azure.snp_verifier import AzureSnpVerifier
from cmcp_azure.tdx_verifier import AzureTdxVerifier
from cmcp_azure.testing.checks import EVIDENCE_LINKS, SNP_HARDWARE, TDX_HARDWARE
from cmcp_azure.testing.vectors import AzureSet
from cmcp_cli.attestation.api import CheckStatus, EvidenceVerdict, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_tpm import structures as tpm

PASS, SKIP, FAIL = CheckStatus.PASS, CheckStatus.SKIP, CheckStatus.FAIL
AZURE_PASSING = (*EVIDENCE_LINKS, "azure.quote.nonce")


def snp(evidence: Any, trust: TrustInputs) -> EvidenceVerdict:
    return AzureSnpVerifier().verify(evidence, trust)


def tdx(evidence: Any, trust: TrustInputs) -> EvidenceVerdict:
    return AzureTdxVerifier().verify(evidence, trust)


def hcl_of(azure_set: AzureSet) -> hcl.HclReport:
    return hcl.parse(base64.b64decode(azure_set.evidence["hcl_report"]))


def with_runtime(azure_set: AzureSet, runtime: bytes) -> dict[str, Any]:
    """The set with its HCL report carrying other runtime data (the hardware report kept)."""
    report = hcl_of(azure_set)
    rebuilt = hcl.build(
        report.report_type, report.hardware_report, runtime, version=report.version, size=2600
    )
    return azure_set.with_member("hcl_report", encode(rebuilt))


def flip(offset: int) -> Any:
    def change(data: bytearray) -> None:
        data[offset] ^= 0x01

    return change


def assert_passing(verdict: EvidenceVerdict, names: tuple[str, ...]) -> None:
    got = statuses(verdict)
    assert [n for n in names if got[n] is not PASS] == [], verdict.checks


# ------------------------------------------------------------------ genuine sets


def test_the_milan_set_is_hardware_attested_through_the_quote(milan_set: AzureSet) -> None:
    verdict = snp(milan_set.evidence, milan_set.trust)
    assert verdict.hardware_attested and not verdict.failed, verdict.checks
    assert_passing(verdict, AZURE_PASSING + SNP_HARDWARE)
    assert statuses(verdict)["azure.user_data"] is SKIP
    assert "through the AK quote only" in reason(verdict, "azure.user_data")
    assert statuses(verdict)["azure.pcrs.pinned"] is SKIP
    assert "console-enabled true" in reason(verdict, "azure.vm_configuration")
    assert "allow_console defaults to true" in reason(verdict, "azure.vm_configuration")
    assert "SHA-256 of the HCL runtime data" in reason(verdict, "sev.report_data")
    assert verdict.measurement is not None
    assert verdict.measurement.startswith("sha384:9ac48fca")
    assert verdict.measurement.endswith("c315")


def test_the_user_data_set_binds_in_the_report_itself(userdata_set: AzureSet) -> None:
    verdict = snp(userdata_set.evidence, userdata_set.trust)
    assert verdict.hardware_attested and not verdict.failed, verdict.checks
    assert_passing(verdict, (*AZURE_PASSING, "azure.user_data", *SNP_HARDWARE))
    # no cert_chain in trustee's evidence: the vendored Milan ASK completes the chain
    assert "vendored" in reason(verdict, "sev.ark.pinned")


def test_the_tdx_set_is_hardware_attested_without_tcb_collateral(tdx_set: AzureSet) -> None:
    verdict = tdx(tdx_set.evidence, tdx_set.trust)
    assert verdict.hardware_attested and not verdict.failed, verdict.checks
    assert_passing(verdict, AZURE_PASSING + TDX_HARDWARE)
    assert statuses(verdict)["azure.user_data"] is SKIP
    assert statuses(verdict)["tdx.tcb.status"] is SKIP
    assert "not appraised" in reason(verdict, "tdx.tcb.status")
    assert verdict.measurement is not None and verdict.measurement.startswith("sha384:")


# ------------------------------------------------------------------ the binding


@pytest.mark.parametrize("name", ["milan_set", "tdx_set"])
def test_another_sessions_binding_fails_the_quote_nonce(
    name: str, request: pytest.FixtureRequest
) -> None:
    azure_set: AzureSet = request.getfixturevalue(name)
    verify = snp if name == "milan_set" else tdx
    verdict = verify(azure_set.evidence, azure_set.trusting(binding=bytes(range(32))))
    assert_fails(verdict, "azure.quote.nonce", "not the session binding")
    failed = sorted(n for n, s in statuses(verdict).items() if s is FAIL)
    assert failed == ["azure.quote.nonce"]


def test_user_data_of_another_session_fails(userdata_set: AzureSet) -> None:
    verdict = snp(userdata_set.evidence, userdata_set.trusting(binding=bytes(range(32))))
    assert_fails(verdict, "azure.user_data", "another session")
    failed = sorted(n for n, s in statuses(verdict).items() if s is FAIL)
    assert failed == ["azure.quote.nonce", "azure.user_data"]


# ------------------------------------------------------------------ signed parts


def test_a_flipped_snp_report_byte_fails_its_signature(milan_set: AzureSet) -> None:
    measurement = hcl.HARDWARE_OFFSET + 0x90  # inside the signed MEASUREMENT
    verdict = snp(milan_set.with_bytes("hcl_report", flip(measurement)), milan_set.trust)
    assert_fails(verdict, "sev.report.signature", "does not verify")
    assert statuses(verdict)["azure.runtime_data.hash"] is PASS


def test_a_flipped_vcek_byte_fails_the_chain(milan_set: AzureSet) -> None:
    vcek = base64.b64decode(milan_set.evidence["vcek"])
    verdict = snp(milan_set.with_bytes("vcek", flip(len(vcek) - 10)), milan_set.trust)
    assert_fails(verdict, "sev.vcek.chain")
    assert statuses(verdict)["sev.ark.pinned"] is SKIP


def test_a_flipped_attest_byte_fails_the_quote_signature(milan_set: AzureSet) -> None:
    clock = 2 + 4 + 2 + 34 + 2 + 9  # magic, type, qualifiedSigner, extraData: then clock
    verdict = snp(milan_set.with_bytes("tpm_quote.attest", flip(clock)), milan_set.trust)
    assert_fails(verdict, "azure.quote.signature", "does not verify with HCLAkPub")
    assert statuses(verdict)["azure.quote.format"] is PASS


def test_a_flipped_quote_signature_byte_fails(milan_set: AzureSet) -> None:
    verdict = snp(milan_set.with_bytes("tpm_quote.signature", flip(100)), milan_set.trust)
    assert_fails(verdict, "azure.quote.signature", "does not verify with HCLAkPub")


def test_a_flipped_td_quote_byte_fails_its_signature(tdx_set: AzureSet) -> None:
    mrtd = 48 + 136  # the quote header, then the TD body's MRTD
    verdict = tdx(tdx_set.with_bytes("td_quote", flip(mrtd)), tdx_set.trust)
    assert_fails(verdict, "tdx.quote.signature", "does not verify")
    assert_fails(verdict, "azure.td_quote.body", "mrtd")


def test_a_reported_pcr_changed_fails_the_digest(milan_set: AzureSet) -> None:
    evidence = json.loads(json.dumps(milan_set.evidence))
    evidence["tpm_quote"]["pcrs"]["sha256"]["7"] = "00" * 32
    verdict = snp(evidence, milan_set.trust)
    assert_fails(verdict, "azure.quote.pcrs", "not the quoted pcrDigest")


# ------------------------------------------------------------------ the runtime data


@pytest.mark.parametrize("name", ["milan_set", "tdx_set"])
def test_edited_runtime_data_is_not_the_reports(name: str, request: pytest.FixtureRequest) -> None:
    azure_set: AzureSet = request.getfixturevalue(name)
    runtime = hcl_of(azure_set).runtime_data
    edited = runtime.replace(b'"secure-boot":true', b'"secure-boot":false')
    assert edited != runtime
    verify = snp if name == "milan_set" else tdx
    verdict = verify(with_runtime(azure_set, edited), azure_set.trust)
    assert_fails(verdict, "azure.runtime_data.hash", "not the SHA-256 of the runtime data")
    hardware = "sev.report_data" if name == "milan_set" else "tdx.report_data"
    assert_fails(verdict, hardware, "SHA-256 of the HCL runtime data")


@pytest.mark.parametrize(
    ("document", "why"),
    [
        (b"[" * 1100, "nested too deeply"),  # deeper than the JSON parser recurses
        (b'{"keys": [], "keys": []}', "duplicate key 'keys'"),
        (b'{"keys": NaN}', "NaN is not JSON"),
        (b"\xff{}", "not UTF-8"),
    ],
)
def test_runtime_data_that_is_not_one_json_document_fails_its_check(
    milan_set: AzureSet, document: bytes, why: str
) -> None:
    verdict = snp(with_runtime(milan_set, document), milan_set.trust)
    assert_fails(verdict, "azure.runtime_data", why)
    assert "could not complete" not in reason(verdict, "azure.runtime_data")


def test_user_data_padded_with_whitespace_is_refused(milan_set: AzureSet) -> None:
    # as long as 64 bytes of hex, but 42 bytes once the spaces bytes.fromhex skips are gone
    document = json.loads(hcl_of(milan_set).runtime_data)
    document["user-data"] = "00" * 42 + " " * 44
    verdict = snp(with_runtime(milan_set, json.dumps(document).encode()), milan_set.trust)
    assert_fails(verdict, "azure.runtime_data", "user-data is not 64 bytes of hex")


def _swapped(azure_set: AzureSet, key: rsa.RSAPrivateKey) -> bytes:
    runtime = json.loads(hcl_of(azure_set).runtime_data)
    runtime["keys"][0] = runtime_data.jwk_of(key.public_key(), runtime_data.AK_KID)
    return json.dumps(runtime, separators=(",", ":")).encode()


def test_a_swapped_hclakpub_is_not_the_reports_even_with_a_quote_it_signed(
    milan_set: AzureSet,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    evidence = with_runtime(milan_set, _swapped(milan_set, key))
    verdict = snp(evidence, milan_set.trust)
    assert_fails(verdict, "azure.runtime_data.hash")
    assert_fails(verdict, "azure.quote.signature")  # the genuine quote is not the new key's
    attest = base64.b64decode(milan_set.evidence["tpm_quote"]["attest"])
    signature = key.sign(attest, padding.PKCS1v15(), hashes.SHA256())
    evidence["tpm_quote"] = {
        **evidence["tpm_quote"],
        "signature": encode(tpm.build_signature(tpm.ALG_RSASSA, tpm.ALG_SHA256, signature)),
    }
    resigned = snp(evidence, milan_set.trust)
    assert statuses(resigned)["azure.quote.signature"] is PASS
    assert_fails(resigned, "azure.runtime_data.hash")
    assert_fails(resigned, "sev.report_data")


def test_a_quote_from_another_vm_fails_its_signature(
    milan_set: AzureSet, tdx_set: AzureSet
) -> None:
    evidence = milan_set.with_member("tpm_quote", tdx_set.evidence["tpm_quote"])
    verdict = snp(evidence, milan_set.trust)
    assert_fails(verdict, "azure.quote.signature", "another VM")
    failed = sorted(n for n, s in statuses(verdict).items() if s is FAIL)
    assert failed == ["azure.quote.signature"]


# ------------------------------------------------------------------ the HCL framing


@pytest.mark.parametrize(
    ("offset", "fragment"),
    [(0, "not 48434c41"), (20, "reserved"), (1220, "IGVM"), (2599, "not all zero")],
    ids=["magic", "reserved header", "request data", "padding"],
)
def test_the_hcl_framing_tampered_fails_its_format(
    milan_set: AzureSet, offset: int, fragment: str
) -> None:
    verdict = snp(milan_set.with_bytes("hcl_report", flip(offset)), milan_set.trust)
    assert_fails(verdict, "azure.hcl.format", fragment)
    for check in verdict.checks:
        if check.name.startswith("sev."):
            assert check.status is SKIP and "azure.hcl.format" in check.reason, check


def test_an_hcl_report_of_the_other_hardware_is_refused(
    milan_set: AzureSet, tdx_set: AzureSet
) -> None:
    evidence = milan_set.with_member("hcl_report", tdx_set.evidence["hcl_report"])
    assert_fails(snp(evidence, milan_set.trust), "azure.hcl.format", "TDX report")
    evidence = tdx_set.with_member("hcl_report", milan_set.evidence["hcl_report"])
    assert_fails(tdx(evidence, tdx_set.trust), "azure.hcl.format", "SNP report")


def test_a_td_quote_of_another_td_report_fails_the_body(tdx_set: AzureSet) -> None:
    report = hcl_of(tdx_set)
    body = tdreport.body_of(report.hardware_report)
    other = tdreport.build(dataclasses.replace(body, mrtd=bytes(48)))
    rebuilt = hcl.build(hcl.ReportType.TDX, other, report.runtime_data, version=2, size=2600)
    verdict = tdx(tdx_set.with_member("hcl_report", encode(rebuilt)), tdx_set.trust)
    assert_fails(verdict, "azure.td_quote.body", "differs from the HCL report's TDREPORT in mrtd")
    failed = sorted(n for n, s in statuses(verdict).items() if s is FAIL)
    assert failed == ["azure.td_quote.body"]


def test_non_zero_padding_after_the_td_quote_is_refused(tdx_set: AzureSet) -> None:
    size = len(base64.b64decode(tdx_set.evidence["td_quote"]))
    verdict = tdx(tdx_set.with_bytes("td_quote", flip(size - 1)), tdx_set.trust)
    assert_fails(verdict, "azure.td_quote.body", "70 bytes after the TD quote's declared end")
    assert statuses(verdict)["tdx.quote.signature"] is PASS  # nothing signs them


# ------------------------------------------------------------------ the evidence's shape


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda e: {**e, "extra": 1}, "unknown member(s) extra"),
        (lambda e: {k: v for k, v in e.items() if k != "tpm_quote"}, "missing member tpm_quote"),
        (lambda e: {**e, "vcek": e["vcek"].rstrip("=")}, "vcek is not"),
        (lambda e: {**e, "tpm_quote": {**e["tpm_quote"], "x": 1}}, "tpm_quote.x"),
        (
            lambda e: {**e, "tpm_quote": {**e["tpm_quote"], "pcrs": {"sha1": {}}}},
            "one member sha256",
        ),
        (lambda e: {**e, "cert_chain": []}, "cert_chain must be a list of 1 to 2"),
    ],
    ids=["unknown", "no quote", "padding", "quote member", "bank", "empty chain"],
)
def test_malformed_evidence_fails_its_shape(
    milan_set: AzureSet, change: Any, fragment: str
) -> None:
    verdict = snp(change(milan_set.evidence), milan_set.trust)
    assert_fails(verdict, "azure.evidence.shape", fragment)


def test_a_flipped_vmpl_fails_the_vmpl_and_the_signature(milan_set: AzureSet) -> None:
    vmpl = hcl.HARDWARE_OFFSET + 0x30
    verdict = snp(milan_set.with_bytes("hcl_report", flip(vmpl)), milan_set.trust)
    assert_fails(verdict, "azure.snp.vmpl", "VMPL 1, not 0")
    assert_fails(verdict, "sev.report.signature")
