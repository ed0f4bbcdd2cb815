"""`check_stapled_ocsp` with OCSP responses built by `cryptography` under the test PKI of
`rim_signing`: good statuses pass only when signed by the issuer or a responder it certified,
name the certificate, and cover the claim's time; everything else fails with its reason."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from cmcp_gpucc.revocation import RevocationError, check_stapled_ocsp
from cmcp_gpucc.rim_signing import (
    AT,
    RimPki,
    delegated_responder,
    issue,
    ocsp_response,
)


@pytest.fixture(scope="module")
def pki() -> RimPki:
    return RimPki.create()


def check(pki: RimPki, responses: list[bytes]) -> str:
    return check_stapled_ocsp(responses, [pki.chain], [pki.root.cert], AT)


def replaced(pki: RimPki, position: int, response: bytes) -> list[bytes]:
    """The good responses of the chain with the one about certificate `position` replaced."""
    responses = pki.responses()
    responses[position] = response
    return responses


def test_good_responses_for_every_certificate_pass(pki: RimPki) -> None:
    reason = check(pki, pki.responses())
    assert reason.startswith("3 certificate(s) not revoked at 2026-06-01")
    for name in ("RIM L4 Signer", "Reference Value L3 GH100", "Reference Value GH100 CA"):
        assert f'"cMCP Test {name}" good' in reason


def test_a_chain_that_stops_below_the_root_is_completed_with_it(pki: RimPki) -> None:
    chain = [pki.signer.cert, pki.l3.cert, pki.ca.cert]
    assert check_stapled_ocsp(pki.responses(), [chain], [pki.root.cert], AT).startswith("3 ")
    with pytest.raises(RevocationError, match="which no pinned root issued"):
        check_stapled_ocsp(pki.responses(), [chain[:2]], [pki.root.cert], AT)


def test_a_missing_response_fails(pki: RimPki) -> None:
    responses = pki.responses()
    del responses[1]
    with pytest.raises(RevocationError, match='No stapled OCSP response covers "cMCP Test Ref'):
        check(pki, responses)
    with pytest.raises(RevocationError, match="No stapled OCSP response covers"):
        check(pki, [])


def test_nothing_to_check_is_an_error(pki: RimPki) -> None:
    with pytest.raises(RevocationError, match="No certificate was given"):
        check_stapled_ocsp(pki.responses(), [[pki.root.cert]], [pki.root.cert], AT)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (ocsp.OCSPCertStatus.REVOKED, r"is revoked since 2026-05-31T00:00:00\+00:00 \(key_compromise\)"),
        (ocsp.OCSPCertStatus.UNKNOWN, "says its status is unknown"),
    ],
)  # fmt: skip
def test_revoked_and_unknown_fail(pki: RimPki, status: ocsp.OCSPCertStatus, reason: str) -> None:
    bad = ocsp_response(pki.l3.cert, pki.ca.cert, pki.ca, status=status)
    with pytest.raises(RevocationError, match=reason):
        check(pki, replaced(pki, 1, bad))


def test_a_revoked_status_is_not_outvoted_by_a_good_one(pki: RimPki) -> None:
    revoked = ocsp_response(
        pki.ca.cert, pki.root.cert, pki.root, status=ocsp.OCSPCertStatus.REVOKED
    )
    with pytest.raises(RevocationError, match="is revoked"):
        check(pki, [*pki.responses(), revoked])


@pytest.mark.parametrize(
    ("this_update", "next_update", "reason"),
    [
        (AT - timedelta(days=10), AT - timedelta(days=3), "expired at 2026-05-29"),
        (AT + timedelta(hours=1), AT + timedelta(days=6), "after the claim's time"),
        (AT - timedelta(days=1), None, "has no nextUpdate"),
    ],
)
def test_the_claim_time_must_be_within_the_response_window(
    pki: RimPki, this_update: object, next_update: object, reason: str
) -> None:
    stale = ocsp_response(
        pki.signer.cert, pki.l3.cert, pki.l3,
        this_update=this_update, next_update=next_update,  # type: ignore[arg-type]
    )  # fmt: skip
    with pytest.raises(RevocationError, match=reason):
        check(pki, replaced(pki, 0, stale))


def test_the_window_edges_are_inclusive(pki: RimPki) -> None:
    at_start = ocsp_response(pki.signer.cert, pki.l3.cert, pki.l3, this_update=AT)
    at_end = ocsp_response(
        pki.signer.cert, pki.l3.cert, pki.l3, this_update=AT - timedelta(days=1), next_update=AT
    )
    assert check(pki, replaced(pki, 0, at_start))
    assert check(pki, replaced(pki, 0, at_end))


def test_a_response_signed_by_another_key_fails(pki: RimPki) -> None:
    """The responder name says the issuer, the signature is by someone else's key."""
    stranger = issue("cMCP Test Reference Value L3 GH100", None, ca=True)
    assert stranger.cert.subject == pki.l3.cert.subject
    forged = ocsp_response(pki.signer.cert, pki.l3.cert, stranger)
    with pytest.raises(RevocationError, match="cannot be relied on: it is signed neither by"):
        check(pki, replaced(pki, 0, forged))


