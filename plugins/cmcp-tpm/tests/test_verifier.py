"""The offline TPM quote verifier: the genuine Azure vTPM quote, and synthetic quotes signed
here with software AKs (structures marshaled exactly as a TPM does, see test_structures)
under a test PKI, each broken in one way to show the check that catches it."""

from __future__ import annotations

import base64
import copy
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cmcp_cli.attestation.api import CheckStatus, EvidenceVerdict, TrustInputs
from cmcp_cli.testing.provider_contract import GARBAGE
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_tpm import structures as tpm
from cmcp_tpm.synthetic import (
    AT,
    BINDING,
    Pki,
    b64,
    certificate,
    make_evidence,
    trust,
)
from cmcp_tpm.verifier import TpmVerifier

ALL_CHECKS = (
    "tpm.evidence.shape", "tpm.attest.magic", "tpm.attest.type", "tpm.attest.extra_data",
    "tpm.ak.public", "tpm.ak.attributes", "tpm.attest.signer", "tpm.signature",
    "tpm.pcr.digest", "tpm.eventlog.replay", "tpm.eventlog.policy", "tpm.ak.certificate",
    "tpm.ek.certificate",
)  # fmt: skip

# --- synthetic quotes: all checks pass -----------------------------------------------


@pytest.mark.parametrize("ak_kind", ["ecc", "rsa"])
def test_genuine_synthetic_quote_is_hardware_attested(
    ak_kind: str, ecc_ak: ec.EllipticCurvePrivateKey, rsa_ak: rsa.RSAPrivateKey, pki: Pki
) -> None:
    ak = ecc_ak if ak_kind == "ecc" else rsa_ak
    verdict = TpmVerifier().verify(make_evidence(ak, pki), trust(pki))
    assert all(check.status is CheckStatus.PASS for check in verdict.checks), verdict.checks
    assert verdict.hardware_attested
    attest = tpm.parse_attest(base64.b64decode(make_evidence(ak, pki)["attest"]))
    assert verdict.measurement == "sha256:" + attest.pcr_digest.hex()


def test_rsapss_ak_is_accepted(rsa_ak: rsa.RSAPrivateKey, pki: Pki) -> None:
    evidence = make_evidence(rsa_ak, pki, ak_scheme=tpm.ALG_RSAPSS)
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert verdict.hardware_attested, verdict.checks
    assert "RSAPSS/sha256" in reason(verdict, "tpm.signature")


def test_an_ak_without_a_scheme_may_sign_with_sha384(pki: Pki) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    evidence = make_evidence(p384, pki, ak_scheme=tpm.ALG_NULL, signature_scheme=tpm.ALG_ECDSA,
                             hash_alg=tpm.ALG_SHA384)  # fmt: skip
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert verdict.hardware_attested, verdict.checks
    assert "ECDSA/sha384" in reason(verdict, "tpm.signature")


# --- one failure at a time -----------------------------------------------------------


def _flip_b64(text: str, offset: int) -> str:
    data = bytearray(base64.b64decode(text))
    data[offset] ^= 0x01
    return b64(bytes(data))


def _flip_hex(text: str) -> str:
    return f"{int(text[0], 16) ^ 1:x}" + text[1:]


