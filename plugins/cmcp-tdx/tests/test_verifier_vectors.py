"""The genuine TDX quotes of ../shared/attestation-vectors, judged offline as MANIFEST.md
states: all chain to the Intel SGX Root CA, the CCEL log replays to the COS-113 quote's
RTMRs, the dcap-qvl collateral appraises UpToDate in its validity window and fails after
its CRL expired; and tampering, a wrong root, a late time and a foreign REPORTDATA each
fail the right named check."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import CheckStatus, EvidenceVerdict, ProviderError, TrustInputs
from cmcp_cli.testing.tamper import tamperings
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_tdx import verifier as v
from cmcp_tdx.measurement import measurement_string
from cmcp_tdx.quote import parse_quote
from cmcp_tdx.verifier import TdxVerifier

Vector = Callable[[str], bytes]
AT = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)  # inside every certificate's validity
COLLATERAL_AT = dt.datetime(2025, 6, 20, tzinfo=dt.UTC)  # inside the collateral's window
SPR, COS, QVL = (
    "gotdx-spr-e4-quote-v4.dat",
    "gotdx-cos113-quote-v4.dat",
    "dcapqvl-b0c06f-quote-v4.dat",
)
ALL_CHECKS = (
    v.SHAPE, v.HEADER, v.PCK_CHAIN, v.ROOT_PINNED, v.QE_SIGNATURE, v.QE_BINDING,
    v.QUOTE_SIGNATURE, v.REPORT_DATA, v.DEBUG, v.RTMR_REPLAY, v.TCB_STATUS,
)  # fmt: skip
SIGNED_HARDWARE = tuple(c for c in v.HARDWARE_CHECKS if c != v.REPORT_DATA)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def own_binding(raw: bytes) -> bytes:
    """The first half of the quote's REPORTDATA, as if it were our binding."""
    return parse_quote(raw).body.report_data[:32]


def judge(
    raw: bytes, at: dt.datetime = AT, binding: bytes | None = None, **evidence: Any
) -> EvidenceVerdict:
    trust = TrustInputs(binding=own_binding(raw) if binding is None else binding, at=at)
    return TdxVerifier().verify({"quote": b64(raw), **evidence}, trust)


@pytest.mark.parametrize(
    ("name", "fmspc", "mrtd", "report_data"),
    [
        (SPR, "50806f000000", "6363b804", "6c62dec1"),
        (COS, "00806f050000", None, "00000000"),
        (QVL, "b0c06f000000", "91eb2b44", None),
    ],
)
def test_genuine_quotes_chain_to_the_intel_root(
    vector: Vector, name: str, fmspc: str, mrtd: str | None, report_data: str | None
) -> None:
    raw = vector(name)
    quote = parse_quote(raw)
    if mrtd is not None:
        assert quote.body.mrtd.hex().startswith(mrtd)
    if report_data is not None:
        assert quote.body.report_data.hex().startswith(report_data)
    verdict = judge(raw)
    status = statuses(verdict)
    assert tuple(status) == ALL_CHECKS
    for check in SIGNED_HARDWARE:
        assert status[check] is CheckStatus.PASS, reason(verdict, check)
    assert "Intel SGX Root CA" in reason(verdict, v.ROOT_PINNED)
    assert "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3" in reason(
        verdict, v.ROOT_PINNED
    )
    assert status[v.TCB_STATUS] is CheckStatus.SKIP
    assert "not appraised" in reason(verdict, v.TCB_STATUS)
    assert verdict.measurement is not None and verdict.measurement.startswith("sha384:")
    assert "MRTD " + quote.body.mrtd.hex() in reason(verdict, v.QUOTE_SIGNATURE)


def test_the_mrtd_and_report_data_are_as_the_manifest_states(vector: Vector) -> None:
    spr = parse_quote(vector(SPR)).body
    assert spr.mrtd.hex().endswith("5cbb") and spr.report_data.hex().endswith("1113")
    assert parse_quote(vector(COS)).body.report_data == bytes(64)
    assert parse_quote(vector(QVL)).body.mrtd.hex().endswith("18b7")