def test_a_response_by_another_ca_of_the_chain_fails(pki: RimPki) -> None:
    """The root vouching for the signer directly is not the signer's issuer vouching."""
    by_root = ocsp_response(pki.signer.cert, pki.l3.cert, pki.root)
    with pytest.raises(RevocationError, match="cannot be relied on"):
        check(pki, replaced(pki, 0, by_root))


def test_a_delegated_responder_certified_by_the_issuer_passes(pki: RimPki) -> None:
    responder = delegated_responder(pki.l3)
    by_name = ocsp_response(pki.signer.cert, pki.l3.cert, responder)
    by_key = ocsp_response(pki.signer.cert, pki.l3.cert, responder, by_key_hash=True)
    assert check(pki, replaced(pki, 0, by_name))
    assert check(pki, replaced(pki, 0, by_key))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no_ocsp_signing", "is not certified for OCSP signing"),
        ("other_issuer", "was not issued by"),
        ("expired", "expired at"),
        ("not_carried", "signed neither by"),
    ],
)
def test_a_delegated_responder_must_be_certified_by_the_issuer_and_valid(
    pki: RimPki, case: str, reason: str
) -> None:
    if case == "no_ocsp_signing":
        responder = delegated_responder(pki.l3, ocsp_signing=False)
    elif case == "other_issuer":
        responder = delegated_responder(pki.ca)  # a real CA of the chain, not the issuer
    elif case == "expired":
        responder = delegated_responder(
            pki.l3, not_before=AT - timedelta(days=30), not_after=AT - timedelta(days=1)
        )
    else:
        responder = delegated_responder(pki.l3)
    response = ocsp_response(
        pki.signer.cert, pki.l3.cert, responder, include_responder=case != "not_carried"
    )
    with pytest.raises(RevocationError, match=reason):
        check(pki, replaced(pki, 0, response))


def test_a_responder_certificate_with_a_forged_issuer_name_fails(pki: RimPki) -> None:
    """A responder certificate naming the L3 as its issuer but signed by another key."""
    impostor_l3 = issue("cMCP Test Reference Value L3 GH100", None, ca=True)
    assert impostor_l3.cert.subject == pki.l3.cert.subject
    responder = issue("cMCP Test OCSP Responder", impostor_l3, ca=False, ocsp_signing=True)
    response = ocsp_response(pki.signer.cert, pki.l3.cert, responder)
    with pytest.raises(RevocationError, match="is not signed by"):
        check(pki, replaced(pki, 0, response))


def test_the_cert_id_must_name_the_certificate(pki: RimPki) -> None:
    """A good response for another certificate of the same issuer covers nothing here."""
    sibling = issue("cMCP Test RIM L4 Signer", pki.l3, ca=False)
    response = ocsp_response(sibling.cert, pki.l3.cert, pki.l3)
    with pytest.raises(RevocationError, match="No stapled OCSP response covers"):
        check(pki, replaced(pki, 0, response))