# Offset 80 of the attest lies in its clockInfo: the structure still parses.
FLIPS: list[tuple[str, Any, str]] = [
    ("attest", lambda e: e.update(attest=_flip_b64(e["attest"], 80)), "tpm.signature"),
    ("attest pcrDigest", lambda e: e.update(attest=_flip_b64(e["attest"], -1)), "tpm.pcr.digest"),
    ("signature", lambda e: e.update(signature=_flip_b64(e["signature"], -1)), "tpm.signature"),
    ("ak_public", lambda e: e.update(ak_public=_flip_b64(e["ak_public"], -1)), "tpm.ak.public"),
    ("ak_public attributes", lambda e: e.update(ak_public=_flip_b64(e["ak_public"], 7)),
     "tpm.attest.signer"),
    ("ak certificate", lambda e: e["ak_certificates"].__setitem__(
        0, _flip_b64(e["ak_certificates"][0], -1)), "tpm.ak.certificate"),
    ("ak ca certificate", lambda e: e["ak_certificates"].__setitem__(
        1, _flip_b64(e["ak_certificates"][1], -1)), "tpm.ak.certificate"),
    ("ek certificate", lambda e: e["ek_certificates"].__setitem__(
        0, _flip_b64(e["ek_certificates"][0], -1)), "tpm.ek.certificate"),
    ("ek ca certificate", lambda e: e["ek_certificates"].__setitem__(
        1, _flip_b64(e["ek_certificates"][1], -1)), "tpm.ek.certificate"),
    ("pcr 3", lambda e: e["pcrs"]["sha256"].update({"3": _flip_hex(e["pcrs"]["sha256"]["3"])}),
     "tpm.pcr.digest"),
    ("event digest", lambda e: e["event_log"][0].update(
        digest=_flip_hex(e["event_log"][0]["digest"])), "tpm.eventlog.replay"),
    ("event data", lambda e: e["event_log"][0].update(
        data=e["event_log"][0]["data"][:-1] + "0"), "tpm.eventlog.policy"),
    ("ak_tie", lambda e: e["ak_tie"].update(status="untied"), "tpm.ak.certificate"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "corrupt", "check"), FLIPS, ids=[f[0] for f in FLIPS])
def test_a_flipped_byte_fails_a_named_check(
    field: str, corrupt: Any, check: str, ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    evidence = make_evidence(ecc_ak, pki)
    corrupt(evidence)
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, check)
    assert statuses(verdict)["tpm.evidence.shape"] is CheckStatus.PASS, field


def test_wrong_binding(ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki) -> None:
    verdict = TpmVerifier().verify(make_evidence(ecc_ak, pki), trust(pki, binding=bytes(32)))
    assert_fails(verdict, "tpm.attest.extra_data", BINDING[:8].hex(), "0000000000000000")
    assert statuses(verdict)["tpm.signature"] is CheckStatus.PASS


def test_wrong_magic(ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki) -> None:
    evidence = make_evidence(ecc_ak, pki, magic=0xFF544348)
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.attest.magic", "0xff544348")
    assert statuses(verdict)["tpm.signature"] is CheckStatus.PASS