def test_a_genuine_quote_with_our_binding_is_hardware_attested(vector: Vector) -> None:
    # The COS-113 quote's REPORTDATA is all zero: the binding of 32 zero bytes matches it.
    verdict = judge(vector(COS))
    assert not verdict.failed, verdict.checks
    assert verdict.hardware_attested


def test_the_ccel_log_replays_to_the_cos113_rtmrs(vector: Vector) -> None:
    verdict = judge(vector(COS), ccel=b64(vector("gotdx-cos113-ccel-data.dat")))
    assert statuses(verdict)[v.RTMR_REPLAY] is CheckStatus.PASS, reason(verdict, v.RTMR_REPLAY)
    assert "43 CCEL events" in reason(verdict, v.RTMR_REPLAY)
    assert verdict.hardware_attested


def test_a_ccel_log_of_another_td_fails_the_replay(vector: Vector) -> None:
    verdict = judge(vector(SPR), ccel=b64(vector("gotdx-cos113-ccel-data.dat")))
    assert_fails(verdict, v.RTMR_REPLAY, "RTMR0")


def test_a_truncated_ccel_log_fails(vector: Vector) -> None:
    log = vector("gotdx-cos113-ccel-data.dat")
    verdict = judge(vector(COS), ccel=b64(log[:5000]))
    assert_fails(verdict, v.RTMR_REPLAY, "CCEL")


def test_report_data_of_the_vendor_is_not_our_binding(vector: Vector) -> None:
    raw = vector(SPR)
    verdict = TdxVerifier().verify({"quote": b64(raw)}, TrustInputs(binding=bytes(32), at=AT))
    assert_fails(verdict, v.REPORT_DATA, "6c62dec1", "another session")
    assert statuses(verdict)[v.QUOTE_SIGNATURE] is CheckStatus.PASS


@pytest.mark.parametrize("name", [SPR, QVL])
def test_every_sampled_flip_in_header_or_body_fails(vector: Vector, name: str) -> None:
    raw = vector(name)
    signed, binding = len(parse_quote(raw).signed), own_binding(raw)
    for offset in range(0, signed, 3):
        tampered = bytearray(raw)
        tampered[offset] ^= 0x01
        verdict = judge(bytes(tampered), binding=binding)
        assert verdict.failed and not verdict.hardware_attested, offset
        status = statuses(verdict)
        if offset >= 2:
            assert status[v.QUOTE_SIGNATURE] is CheckStatus.FAIL, (offset, verdict.checks)
        else:  # another version means another layout: the quote does not parse as v4
            assert_fails(verdict, v.HEADER, "not a TDX DCAP quote")


def test_a_flip_in_the_qe_report_fails_the_qe_signature(vector: Vector) -> None:
    raw = vector(SPR)
    start = len(parse_quote(raw).signed) + 4 + 64 + 64 + 6
    for offset in (start, start + 100, start + 383):
        tampered = bytearray(raw)
        tampered[offset] ^= 0x80
        assert_fails(judge(bytes(tampered)), v.QE_SIGNATURE, "PCK certificate's key")


def test_a_flip_in_the_attestation_key_fails_the_qe_binding(vector: Vector) -> None:
    raw = vector(SPR)
    offset = len(parse_quote(raw).signed) + 4 + 64 + 5
    tampered = bytearray(raw)
    tampered[offset] ^= 0x01
    verdict = judge(bytes(tampered))
    assert_fails(verdict, v.QE_BINDING, "did not vouch")


def _other_root() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Intel SGX Root CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2050, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM)


def test_a_wrong_root_fails_the_chain_and_the_pin(vector: Vector) -> None:
    raw = vector(SPR)
    trust = TrustInputs(binding=own_binding(raw), at=AT, trust_roots=(_other_root(),))
    verdict = TdxVerifier().verify({"quote": b64(raw)}, trust)
    assert_fails(verdict, v.PCK_CHAIN, "does not verify to a pinned root")
    assert_fails(verdict, v.ROOT_PINNED, "the roots given with --trust-root")
    assert statuses(verdict)[v.QE_SIGNATURE] is CheckStatus.SKIP


