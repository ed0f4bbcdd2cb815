"""The verifier's public-key checks, with `cryptography` alone: which keys are acceptable
AKs, a quote's signature, and X.509 chains of TPM AK and EK certificates.

A chain is judged as the auditor pinned it: each certificate must be signed by the next
(which must be a CA), the last must be a pinned root or be signed by one, and every
certificate used, the root included, must be valid at the claim's time. The plugin vendors
no root (TPM makers and privacy CAs are the auditor's choice), so every root is one given
with `--trust-root`: once the auditor gives roots, a chain that does not reach one of them
fails; with none given, the chains cannot be judged and nothing is hardware-attested.
TPM certificates carry profile-specific critical extensions (an EK's directoryName SAN)
that a web PKI path validator rejects, so signatures and validity are checked here
directly. Every problem is returned as a sentence; nothing here raises on bad
certificates.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cmcp_cli.attestation.api import CheckStatus, TrustInputs
from cmcp_cli.attestation.toolkit import trust_root_certificates, validity_problem
from cmcp_tpm import structures as tpm

_MAX_CHAIN = 8
_UNJUDGED = "the TPM plugin vendors no root, so the chain cannot be judged here."

AkKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def accept_ak_key(key: object) -> tuple[AkKey | None, str]:
    """The key when the verifier accepts it as an AK, else None and what it is."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= 2048:
            return key, ""
        return None, f"an RSA key of {key.key_size} bits (< 2048)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            return key, ""
        return None, f"an ECC key on {key.curve.name}, not NIST P-256 or P-384"
    return None, f"a {type(key).__name__}, not an RSA or ECC key"


def signature_verifies(
    key: AkKey, sig: tpm.Signature, algorithm: hashes.HashAlgorithm, data: bytes
) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig.value, data, ec.ECDSA(algorithm))
        elif sig.scheme == tpm.ALG_RSASSA:
            key.verify(sig.value, data, padding.PKCS1v15(), algorithm)
        else:  # a TPM's PSS salt is the digest size or the largest the key allows
            pss = padding.PSS(padding.MGF1(algorithm), padding.PSS.AUTO)
            key.verify(sig.value, data, pss, algorithm)
    except InvalidSignature:
        return False
    return True


class ChainStatus(enum.Enum):
    VALID = "valid"  # reaches a pinned root, every certificate valid at the time
    UNANCHORED = "unanchored"  # sound as far as it goes, but no pinned root issued its top
    INVALID = "invalid"  # a certificate is unparseable, mis-signed, not a CA, or out of date


@dataclass(frozen=True, slots=True)
class ChainResult:
    status: ChainStatus
    reason: str