def test_wrong_type_skips_what_needs_the_quote(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    evidence = make_evidence(ecc_ak, pki, attest_type=0x8017)
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.attest.type", "0x8017")
    status = statuses(verdict)
    for name in ("tpm.attest.extra_data", "tpm.attest.signer", "tpm.pcr.digest"):
        assert status[name] is CheckStatus.SKIP
    assert status["tpm.signature"] is CheckStatus.PASS
    assert verdict.measurement is None


@pytest.mark.parametrize(
    ("attributes", "fragment"),
    [(tpm.AK_ATTRIBUTES & ~tpm.RESTRICTED, "restricted not set"),
     (tpm.AK_ATTRIBUTES | tpm.DECRYPT, "decrypt set")],
    ids=["not-restricted", "decrypt"],
)  # fmt: skip
def test_ak_attributes(
    attributes: int, fragment: str, ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    evidence = make_evidence(ecc_ak, pki, attributes=attributes)
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.ak.attributes", fragment)
    assert statuses(verdict)["tpm.attest.signer"] is CheckStatus.PASS


def test_sha1_signature_is_refused(ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki) -> None:
    evidence = make_evidence(ecc_ak, pki, ak_scheme=tpm.ALG_NULL, signature_scheme=tpm.ALG_ECDSA,
                             hash_alg=tpm.ALG_SHA1)  # fmt: skip
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.signature", "SHA-1")


def test_signature_scheme_must_be_the_aks(rsa_ak: rsa.RSAPrivateKey, pki: Pki) -> None:
    evidence = make_evidence(rsa_ak, pki, signature_scheme=tpm.ALG_RSAPSS)
    assert_fails(TpmVerifier().verify(evidence, trust(pki)), "tpm.signature", "AK's own scheme")


def test_signature_hash_must_be_the_aks(pki: Pki) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    # the AK's scheme is ECDSA with SHA-256, so a SHA-384 signature is not its own
    evidence = make_evidence(p384, pki, hash_alg=tpm.ALG_SHA384)
    assert_fails(TpmVerifier().verify(evidence, trust(pki)), "tpm.signature", "AK's own scheme")


def test_signer_of_another_hierarchy(ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki) -> None:
    evidence = make_evidence(ecc_ak, pki, signer_hierarchy="owner")
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.attest.signer", "endorsement hierarchy")
    assert statuses(verdict)["tpm.signature"] is CheckStatus.PASS


def test_pcr_values_must_cover_exactly_the_selection(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    missing = make_evidence(ecc_ak, pki)
    del missing["pcrs"]["sha256"]["3"]
    assert_fails(TpmVerifier().verify(missing, trust(pki)), "tpm.pcr.digest", "lack sha256:3")
    extra = make_evidence(ecc_ak, pki)
    extra["pcrs"]["sha256"]["10"] = "00" * 32
    assert_fails(TpmVerifier().verify(extra, trust(pki)), "tpm.pcr.digest", "reports sha256:10")


def test_event_log_naming_an_unquoted_pcr(ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki) -> None:
    evidence = make_evidence(ecc_ak, pki)
    evidence["event_log"][0]["pcr"] = 16
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.eventlog.replay", "sha256:16", "not quoted")


def test_empty_event_log(ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki) -> None:
    evidence = make_evidence(ecc_ak, pki) | {"event_log": []}
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.eventlog.replay", "extends are missing")
    assert_fails(verdict, "tpm.eventlog.policy", "0 cmcp-policy-bundle events")


def test_policy_hash_mismatch_and_absence(ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki) -> None:
    evidence = make_evidence(ecc_ak, pki)
    other = "sha256:" + "11" * 32
    assert_fails(TpmVerifier().verify(evidence, trust(pki, policy_hash=other)),
                 "tpm.eventlog.policy", "sha256:1111")  # fmt: skip
    unchecked = TpmVerifier().verify(evidence, trust(pki, policy_hash=None))
    assert statuses(unchecked)["tpm.eventlog.policy"] is CheckStatus.SKIP
    assert unchecked.hardware_attested


def test_ak_certificate_expired_at_the_claim_time(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    evidence = make_evidence(ecc_ak, pki)
    short = pki.ak_certificate(ecc_ak.public_key(), not_after=AT - timedelta(days=1))
    evidence["ak_certificates"][0] = b64(short.public_bytes(Encoding.DER))
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.ak.certificate", "AK certificate 1", "expired")


def test_chain_to_an_unpinned_root(ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_root = certificate("Other Root", other_key.public_key(), None, other_key, ca=True)
    verdict = TpmVerifier().verify(
        make_evidence(ecc_ak, pki),
        trust(None, trust_roots=(other_root.public_bytes(Encoding.PEM),)),
    )
    assert_fails(verdict, "tpm.ak.certificate", "CN=Test Root", "no root given with --trust-root")
    # a root was given, so an EK chain that misses it fails rather than going unjudged
    assert_fails(verdict, "tpm.ek.certificate", "CN=Test Root", "no root given with --trust-root")


def test_trust_roots_may_be_bundles_of_several_certificates(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_root = certificate("Other Root", other_key.public_key(), None, other_key, ca=True)
    bundle = other_root.public_bytes(Encoding.PEM) + pki.root_pem
    verdict = TpmVerifier().verify(make_evidence(ecc_ak, pki), trust(None, trust_roots=(bundle,)))
    assert verdict.hardware_attested, verdict.checks


def test_ek_certificates_of_two_algorithms_under_a_pinned_issuer(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    """The collector reads the RSA and the ECC EK certificate: two leaves, not a chain."""
    ek_ca_key = ec.generate_private_key(ec.SECP256R1())
    ek_ca = certificate("Maker EK CA", ek_ca_key.public_key(), None, ek_ca_key, ca=True)
    leaves = [
        certificate("EK", key.public_key(), ("Maker EK CA", ek_ca_key), ek_ca_key, ca=False)
        for key in (
            ec.generate_private_key(ec.SECP384R1()),
            ec.generate_private_key(ec.SECP256R1()),
        )
    ]
    evidence = make_evidence(ecc_ak, pki)
    evidence["ek_certificates"] = [b64(c.public_bytes(Encoding.DER)) for c in leaves]
    roots = (pki.root_pem, ek_ca.public_bytes(Encoding.PEM))
    verdict = TpmVerifier().verify(evidence, trust(pki, trust_roots=roots))
    assert statuses(verdict)["tpm.ek.certificate"] is CheckStatus.PASS, verdict.checks
    assert "a root given with --trust-root" in reason(verdict, "tpm.ek.certificate")
    assert "CN=Maker EK CA" in reason(verdict, "tpm.ek.certificate")
    # the AK's root alone: the EK maker's root is missing from what the auditor gave
    unpinned = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(unpinned, "tpm.ek.certificate", "CN=Maker EK CA", "no root given")


def test_a_shortened_ek_pool_fails_once_roots_are_given(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    """Without its CA, the EK certificate no longer reaches the given root: that fails."""
    evidence = make_evidence(ecc_ak, pki)
    evidence["ek_certificates"] = evidence["ek_certificates"][:1]
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.ek.certificate", "CN=EK CA", "no root given with --trust-root")


def test_an_ek_certificate_whose_issuer_was_changed_fails(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    evidence = make_evidence(ecc_ak, pki)
    evidence["ek_certificates"] = [_rename_issuer(evidence["ek_certificates"][0])]
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.ek.certificate", "no root given with --trust-root")


def _rename_issuer(der_b64: str) -> str:
    """The certificate with one character of its issuer's common name changed."""
    der = base64.b64decode(der_b64)
    issuer = x509.load_der_x509_certificate(der).issuer.public_bytes()
    at = der.index(issuer) + len(issuer) - 1  # the issuer precedes the subject in the TBS
    changed = bytearray(der)
    changed[at] = ord("X") if changed[at] != ord("X") else ord("Y")  # stays printable
    return b64(bytes(changed))


def test_certificates_without_trust_roots_skip(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    verdict = TpmVerifier().verify(make_evidence(ecc_ak, pki), trust(None))
    assert statuses(verdict)["tpm.ak.certificate"] is CheckStatus.SKIP
    assert "--trust-root" in reason(verdict, "tpm.ak.certificate")
    assert not verdict.failed and not verdict.hardware_attested


def test_no_certificates_skip_and_are_not_attested(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    evidence = make_evidence(ecc_ak, pki, certified=False) | {"ek_certificates": []}
    verdict = TpmVerifier().verify(evidence, trust(None))
    status = statuses(verdict)
    assert status["tpm.ak.certificate"] is CheckStatus.SKIP
    assert status["tpm.ek.certificate"] is CheckStatus.SKIP
    assert "not tied to the EK" in reason(verdict, "tpm.ak.certificate")
    assert not verdict.failed and not verdict.hardware_attested


def test_no_ek_certificate_fails_once_roots_are_given(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    evidence = make_evidence(ecc_ak, pki) | {"ek_certificates": []}
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.ek.certificate", "No EK certificate", "--trust-root")
    assert statuses(verdict)["tpm.ak.certificate"] is CheckStatus.PASS


def test_sound_ek_certificates_without_a_root_are_not_attested(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    verdict = TpmVerifier().verify(make_evidence(ecc_ak, pki), trust(None))
    assert statuses(verdict)["tpm.ek.certificate"] is CheckStatus.SKIP
    assert "vendors no root" in reason(verdict, "tpm.ek.certificate")
    assert not verdict.failed and not verdict.hardware_attested


def test_ak_certificate_for_another_key(
    ecc_ak: ec.EllipticCurvePrivateKey, rsa_ak: rsa.RSAPrivateKey, pki: Pki
) -> None:
    evidence = make_evidence(ecc_ak, pki)
    evidence["ak_certificates"][0] = b64(
        pki.ak_certificate(rsa_ak.public_key()).public_bytes(Encoding.DER)
    )
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.ak.certificate", "certifies a different key")


def test_a_leaf_cannot_issue_certificates(ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki) -> None:
    """An AK certificate's holder must not extend the chain: its issuer must be a CA."""
    evidence = make_evidence(ecc_ak, pki)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.ak_certificate(leaf_key.public_key())
    forged = certificate("AK2", ecc_ak.public_key(), ("AK", leaf_key), leaf_key, ca=False)
    evidence["ak_certificates"] = [
        b64(c.public_bytes(Encoding.DER)) for c in (forged, leaf, pki.ak_ca)
    ]
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.ak.certificate", "not a CA")


def test_weak_rsa_ak_is_refused(pki: Pki) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
    verdict = TpmVerifier().verify(make_evidence(weak, pki), trust(pki))
    assert_fails(verdict, "tpm.ak.public", "1024 bits")
    assert statuses(verdict)["tpm.signature"] is CheckStatus.SKIP


# --- malformed evidence --------------------------------------------------------------


@pytest.mark.parametrize("garbage", [*GARBAGE, None, 7, [], "evidence"], ids=repr)
def test_garbage_fails_closed(garbage: Any) -> None:
    verdict = TpmVerifier().verify(garbage, TrustInputs(binding=bytes(32), at=AT))
    assert isinstance(verdict, EvidenceVerdict)
    assert verdict.failed and not verdict.hardware_attested
    assert statuses(verdict)["tpm.evidence.shape"] is CheckStatus.FAIL
    assert verdict.measurement is None


MALFORMED: list[tuple[str, Any]] = [
    ("attest", "not base64!"),
    ("attest", "AAAA"),
    ("attest", "QQ"),
    ("signature", 7),
    ("ak_public", b64(b"\x00\x23")),
    ("ak_hierarchy", "null"),
    ("ak_certificates", "MIIB"),
    ("ak_certificates", [b64(b"not der")]),
    ("ek_certificates", [b64(b"not der")]),
    ("ak_tie", {"status": "maybe"}),
    ("ak_tie", {"status": "certified", "reason": "unjudged free text"}),
    ("pcrs", {"sha256": {"3": "XY" * 32}}),
    ("pcrs", {"sha512": {}}),
    ("pcrs", {"sha256": {"03": "00" * 32}}),
    ("pcrs", []),
    ("event_log", [{"pcr": True, "bank": "sha256", "digest": "", "type": "x", "data": ""}]),
    ("event_log", [None]),
    ("extra", 1),
]


@pytest.mark.parametrize(("member", "value"), MALFORMED, ids=lambda v: repr(v)[:24])
def test_malformed_members_fail_without_raising(
    member: str, value: Any, ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    evidence = copy.deepcopy(make_evidence(ecc_ak, pki)) | {member: value}
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert verdict.failed and not verdict.hardware_attested
    assert tuple(check.name for check in verdict.checks) == ALL_CHECKS


def test_unknown_member_fails_shape_but_later_checks_still_run(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    evidence = make_evidence(ecc_ak, pki) | {"note": "hello"}
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.evidence.shape", "unknown members note")
    assert statuses(verdict)["tpm.signature"] is CheckStatus.PASS


def test_pem_and_tpmt_public_together_are_refused(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    pem = ecc_ak.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    evidence = make_evidence(ecc_ak, pki) | {"ak_public_pem": pem.decode()}
    verdict = TpmVerifier().verify(evidence, trust(pki))
    assert_fails(verdict, "tpm.evidence.shape", "not both")


def test_a_policy_event_must_extend_the_bundle_it_names(
    ecc_ak: ec.EllipticCurvePrivateKey, pki: Pki
) -> None:
    """The data of a policy event is only a label: a log that names the claim's bundle
    over a digest of another one does not measure the claim's bundle."""
    evidence = make_evidence(ecc_ak, pki)
    claimed = evidence["event_log"][0]["data"]
    evidence["event_log"][0]["data"] = "sha256:" + "22" * 32
    relabelled = TpmVerifier().verify(evidence, trust(pki, policy_hash="sha256:" + "22" * 32))
    assert_fails(relabelled, "tpm.eventlog.policy", "event 0", "not the bundle it names")
    evidence["event_log"][0]["data"] = claimed
    assert statuses(TpmVerifier().verify(evidence, trust(pki)))["tpm.eventlog.policy"] is (
        CheckStatus.PASS
    )