def test_the_intel_root_given_as_trust_root_verifies(vector: Vector) -> None:
    raw = vector(COS)
    root = vector("intel-sgx-root-ca.pem")
    trust = TrustInputs(binding=own_binding(raw), at=AT, trust_roots=(root,))
    verdict = TdxVerifier().verify({"quote": b64(raw)}, trust)
    assert statuses(verdict)[v.ROOT_PINNED] is CheckStatus.PASS
    assert verdict.hardware_attested
    # the very bytes of the vendored root, but given by the auditor: named as theirs
    said = reason(verdict, v.ROOT_PINNED)
    assert "a root given with --trust-root" in said and "vendored" not in said
    assert "the vendored Intel SGX Root CA" in reason(judge(raw, binding=bytes(32)), v.ROOT_PINNED)


def test_after_the_pck_leaf_expired_the_chain_fails(vector: Vector) -> None:
    verdict = judge(vector(SPR), at=dt.datetime(2029, 9, 21, tzinfo=dt.UTC))
    assert_fails(verdict, v.PCK_CHAIN, "Intel SGX PCK Certificate", "expired at 2029-09-20")


def test_before_the_pck_leaf_was_issued_the_chain_fails(vector: Vector) -> None:
    verdict = judge(vector(COS), at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    assert_fails(verdict, v.PCK_CHAIN, "not valid until")


def test_collateral_appraises_up_to_date_in_its_window(vector: Vector) -> None:
    collateral = json.loads(vector("dcapqvl-b0c06f-collateral.json"))
    verdict = judge(vector(QVL), at=COLLATERAL_AT, collateral=collateral)
    assert statuses(verdict)[v.TCB_STATUS] is CheckStatus.PASS, reason(verdict, v.TCB_STATUS)
    assert "TCB status UpToDate" in reason(verdict, v.TCB_STATUS)


def test_collateral_given_by_the_verifier_is_used(vector: Vector) -> None:
    raw = vector(QVL)
    collateral = json.loads(vector("dcapqvl-b0c06f-collateral.json"))
    trust = TrustInputs(binding=own_binding(raw), at=COLLATERAL_AT)
    verdict = TdxVerifier(collateral).verify({"quote": b64(raw)}, trust)
    assert "from collateral in the verifier" in reason(verdict, v.TCB_STATUS)


def test_collateral_given_as_the_auditors_files_is_used(vector: Vector) -> None:
    raw = vector(QVL)
    document = vector("dcapqvl-b0c06f-collateral.json")
    # an unrelated file beside it (another verifier's collateral) is passed over
    trust = TrustInputs(
        binding=own_binding(raw), at=COLLATERAL_AT, collateral=(b"not json", document)
    )
    verdict = TdxVerifier().verify({"quote": b64(raw)}, trust)
    assert "TCB status UpToDate" in reason(verdict, v.TCB_STATUS)
    assert "from collateral in the verifier" in reason(verdict, v.TCB_STATUS)


def test_two_collateral_documents_are_refused_not_picked_from(vector: Vector) -> None:
    raw = vector(QVL)
    document = vector("dcapqvl-b0c06f-collateral.json")
    trust = TrustInputs(binding=own_binding(raw), at=COLLATERAL_AT, collateral=(document,) * 2)
    verdict = TdxVerifier().verify({"quote": b64(raw)}, trust)
    assert_fails(verdict, v.TCB_STATUS, "more than one Intel PCS collateral document")


def test_collateral_after_its_crl_expired_fails(vector: Vector) -> None:
    collateral = json.loads(vector("dcapqvl-b0c06f-collateral.json"))
    verdict = judge(vector(QVL), at=AT, collateral=collateral)
    assert_fails(verdict, v.TCB_STATUS, "CRL expired", "2025-07-19")


def test_tampered_tcb_info_fails_its_signature(vector: Vector) -> None:
    collateral = json.loads(vector("dcapqvl-b0c06f-collateral.json"))
    collateral["tcb_info"] = collateral["tcb_info"].replace("OutOfDate", "UpToDate", 1)
    verdict = judge(vector(QVL), at=COLLATERAL_AT, collateral=collateral)
    assert_fails(verdict, v.TCB_STATUS, "tcb_info signature does not verify")


def test_collateral_of_another_platform_fails(vector: Vector) -> None:
    collateral = json.loads(vector("dcapqvl-b0c06f-collateral.json"))
    verdict = judge(vector(SPR), at=COLLATERAL_AT, collateral=collateral)
    assert_fails(verdict, v.TCB_STATUS, "FMSPC B0C06F000000", "50806f000000")


def test_debug_td_fails_unless_allowed(vector: Vector) -> None:
    # Setting DEBUG also breaks the signature; the debug check judges the attribute alone.
    raw = bytearray(vector(COS))
    raw[48 + 16 + 48 + 48 + 8] |= 0x01
    verdict = judge(bytes(raw))
    assert statuses(verdict)[v.QUOTE_SIGNATURE] is CheckStatus.FAIL
    assert_fails(verdict, v.DEBUG, "DEBUG set")
    trust = TrustInputs(binding=bytes(32), at=AT, allow_debug=True)
    allowed = TdxVerifier().verify({"quote": b64(bytes(raw))}, trust)
    assert statuses(allowed)[v.DEBUG] is CheckStatus.PASS


def test_the_verdict_states_the_measurement_the_host_pins(vector: Vector) -> None:
    # Pinning is the host's `measurement` check (tests/test_confidential_vm_claims.py): the
    # verifier states MRTD and RTMR0..3 as one measurement, whatever the pins.
    raw = vector(COS)
    body = parse_quote(raw).body
    for pins in ((), ("sha384:" + "00" * 48,)):
        trust = TrustInputs(binding=bytes(32), at=AT, expected_measurements=pins)
        verdict = TdxVerifier().verify({"quote": b64(raw)}, trust)
        assert verdict.measurement == measurement_string(body.mrtd, body.rtmrs)


@pytest.mark.parametrize(
    ("evidence", "fragment"),
    [
        ({}, "missing member quote"),
        ({"quote": "AAA"}, "not standard base64"),
        ({"quote": "QUFB", "extra": 1}, "unknown members extra"),
        ({"quote": "QUFB", "collateral": []}, "collateral must be a JSON object"),
    ],
)
def test_malformed_evidence_fails_the_shape(evidence: dict[str, Any], fragment: str) -> None:
    verdict = TdxVerifier().verify(evidence, TrustInputs(binding=bytes(32), at=AT))
    assert_fails(verdict, v.SHAPE, fragment)


def _with_policy(raw: bytes, at: dt.datetime, **policy: Any) -> EvidenceVerdict:
    trust = TrustInputs(binding=own_binding(raw), at=at, platform_policy=policy)
    return TdxVerifier().verify({"quote": b64(raw)}, trust)


def test_a_status_the_auditors_policy_does_not_accept_fails(vector: Vector) -> None:
    raw, document = vector(QVL), vector("dcapqvl-b0c06f-collateral.json")
    trust = TrustInputs(
        binding=own_binding(raw),
        at=COLLATERAL_AT,
        collateral=(document,),
        platform_policy={"accepted_tcb_statuses": ["SWHardeningNeeded"]},
    )
    verdict = TdxVerifier().verify({"quote": b64(raw)}, trust)
    assert_fails(verdict, v.TCB_STATUS, "UpToDate", "the auditor's policy does not accept")
    assert not verdict.hardware_attested
    strict = replace(trust, platform_policy={"accepted_tcb_statuses": ["UpToDate"]})
    assert "TCB status UpToDate" in reason(
        TdxVerifier().verify({"quote": b64(raw)}, strict), v.TCB_STATUS
    )


def test_required_collateral_that_is_missing_fails_instead_of_skipping(vector: Vector) -> None:
    verdict = _with_policy(vector(COS), AT, require_collateral=True)
    assert_fails(verdict, v.TCB_STATUS, "not appraised", "requires it", "--collateral")
    assert statuses(_with_policy(vector(COS), AT))[v.TCB_STATUS] is CheckStatus.SKIP


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"accepted_tcb_statuses": ["UpToDate", "Revoked"]}, "may not include Revoked"),
        ({"accepted_tcb_statuses": ["UptoDate"]}, "not an Intel TCB status"),
        ({"accepted_tcb_statuses": []}, "non-empty list"),
        ({"require_collateral": "yes"}, "true or false"),
        ({"minimum_tcb": {}}, "minimum_tcb"),
    ],
)
def test_an_unusable_policy_is_refused_naming_the_key(
    vector: Vector, policy: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProviderError, match=message):
        _with_policy(vector(COS), AT, **policy)


