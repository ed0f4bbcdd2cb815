"""Stapled OCSP responses for NVIDIA's certificate chains, judged at the claim's time with
`cryptography.x509.ocsp`.

NVIDIA publishes the revocation status of its device and RIM certificates through OCSP
(`ocsp.ndis.nvidia.com`). The operator may staple responses into the evidence; the auditor
checks them offline:

* Every certificate the caller names (each chain, subject first, each certificate's issuer
  next, ending at or just before a pinned root) needs a response whose CertID names it: the
  serial number and the hashes of its issuer's name and key, recomputed by `cryptography`
  from the issuer in the chain.
* The response must be signed by that issuer, or by a delegated responder certificate the
  response carries that the issuer issued for OCSP signing (extended key usage OCSPSigning),
  valid at the claim's time. The responder id must name the signer.
* thisUpdate <= claim time <= nextUpdate: a response without nextUpdate cannot be judged at
  a past time and is refused.
* The status must be good. Revoked and unknown fail, and any response for a certificate of
  the chain that does not verify fails too: it is stapled evidence, not noise.

Responses for certificates outside the chains (another GPU's) are passed over.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from cmcp_cli.attestation.toolkit import as_utc, validity_problem
from cmcp_gpucc.rim_chain import describe

MAX_RESPONSES: Final = 64
MAX_RESPONSE_BYTES: Final = 64 * 1024
# Hashes a response may be signed with; SHA-1 signatures are refused.
SIGNATURE_HASHES: Final = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


class RevocationError(ValueError):
    """A certificate is revoked, its status unknown or unproven, or a stapled response cannot
    be relied on; the message says which."""


@dataclass(frozen=True, slots=True)
class _Subject:
    cert: x509.Certificate
    issuer: x509.Certificate


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _load(responses: Sequence[bytes]) -> list[ocsp.OCSPResponse]:
    if len(responses) > MAX_RESPONSES:
        raise RevocationError(
            f"{len(responses)} OCSP responses are stapled, more than {MAX_RESPONSES}."
        )
    loaded: list[ocsp.OCSPResponse] = []
    for position, blob in enumerate(responses, 1):
        if len(blob) > MAX_RESPONSE_BYTES:
            raise RevocationError(
                f"Stapled OCSP response {position} is larger than {MAX_RESPONSE_BYTES} bytes."
            )
        try:
            response = ocsp.load_der_ocsp_response(blob)
        except ValueError as error:
            raise RevocationError(
                f"Stapled OCSP response {position} is not a DER OCSPResponse "
                f"({str(error).rstrip('.')})."
            ) from None
        if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise RevocationError(
                f"Stapled OCSP response {position} is not a successful response "
                f"({response.response_status.name}): fetch it again from NVIDIA's OCSP service."
            )
        loaded.append(response)
    return loaded


def _subjects(
    chains: Sequence[Sequence[x509.Certificate]], roots: Sequence[x509.Certificate]
) -> list[_Subject]:
    pinned = {_der(root) for root in roots}
    subjects: dict[bytes, _Subject] = {}
    for number, chain in enumerate(chains, 1):
        certs = list(chain)
        if certs and _der(certs[-1]) not in pinned:
            # The chain stops below its root: the pinned root that issued the last one.
            issuer = next((r for r in roots if r.subject == certs[-1].issuer), None)
            if issuer is None:
                raise RevocationError(
                    f"Chain {number} ends at {describe(certs[-1])}, which no pinned root issued: "
                    "its revocation cannot be checked."
                )
            certs.append(issuer)
        for cert, issuer in itertools.pairwise(certs):
            if _der(cert) not in pinned:
                subjects.setdefault(_der(cert), _Subject(cert, issuer))
    return list(subjects.values())


def _cert_id(subject: _Subject, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes, int]:
    """The CertID fields of `subject` with `algorithm`, as `cryptography` computes them for
    a request."""
    request = (
        ocsp.OCSPRequestBuilder().add_certificate(subject.cert, subject.issuer, algorithm).build()
    )
    return request.issuer_name_hash, request.issuer_key_hash, request.serial_number


def _names(single: ocsp.OCSPSingleResponse, subject: _Subject) -> bool:
    try:
        expected = _cert_id(subject, single.hash_algorithm)
    except (ValueError, UnsupportedAlgorithm):
        return False
    return (single.issuer_name_hash, single.issuer_key_hash, single.serial_number) == expected


def _verify_signature(response: ocsp.OCSPResponse, signer: x509.Certificate) -> bool:
    algorithm = response.signature_hash_algorithm
    key = signer.public_key()
    data, signature = response.tbs_response_bytes, response.signature
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(algorithm, SIGNATURE_HASHES):
                return False
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            if not isinstance(algorithm, SIGNATURE_HASHES):
                return False
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _responder_matches(response: ocsp.OCSPResponse, signer: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == signer.subject
    key_hash = response.responder_key_hash
    if key_hash is None:
        return False
    spki = x509.SubjectKeyIdentifier.from_public_key(signer.public_key()).digest
    return key_hash == spki


def _delegate_problem(
    delegate: x509.Certificate, issuer: x509.Certificate, at: datetime
) -> str | None:
    if delegate.issuer != issuer.subject:
        return f"the responder {describe(delegate)} was not issued by {describe(issuer)}"
    try:
        delegate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return f"the responder {describe(delegate)} is not signed by {describe(issuer)}"
    try:
        usage = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
        return f"the responder {describe(delegate)} is not certified for OCSP signing"
    problem = validity_problem(delegate, f"the responder {describe(delegate)}", at)
    return problem.rstrip(".") if problem is not None else None


def _signer_problem(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime
) -> str | None:
    """Why the response is not signed by `issuer` or a delegate it certified, or None."""
    if _responder_matches(response, issuer) and _verify_signature(response, issuer):
        return None
    problems = []
    for delegate in response.certificates:
        if not _responder_matches(response, delegate) or not _verify_signature(response, delegate):
            continue
        problem = _delegate_problem(delegate, issuer, at)
        if problem is None:
            return None
        problems.append(problem)
    if problems:
        return "; ".join(problems)
    return f"it is signed neither by {describe(issuer)} nor by a responder certificate it carries"


def _judge(
    response: ocsp.OCSPResponse,
    single: ocsp.OCSPSingleResponse,
    subject: _Subject,
    position: int,
    at: datetime,
) -> str:
    named = f"{describe(subject.cert)} (serial {subject.cert.serial_number:x})"
    label = f"Stapled OCSP response {position} for {named}"
    problem = _signer_problem(response, subject.issuer, at)
    if problem is not None:
        raise RevocationError(f"{label} cannot be relied on: {problem}.")
    start, end = single.this_update_utc, single.next_update_utc
    if end is None:
        raise RevocationError(
            f"{label} has no nextUpdate, so it cannot be judged at the claim's time "
            f"{at.isoformat()}."
        )
    if at < start:
        raise RevocationError(
            f"{label} was issued at {start.isoformat()}, after the claim's time "
            f"{at.isoformat()}: staple one that was current at that time."
        )
    if at > end:
        raise RevocationError(
            f"{label} expired at {end.isoformat()}, before the claim's time "
            f"{at.isoformat()}: staple a current one."
        )
    status = single.certificate_status
    if status is ocsp.OCSPCertStatus.REVOKED:
        since = single.revocation_time_utc
        reason = single.revocation_reason
        detail = f" since {since.isoformat()}" if since is not None else ""
        detail += f" ({reason.name})" if reason is not None else ""
        raise RevocationError(
            f"{named} is revoked{detail}, as stapled OCSP response {position} says."
        )
    if status is not ocsp.OCSPCertStatus.GOOD:
        raise RevocationError(
            f"{label} says its status is {status.name.lower()}: the responder does not "
            "vouch for it."
        )
    return f"{describe(subject.cert)} good ({start.isoformat()}..{end.isoformat()})"


def check_stapled_ocsp(
    responses: Sequence[bytes],
    chains: Sequence[Sequence[x509.Certificate]],
    roots: Sequence[x509.Certificate],
    at: datetime,
) -> str:
    """The reason every certificate of `chains` (except pinned roots) is not revoked at `at`,
    by the stapled DER `responses`; `RevocationError` names the first that is revoked, has
    an unknown status, no response, or a response that cannot be relied on.

    Each chain lists a subject first and each certificate's issuer after it; one ending
    below a pinned root is completed with the pinned root that issued its last certificate.
    The caller leaves out what NVIDIA's OCSP service does not cover (the device chain's leaf,
    which the GPU firmware makes)."""
    moment = as_utc(at)
    subjects = _subjects(chains, roots)
    if not subjects:
        raise RevocationError("No certificate was given to check for revocation.")
    loaded = _load(responses)
    good: list[str] = []
    for subject in subjects:
        verdicts = [
            _judge(response, single, subject, position, moment)
            for position, response in enumerate(loaded, 1)
            for single in response.responses
            if _names(single, subject)
        ]
        if not verdicts:
            raise RevocationError(
                f"No stapled OCSP response covers {describe(subject.cert)} "
                f"(serial {subject.cert.serial_number:x}): staple NVIDIA's response for it."
            )
        good.append(verdicts[0])
    return (
        f"{len(good)} certificate(s) not revoked at {moment.isoformat()} by signed OCSP "
        f"responses: {'; '.join(good)}."
    )