def test_the_cert_id_must_name_the_issuer(pki: RimPki) -> None:
    """Same serial, another issuer: the issuer name and key hashes do not match."""
    other = RimPki.create()
    response = ocsp_response(pki.signer.cert, other.l3.cert, other.l3)
    with pytest.raises(RevocationError, match="No stapled OCSP response covers"):
        check(pki, replaced(pki, 0, response))


# CertIDs identify a certificate (RFC 6960 responders commonly hash them with SHA-1); the
# response's signature is what must resist forgery, and SHA-1 signatures are refused.
@pytest.mark.parametrize(
    "algorithm",
    [hashes.SHA1(), hashes.SHA256(), hashes.SHA512()],  # noqa: S303 - a CertID, see above
)
def test_cert_ids_in_any_hash_are_recomputed(pki: RimPki, algorithm: hashes.HashAlgorithm) -> None:
    response = ocsp_response(pki.signer.cert, pki.l3.cert, pki.l3, cert_id_hash=algorithm)
    assert check(pki, replaced(pki, 0, response))


def test_responses_about_other_certificates_are_passed_over(pki: RimPki) -> None:
    other = RimPki.create()
    assert check(pki, [*other.responses(), *pki.responses()]).startswith("3 ")


def test_malformed_and_unsuccessful_responses_fail(pki: RimPki) -> None:
    with pytest.raises(RevocationError, match="response 4 is not a DER OCSPResponse"):
        check(pki, [*pki.responses(), b"\x30\x03\x0a\x01"])
    unsuccessful = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.TRY_LATER
    ).public_bytes(Encoding.DER)
    with pytest.raises(RevocationError, match=r"not a successful response \(TRY_LATER\)"):
        check(pki, [*pki.responses(), unsuccessful])


def test_a_tampered_response_fails_its_signature(pki: RimPki) -> None:
    response = bytearray(pki.responses()[0])
    response[-5] ^= 0x01  # inside the signature
    with pytest.raises(RevocationError, match="cannot be relied on"):
        check(pki, replaced(pki, 0, bytes(response)))


def der(tag: int, content: bytes) -> bytes:
    size = len(content)
    length = bytes([size]) if size < 0x80 else bytes([0x82]) + size.to_bytes(2, "big")
    return bytes([tag]) + length + content


def test_a_sha1_signature_is_refused(pki: RimPki) -> None:
    """cryptography will not sign an OCSP response with SHA-1, so the response is assembled
    here: the tbsResponseData of a good one, signed by the issuer's key with ECDSA-SHA1."""
    good = ocsp.load_der_ocsp_response(pki.responses()[0])
    tbs = good.tbs_response_bytes
    signature = pki.l3.key.sign(tbs, ec.ECDSA(hashes.SHA1()))  # noqa: S303 - the weak case
    ecdsa_with_sha1 = der(0x30, der(0x06, bytes.fromhex("2a8648ce3d0401")))
    basic = der(0x30, tbs + ecdsa_with_sha1 + der(0x03, b"\x00" + signature))
    id_pkix_ocsp_basic = der(0x06, bytes.fromhex("2b0601050507300101"))
    response_bytes = der(0xA0, der(0x30, id_pkix_ocsp_basic + der(0x04, basic)))
    weak = der(0x30, der(0x0A, b"\x00") + response_bytes)
    loaded = ocsp.load_der_ocsp_response(weak)
    assert isinstance(loaded.signature_hash_algorithm, hashes.SHA1)
    # The same bytes signed with SHA-384 pass: only the hash is refused.
    strong = pki.l3.key.sign(tbs, ec.ECDSA(hashes.SHA384()))
    ecdsa_with_sha384 = der(0x30, der(0x06, bytes.fromhex("2a8648ce3d040303")))
    basic = der(0x30, tbs + ecdsa_with_sha384 + der(0x03, b"\x00" + strong))
    response_bytes = der(0xA0, der(0x30, id_pkix_ocsp_basic + der(0x04, basic)))
    assert check(pki, replaced(pki, 0, der(0x30, der(0x0A, b"\x00") + response_bytes)))
    with pytest.raises(RevocationError, match="cannot be relied on"):
        check(pki, replaced(pki, 0, weak))