def describe(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "(empty subject)"
    except ValueError:
        return "(unreadable subject)"


def load_der(blobs: Sequence[bytes], role: str) -> tuple[list[x509.Certificate], str | None]:
    """The certificates, or the first problem as a sentence naming `role` and position."""
    certs = []
    for position, blob in enumerate(blobs, 1):
        try:
            certs.append(x509.load_der_x509_certificate(blob))
        except ValueError as error:
            return [], f"{role} certificate {position} is not a DER X.509 certificate ({error})."
    return certs, None


def load_roots(trust_roots: Sequence[bytes]) -> tuple[list[x509.Certificate], str | None]:
    """Every certificate of the pinned PEM data (each item may hold several)."""
    try:
        return trust_root_certificates(trust_roots), None
    except ValueError as error:
        reason = str(error)
        return [], f"{reason[:1].upper()}{reason[1:]}; fix it."


def spki(key: object) -> bytes | None:
    """The DER SubjectPublicKeyInfo of a `cryptography` public key, for key equality."""
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return None
    try:
        encoded = public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return encoded if isinstance(encoded, bytes) else None


def certified_key(cert: x509.Certificate) -> bytes | None:
    try:
        return spki(cert.public_key())
    except (ValueError, UnsupportedAlgorithm):
        return None


def signature_problem(cert: x509.Certificate, issuer: x509.Certificate, label: str) -> str | None:
    """Why `issuer` did not sign `cert` (name and signature), or None when it did."""
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return f"{label} is not signed by the key of {describe(issuer)}."
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        return f"{label} cannot be checked against {describe(issuer)}: {str(error).rstrip('.')}."
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return constraints.ca


def _anchor(top: x509.Certificate, roots: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The pinned root that is `top` itself or that signed it."""
    for root in roots:
        if root == top:
            return root
    for root in roots:
        if root.subject == top.issuer and signature_problem(top, root, "") is None:
            return root
    return None


def check_chain(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], at: datetime, role: str
) -> ChainResult:
    """`chain[0]` signed by `chain[1]`, ..., the last anchored in `roots`, all valid at `at`."""
    if not chain:
        return ChainResult(ChainStatus.INVALID, f"No {role} certificate was given.")
    if len(chain) > _MAX_CHAIN:
        return ChainResult(ChainStatus.INVALID, f"The {role} chain is longer than {_MAX_CHAIN}.")
    labels = [f"{role} certificate {n} ({describe(c)})" for n, c in enumerate(chain, 1)]
    for cert, issuer, label, issuer_label in zip(
        chain, chain[1:], labels, labels[1:], strict=False
    ):
        problem = signature_problem(cert, issuer, label)
        if problem is None and not _is_ca(issuer):
            problem = f"{issuer_label} signs {label} but is not a CA certificate."
        if problem is not None:
            return ChainResult(ChainStatus.INVALID, problem)
    for cert, label in zip(chain, labels, strict=True):
        if (problem := validity_problem(cert, label, at)) is not None:
            return ChainResult(ChainStatus.INVALID, problem)
    root = _anchor(chain[-1], roots)
    namesakes = [r for r in roots if r.subject == chain[-1].issuer]
    if root is None and namesakes:
        problem = signature_problem(chain[-1], namesakes[0], labels[-1])
        return ChainResult(ChainStatus.INVALID, problem or f"{labels[-1]} is not anchored.")
    if root is None:
        top = chain[-1].issuer.rfc4514_string() or "(empty issuer)"
        return ChainResult(
            ChainStatus.UNANCHORED,
            f"The {role} chain ends at issuer {top}, which no root given with --trust-root "
            "is or signed.",
        )
    label = f"the root given with --trust-root, {describe(root)}"
    if (problem := validity_problem(root, label, at)) is not None:
        return ChainResult(ChainStatus.INVALID, problem[0].upper() + problem[1:])
    return ChainResult(ChainStatus.VALID, f"The {role} chain reaches {label}, valid at the time.")


def check_pool(
    certs: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], at: datetime, role: str
) -> ChainResult:
    """Certificates given as a set (EK certificates of several algorithms, perhaps with
    their issuers): each one's path through the others by issuer name must be sound, and
    all must reach a pinned root for VALID; an unsound path is INVALID."""
    by_subject = {cert.subject: cert for cert in certs}
    unanchored: ChainResult | None = None
    reached: set[str] = set()
    for cert in certs:
        path = [cert]
        while (issuer := by_subject.get(path[-1].issuer)) is not None and issuer not in path:
            path.append(issuer)
        result = check_chain(path, roots, at, role)
        if result.status is ChainStatus.INVALID:
            return result
        if result.status is ChainStatus.UNANCHORED:
            unanchored = unanchored or result
        elif (root := _anchor(path[-1], roots)) is not None:
            reached.add(describe(root))
    if unanchored is not None:
        return unanchored
    roots_named = "; ".join(sorted(reached))
    return ChainResult(
        ChainStatus.VALID,
        f"Every {role} certificate reaches a root given with --trust-root ({roots_named}), "
        "valid at the time.",
    )


def judge_ak(
    blobs: Sequence[bytes], tie: str, ak_key: object, trust: TrustInputs
) -> tuple[CheckStatus, str]:
    """The `tpm.ak.certificate` outcome: the AK certificate chain, with `ak_tie` agreeing."""
    if (tie == "certified") != bool(blobs):
        return CheckStatus.FAIL, f"ak_tie says {tie!r} but {len(blobs)} AK certificates are given."
    if not blobs:
        return CheckStatus.SKIP, (
            "The AK is not tied to the EK by a certificate (the collector found none at its "
            "ak_cert_nv_index; enroll the AK with a privacy CA and store the certificate "
            "there): not hardware-attested."
        )
    certs, problem = load_der(blobs, "AK")
    if problem is not None:
        return CheckStatus.FAIL, problem
    if ak_key is None:
        return CheckStatus.SKIP, "The AK key is unusable (see tpm.ak.public)."
    if certified_key(certs[0]) != spki(ak_key):
        return CheckStatus.FAIL, (
            "The AK certificate certifies a different key than the AK that signed the quote."
        )
    if not trust.trust_roots:
        return CheckStatus.SKIP, (
            f"AK certificates are present but no root was given: {_UNJUDGED} Pass "
            f"--trust-root with the root of the AK issuer {_top_issuer(certs)}."
        )
    roots, problem = load_roots(trust.trust_roots)
    if problem is not None:
        return CheckStatus.FAIL, problem
    result = check_chain(certs, roots, trust.at, "AK")
    return (CheckStatus.PASS if result.status is ChainStatus.VALID else CheckStatus.FAIL), (
        result.reason
    )


def judge_ek(blobs: Sequence[bytes], trust: TrustInputs) -> tuple[CheckStatus, str]:
    """The `tpm.ek.certificate` outcome: with roots given, the EK certificates must reach
    them (a missing or unanchored chain fails); with none given, sound ones are unjudged."""
    certs, problem = load_der(blobs, "EK")
    if problem is None:
        roots, problem = load_roots(trust.trust_roots)
    if problem is not None:
        return CheckStatus.FAIL, problem
    if not certs:
        if roots:
            return CheckStatus.FAIL, (
                "No EK certificate was given, so nothing ties this TPM to a maker whose root "
                "was given with --trust-root."
            )
        return CheckStatus.SKIP, f"No EK certificate was given and no root: {_UNJUDGED}"
    result = check_pool(certs, roots, trust.at, "EK")
    if result.status is ChainStatus.UNANCHORED and not roots:
        return CheckStatus.SKIP, (
            f"EK certificates are present but no root was given: {_UNJUDGED} Pass "
            f"--trust-root with the root of the EK issuer {_top_issuer(certs)}."
        )
    return (CheckStatus.PASS if result.status is ChainStatus.VALID else CheckStatus.FAIL), (
        result.reason
    )


def _top_issuer(certs: Sequence[x509.Certificate]) -> str:
    try:
        return certs[-1].issuer.rfc4514_string() or "(empty issuer)"
    except ValueError:
        return "(unreadable issuer)"
