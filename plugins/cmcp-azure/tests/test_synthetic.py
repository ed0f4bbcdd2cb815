"""The synthetic HCL sets: each is what a paravisor writes (the strict parsers accept it,
REPORT_DATA is the runtime data's hash, the runtime data carries the AK, user data and
vm-configuration given), and its hardware report passes cmcp-sev's or cmcp-tdx's verifier
under the test root, with the runtime data's hash standing for the binding."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cmcp_azure import hcl, runtime_data, tdreport
from cmcp_azure.testing.synthetic import (
    SnpAuthority,
    ak_quote,
    report_data_for,
    snp_set,
    tdx_set,
)
from cmcp_cli.attestation.api import CheckStatus, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, statuses
from cmcp_sev.synthetic import AT, evidence
from cmcp_sev.verifier import SevVerifier
from cmcp_tdx.quote import parse_quote
from cmcp_tdx.verifier import TdxVerifier
from cmcp_tpm import structures as tpm

USER_DATA = bytes(range(32)) + bytes(32)
CONFIGURATION = {"console-enabled": True, "secure-boot": False, "tpm-enabled": True}


@pytest.fixture(scope="module")
def ak_public() -> rsa.RSAPublicKey:
    return rsa.generate_private_key(65537, 2048).public_key()


def _trust(report: hcl.HclReport, root_pem: bytes) -> TrustInputs:
    return TrustInputs(binding=report.runtime_data_digest, at=AT, trust_roots=(root_pem,))


@pytest.mark.parametrize("kind", ["snp", "tdx"])
def test_the_runtime_data_carries_what_was_given(kind: str, ak_public: rsa.RSAPublicKey) -> None:
    make = snp_set if kind == "snp" else tdx_set
    made = make(ak_public, user_data=USER_DATA, vm_configuration=CONFIGURATION, size=2048)
    assert len(made.hcl_report) == 2048
    report = hcl.parse(made.hcl_report)
    assert report.report_type is (hcl.ReportType.SNP if kind == "snp" else hcl.ReportType.TDX)
    assert report.runtime_data == made.runtime_data
    assert report.report_data == report.expected_report_data == report_data_for(made.runtime_data)
    parsed = runtime_data.parse(report.runtime_data)
    assert parsed.ak_public.public_numbers() == ak_public.public_numbers()
    assert parsed.user_data == USER_DATA
    assert dict(parsed.vm_configuration.members) == CONFIGURATION


def test_the_snp_report_passes_the_sev_verifier_under_the_test_root(
    ak_public: rsa.RSAPublicKey,
) -> None:
    made = snp_set(ak_public)
    report = hcl.parse(made.hcl_report)
    chain = [x509.load_der_x509_certificate(der) for der in made.chain]
    doc = evidence(report.hardware_report, x509.load_der_x509_certificate(made.vcek), chain)
    verdict = SevVerifier().verify(doc, _trust(report, made.root_pem))
    assert verdict.hardware_attested and not verdict.failed, verdict.checks
    assert statuses(verdict)["sev.report_data"] is CheckStatus.PASS
    other_root = SnpAuthority.create().pki.root_pem()
    assert_fails(SevVerifier().verify(doc, _trust(report, other_root)), "sev.ark.pinned")


def test_one_authority_signs_many_reports_of_one_chip(ak_public: rsa.RSAPublicKey) -> None:
    authority = SnpAuthority.create()
    first = snp_set(ak_public, authority=authority)
    second = snp_set(ak_public, user_data=USER_DATA, authority=authority)
    assert (first.vcek, first.chain, first.root_pem) == (second.vcek, second.chain, second.root_pem)
    assert first.hcl_report != second.hcl_report


def test_the_td_quote_repeats_the_tdreport_and_passes_the_tdx_verifier(
    ak_public: rsa.RSAPublicKey,
) -> None:
    made = tdx_set(ak_public, user_data=USER_DATA)
    report = hcl.parse(made.hcl_report)
    assert parse_quote(made.td_quote).body == tdreport.body_of(report.hardware_report)
    doc = {"quote": base64.b64encode(made.td_quote).decode()}
    verdict = TdxVerifier().verify(doc, _trust(report, made.root_pem))
    assert verdict.hardware_attested and not verdict.failed, verdict.checks
    assert statuses(verdict)["tdx.tcb.status"] is CheckStatus.SKIP


def test_the_ak_quote_is_over_pcrs_0_to_23_for_the_binding() -> None:
    ak = rsa.generate_private_key(65537, 2048)
    binding = bytes(range(32))
    made = ak_quote(ak, binding)
    attest = tpm.parse_attest(made.attest)
    assert (attest.magic, attest.type) == (0xFF544347, 0x8018)
    assert attest.extra_data == binding
    assert attest.pcr_selection == (("sha256", tuple(range(24))),)
    assert attest.pcr_digest == hashlib.sha256(b"".join(made.pcrs)).digest()
    signature = tpm.parse_signature(made.signature)
    assert (signature.scheme, signature.hash_alg) == (tpm.ALG_RSASSA, tpm.ALG_SHA256)
    ak.public_key().verify(signature.value, made.attest, padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(ValueError, match="24 PCR values"):
        ak_quote(ak, binding, made.pcrs[:23])
