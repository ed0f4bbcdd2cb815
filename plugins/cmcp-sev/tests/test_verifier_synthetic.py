"""The verifier on synthetic evidence with real signatures from an AMD-shaped test PKI:
the paths the genuine vectors cannot reach (a report bound to our binding, versions 3 to 5,
Turin's TCB layout and 8-byte hwID, VLEKs) and each refusal, by its named check."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import CheckStatus, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_sev import certificates as certs
from cmcp_sev import structures as snp
from cmcp_sev.synthetic import (
    AT,
    TURIN_CPUID,
    AmdPki,
    ReportFields,
    amd_extension_values,
    evidence,
    report_body,
    sign_report,
)
from cmcp_sev.verifier import SevVerifier

BINDING = bytes(range(100, 132))
TURIN_TCB = bytes([1, 4, 0, 22, 0, 0, 0, 72])  # fmc 1, bl 4, tee 0, snp 22, ucode 72


def _fields(**changes: Any) -> ReportFields:
    return replace(ReportFields(report_data=BINDING + bytes(32)), **changes)


def _vcek(
    pki: AmdPki, key: ec.EllipticCurvePrivateKey, fields: ReportFields, **changes: Any
) -> x509.Certificate:
    return pki.vcek(key, fields, **changes)


def _trust(pki: AmdPki, **changes: Any) -> TrustInputs:
    values: dict[str, Any] = {"binding": BINDING, "at": AT, "trust_roots": (pki.root_pem(),)}
    return TrustInputs(**(values | changes))


def _verify(
    pki: AmdPki,
    key: ec.EllipticCurvePrivateKey,
    fields: ReportFields,
    *,
    vcek: x509.Certificate | None = None,
    trust: TrustInputs | None = None,
    signing_key: str = "vcek",
) -> Any:
    report = sign_report(report_body(fields), key)
    leaf = vcek if vcek is not None else _vcek(pki, key, fields)
    doc = evidence(report, leaf, [pki.ask, pki.ark], signing_key=signing_key)
    return SevVerifier().verify(doc, trust or _trust(pki))


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_a_bound_report_of_each_version_is_hardware_attested(
    milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey, version: int
) -> None:
    verdict = _verify(milan_pki, chip_key, _fields(version=version))
    assert not verdict.failed, verdict.checks
    assert verdict.hardware_attested
    assert "the root given with --trust-root, ARK-Milan" in reason(verdict, "sev.ark.pinned")
    assert verdict.measurement == "sha384:" + bytes(range(48)).hex()


def test_the_test_root_is_not_trusted_without_being_pinned(
    milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    trust = TrustInputs(binding=BINDING, at=AT)  # the vendored AMD roots only
    verdict = _verify(milan_pki, chip_key, _fields(), trust=trust)
    assert_fails(verdict, "sev.ark.pinned", "not issued by a pinned root", "vendored AMD roots")
    assert statuses(verdict)["sev.report.signature"] is CheckStatus.PASS


def test_turin_reports_use_the_fmc_layout_and_the_8_byte_hwid(
    turin_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    fields = _fields(
        version=5, cpuid=TURIN_CPUID, tcb=TURIN_TCB, chip_id=bytes(range(1, 9)) + bytes(56)
    )
    verdict = _verify(turin_pki, chip_key, fields)
    assert verdict.hardware_attested, verdict.checks
    assert "fmc=1 bl=4 tee=0 snp=22 ucode=72" in reason(verdict, "sev.vcek.tcb")
    assert "first 8 bytes" in reason(verdict, "sev.vcek.chip_id")
    wrong_chip = _vcek(turin_pki, chip_key, replace(fields, chip_id=bytes(range(2, 66))))
    assert_fails(
        _verify(turin_pki, chip_key, fields, vcek=wrong_chip), "sev.vcek.chip_id", "8-byte hwID"
    )
    no_fmc = _vcek(turin_pki, chip_key, replace(fields, tcb=bytes([9, 4, 0, 22, 0, 0, 0, 72])))
    assert_fails(_verify(turin_pki, chip_key, fields, vcek=no_fmc), "sev.vcek.tcb", "fmc 9 != 1")


def test_a_turin_report_is_refused_by_a_milan_root(
    milan_pki: AmdPki, turin_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    fields = _fields(cpuid=TURIN_CPUID, tcb=TURIN_TCB)
    parts = snp.Tcb(TURIN_TCB).decode(snp.Product.TURIN)
    vcek = milan_pki.leaf(chip_key, amd_extension_values(parts, fields.chip_id[:8], "Turin"))
    verdict = _verify(milan_pki, chip_key, fields, vcek=vcek)
    assert_fails(verdict, "sev.product", "CPUID says Turin", "issuer says Milan")
    # A VCEK of another PKI's Turin ASK has no issuer among the supplied and vendored ASKs.
    stray = _verify(milan_pki, chip_key, fields, vcek=_vcek(turin_pki, chip_key, fields))
    assert_fails(stray, "sev.vcek.chain", "No ASK or ASVK named CN=SEV-Turin")


def test_unknown_processor_fails_the_product(
    milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    verdict = _verify(milan_pki, chip_key, _fields(cpuid=(0x17, 0x31, 0)))
    assert_fails(verdict, "sev.product", "family 0x17 model 0x31")


def test_a_vcek_for_another_tcb_or_chip_fails(
    milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    fields = _fields()
    older = _vcek(milan_pki, chip_key, replace(fields, tcb=bytes([3, 0, 0, 0, 0, 0, 7, 115])))
    assert_fails(_verify(milan_pki, chip_key, fields, vcek=older), "sev.vcek.tcb", "snp 7 != 8")
    other_chip = _vcek(milan_pki, chip_key, replace(fields, chip_id=bytes(64 * [7])))
    assert_fails(
        _verify(milan_pki, chip_key, fields, vcek=other_chip), "sev.vcek.chip_id", "another chip"
    )
    masked = replace(fields, chip_id=bytes(64))
    verdict = _verify(milan_pki, chip_key, masked, vcek=_vcek(milan_pki, chip_key, fields))
    assert_fails(verdict, "sev.vcek.chip_id", "MASK_CHIP_ID")
    bad_spl = _vcek(
        milan_pki, chip_key, fields, extensions={certs.SPL_OIDS["bl"]: b"\x02\x02\x01\x00"}
    )
    assert_fails(_verify(milan_pki, chip_key, fields, vcek=bad_spl), "sev.vcek.tcb", "0..255")


def test_vlek_signed_reports(vlek_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey) -> None:
    fields = _fields(signing_key=snp.SigningKey.VLEK, cpuid=(0x19, 0x11, 0))
    parts = snp.Tcb(fields.tcb).decode(snp.Product.GENOA)
    vlek = vlek_pki.leaf(
        chip_key, amd_extension_values(parts, None, "Genoa"), common_name="SEV-VLEK"
    )
    verdict = _verify(vlek_pki, chip_key, fields, vcek=vlek, signing_key="vlek")
    assert verdict.hardware_attested, verdict.checks
    assert statuses(verdict)["sev.vcek.chip_id"] is CheckStatus.SKIP
    # Given as a VCEK, the report's SIGNING_KEY field contradicts it.
    as_vcek = _verify(vlek_pki, chip_key, fields, vcek=vlek)
    assert_fails(as_vcek, "sev.report.signature", "SIGNING_KEY field is 1 (VLEK)")
    report = sign_report(report_body(fields), chip_key)
    missing = SevVerifier().verify(evidence(report, None, signing_key="vlek"), _trust(vlek_pki))
    assert_fails(missing, "sev.vcek.chain", "No VLEK was supplied")


def test_chain_refusals(milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey) -> None:
    fields = _fields()
    expired = _vcek(milan_pki, chip_key, fields, not_after=datetime(2026, 1, 1, tzinfo=AT.tzinfo))
    assert_fails(_verify(milan_pki, chip_key, fields, vcek=expired), "sev.vcek.chain", "expired")
    stranger = AmdPki.create(snp.Product.MILAN)
    forged = _vcek(stranger, chip_key, fields)  # same names, another ASK key
    verdict = _verify(milan_pki, chip_key, fields, vcek=forged)
    assert_fails(verdict, "sev.vcek.chain", "not signed by the key of SEV-Milan")
    rsa_leaf = milan_pki.leaf(chip_key, {})
    assert certs.leaf_key_problem(rsa_leaf, "leaf") is None
    assert certs.ca_problem(rsa_leaf, "leaf") is not None


@pytest.mark.parametrize(
    ("evidence_doc", "fragment"),
    [
        ([], "not a JSON object"),
        ({"report": "AAAA", "signing_key": "vcek", "extra": 1}, "unknown member(s) extra"),
        ({"report": "AA==\n", "signing_key": "vcek"}, "report is not standard base64"),
        ({"report": "AB==", "signing_key": "vcek"}, "not canonical"),
        ({"report": "AAAA", "signing_key": "ark"}, "signing_key must be"),
        ({"report": "AAAA", "signing_key": "vcek", "vlek": "AAAA"}, "vlek is given"),
        ({"report": "AAAA", "signing_key": "vcek", "cert_chain": []}, "cert_chain must be"),
        ({"report": "AAAA", "signing_key": "vcek", "product": "milan"}, "product must be"),
        ({"report": "AAAA", "signing_key": "vcek", "vcek": "AAAA"}, "not a DER X.509"),
    ],
)
def test_malformed_evidence_fails_the_shape(evidence_doc: Any, fragment: str) -> None:
    verdict = SevVerifier().verify(evidence_doc, TrustInputs(binding=BINDING, at=AT))
    assert_fails(verdict, "sev.evidence.shape", fragment)


def test_a_short_report_fails_the_version_check() -> None:
    doc = {"report": "AAAA", "signing_key": "vcek"}
    verdict = SevVerifier().verify(doc, TrustInputs(binding=BINDING, at=AT))
    assert_fails(verdict, "sev.report.version", "1184 bytes, these are 3")
    assert verdict.measurement is None


# AMD's CRL, supplied by the auditor as collateral: it revokes intermediates (ASK, ASVK).
REVOCATION = "sev.ask.revocation"


def _with_crl(pki: AmdPki, key: ec.EllipticCurvePrivateKey, *collateral: bytes, **more: Any) -> Any:
    return _verify(pki, key, _fields(), trust=_trust(pki, collateral=collateral, **more))


def test_without_a_crl_revocation_is_skipped_and_says_where_to_get_it(
    milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    verdict = _with_crl(milan_pki, chip_key)
    assert statuses(verdict)[REVOCATION] is CheckStatus.SKIP
    assert "https://kdsintf.amd.com/vcek/v1/Milan/crl" in reason(verdict, REVOCATION)
    assert verdict.hardware_attested
    required = _with_crl(milan_pki, chip_key, platform_policy={"require_crl": True})
    assert_fails(required, REVOCATION, "was not checked", "platform policy requires")


@pytest.mark.parametrize("encoding", [Encoding.DER, Encoding.PEM])
def test_a_crl_that_does_not_list_the_ask_passes(
    milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey, encoding: Encoding
) -> None:
    crl = milan_pki.crl().public_bytes(encoding)
    verdict = _with_crl(milan_pki, chip_key, b'{"another": "verifier"}', crl)
    assert statuses(verdict)[REVOCATION] is CheckStatus.PASS, reason(verdict, REVOCATION)
    assert "SEV-Milan" in reason(verdict, REVOCATION)
    assert verdict.hardware_attested


def test_a_revoked_ask_fails(milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey) -> None:
    crl = milan_pki.crl((milan_pki.ask,)).public_bytes(Encoding.DER)
    verdict = _with_crl(milan_pki, chip_key, crl)
    assert_fails(verdict, REVOCATION, "SEV-Milan", "is revoked")
    assert not verdict.hardware_attested


def test_a_crl_not_signed_by_the_pinned_ark_fails(
    milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    impostor = AmdPki.create(snp.Product.MILAN)  # same names, other keys
    forged = milan_pki.crl(signer=impostor.ark_key).public_bytes(Encoding.DER)
    assert_fails(_with_crl(milan_pki, chip_key, forged), REVOCATION, "not signed by the key of")
    pkcs1 = milan_pki.crl(rsa_padding=padding.PKCS1v15()).public_bytes(Encoding.DER)
    assert_fails(_with_crl(milan_pki, chip_key, pkcs1), REVOCATION, "RSASSA-PSS")


def test_a_crl_expired_before_the_claim_fails(
    milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    stale = milan_pki.crl(
        last_update=AT - timedelta(days=30), next_update=AT - timedelta(days=1)
    ).public_bytes(Encoding.DER)
    assert_fails(_with_crl(milan_pki, chip_key, stale), REVOCATION, "expired at", "KDS")


def test_a_crl_of_another_product_is_not_used(
    milan_pki: AmdPki, turin_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    other = turin_pki.crl((milan_pki.ask,)).public_bytes(Encoding.DER)
    verdict = _with_crl(milan_pki, chip_key, other)
    assert statuses(verdict)[REVOCATION] is CheckStatus.SKIP


def test_a_pem_crl_that_does_not_parse_fails_rather_than_going_unchecked(
    milan_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    pem = bytearray(milan_pki.crl().public_bytes(Encoding.PEM))
    pem[40:44] = b"!!!!"  # inside the base64 body
    verdict = _with_crl(milan_pki, chip_key, bytes(pem))
    assert_fails(verdict, REVOCATION, "Collateral file 1", "does not parse")


def test_a_crl_of_another_issuer_is_named_when_revocation_is_skipped(
    milan_pki: AmdPki, turin_pki: AmdPki, chip_key: ec.EllipticCurvePrivateKey
) -> None:
    other = turin_pki.crl().public_bytes(Encoding.DER)
    verdict = _with_crl(milan_pki, chip_key, other)
    assert statuses(verdict)[REVOCATION] is CheckStatus.SKIP
    assert "the CRLs supplied are issued by CN=ARK-Turin" in reason(verdict, REVOCATION)