def _certificate_text(raw: bytes, which: int) -> tuple[int, int]:
    """Where the base64 body of PEM certificate `which` (0-based) of the quote lies."""
    at = -1
    for _ in range(which + 1):
        at = raw.index(b"-----BEGIN CERTIFICATE-----", at + 1)
    return at + len(b"-----BEGIN CERTIFICATE-----\n"), raw.index(b"-----END", at)


def test_an_altered_copy_of_the_root_in_the_quote_fails(vector: Vector) -> None:
    """The pinned root stands in for the quote's copy of it; an altered copy is refused,
    not passed over."""
    raw = bytearray(vector(COS))
    _, end = _certificate_text(bytes(raw), 2)
    at = end - 30  # a base64 character of the copy's signature
    raw[at] = ord("A") if raw[at] != ord("A") else ord("B")
    verdict = judge(bytes(raw), binding=bytes(32))
    assert_fails(verdict, v.PCK_CHAIN, "Certificate 3 of the PCK chain", "not on the verified path")


def test_a_respelled_pck_chain_fails(vector: Vector) -> None:
    """The same certificates with one line end changed: the chain is unsigned, so a second
    spelling of it is a change that only the spelling can show."""
    raw = bytearray(vector(COS))
    start, _ = _certificate_text(bytes(raw), 1)
    line_end = raw.index(b"\n", start)
    raw[line_end] = ord("\r")
    verdict = judge(bytes(raw), binding=bytes(32))
    assert_fails(verdict, v.PCK_CHAIN, "not canonical PEM")


@pytest.mark.parametrize(
    ("offset", "fragment"),
    [(8, "SHA-1 digest field is not zero"), (-1, "are not padding")],
    ids=["header-digest", "padding"],
)
def test_ccel_bytes_that_no_digest_covers_are_still_checked(
    vector: Vector, offset: int, fragment: str
) -> None:
    log = bytearray(vector("gotdx-cos113-ccel-data.dat"))
    log[offset] ^= 0x01
    verdict = judge(vector(COS), ccel=b64(bytes(log)))
    assert_fails(verdict, v.RTMR_REPLAY, fragment)


def test_every_changed_leaf_of_the_collateral_fails_the_tcb_status(vector: Vector) -> None:
    """Collateral is evidence too when it travels in it: each of its members (issuer chains
    included, even the one for the PCK CRL, which is judged against the quote's own chain)
    is checked, so any single change fails the appraisal."""
    collateral = json.loads(vector("dcapqvl-b0c06f-collateral.json"))
    raw = vector(QVL)
    genuine = judge(raw, at=COLLATERAL_AT, collateral=collateral)
    assert statuses(genuine)[v.TCB_STATUS] is CheckStatus.PASS
    unnoticed = []
    for tampering in tamperings({"collateral": collateral}):
        verdict = judge(raw, at=COLLATERAL_AT, **tampering.evidence)
        if statuses(verdict)[v.TCB_STATUS] is not CheckStatus.FAIL:
            unnoticed.append(str(tampering))
    assert not unnoticed, unnoticed


def test_auditor_collateral_lacking_a_member_fails_rather_than_being_passed_over(
    vector: Vector,
) -> None:
    raw = vector(QVL)
    document = json.loads(vector("dcapqvl-b0c06f-collateral.json"))
    del document["qe_identity"]
    trust = TrustInputs(
        binding=own_binding(raw), at=COLLATERAL_AT, collateral=(json.dumps(document).encode(),)
    )
    verdict = TdxVerifier().verify({"quote": b64(raw)}, trust)
    assert_fails(verdict, v.TCB_STATUS, "lacks qe_identity")
