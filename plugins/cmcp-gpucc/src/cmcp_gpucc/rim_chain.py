"""The signer chain of a RIM, walked by us from the embedded leaf to a pinned NVIDIA CoRIM
signing root, every certificate judged at the claim's time.

A RIM embeds its signer chain in `KeyInfo/X509Data`, leaf first, usually ending with a copy
of the root. Nothing embedded is trusted for being there: a link is accepted only when the
issuer's subject is the certificate's issuer name and the issuer's key signed it
(`verify_directly_issued_by`), the issuer is a CA allowed to sign certificates within its
path length, and the walk ends at a certificate DER-identical to a pinned root. A
self-signed certificate that is not pinned ends the walk as a failure.

cryptography's policy verifier (`x509.verification`) is not used: its profiles require a
subjectAltName on the end-entity certificate, which NVIDIA's RIM signers do not carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.toolkit import p384_key_problem, self_signed, validity_problem
from cmcp_gpucc import x509_rules

# NVIDIA's RIM chains have four certificates (L4 signer, L3, CA, root); the walk is bounded
# so a crafted chain cannot make it loop or run long.
MAX_DEPTH: Final = 8


class ChainError(ValueError):
    """The signer chain does not lead to a pinned root at the given time; the message says
    which link fails and why."""


def describe(cert: x509.Certificate) -> str:
    """A certificate for people: its common name in quotes."""
    return f'"{x509_rules.describe(cert)}"'


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def signer_problem(leaf: x509.Certificate) -> str | None:
    """Why `leaf` may not sign a RIM (NVIDIA signs with ECDSA P-384 end-entity keys), or
    None when it may."""
    label = f"The RIM signer {describe(leaf)}"
    return p384_key_problem(leaf, label, "NVIDIA's RIMs") or x509_rules.signer_problem(leaf, label)


def _issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def walk(
    embedded: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], at: datetime
) -> tuple[x509.Certificate, ...]:
    """The path from `embedded[0]` (the signer) to a pinned root, each link and each
    certificate's validity checked at `at`; `ChainError` names the first problem."""
    if not embedded:
        raise ChainError("The RIM embeds no signer certificate.")
    if not roots:
        raise ChainError("No CoRIM signing root is pinned, so no RIM signer can be trusted.")
    pinned = {_der(root): root for root in roots}
    leaf = embedded[0]
    problem = signer_problem(leaf)
    if problem is not None:
        raise ChainError(problem)
    path = [leaf]
    current = leaf
    while _der(current) not in pinned:
        if len(path) > MAX_DEPTH:
            raise ChainError(f"The RIM signer chain is longer than {MAX_DEPTH} certificates.")
        problem = validity_problem(current, describe(current), at)
        if problem is not None:
            raise ChainError(problem)
        if current is not leaf and self_signed(current):
            raise ChainError(
                f"The RIM signer chain ends at {describe(current)}, a self-signed certificate "
                "that is not a pinned CoRIM signing root."
            )
        used = {_der(cert) for cert in path}
        # A pinned root is preferred to an embedded certificate of the same name.
        candidates = [*roots, *(cert for cert in embedded if _der(cert) not in used)]
        issuer = next((c for c in candidates if _issued(current, c)), None)
        if issuer is None:
            named = any(c.subject == current.issuer for c in candidates)
            why = (
                "whose key did not sign it"
                if named
                else "which is neither embedded in the RIM nor a pinned root"
            )
            raise ChainError(
                f"{describe(current)} is issued by {current.issuer.rfc4514_string()}, {why}: "
                "the RIM signer does not chain to the pinned NVIDIA CoRIM signing root."
            )
        problem = x509_rules.issuer_problem(issuer, describe(issuer), below=len(path) - 1)
        if problem is not None:
            raise ChainError(problem)
        path.append(issuer)
        current = issuer
    problem = validity_problem(current, f"The pinned root {describe(current)}", at)
    if problem is not None:
        raise ChainError(problem)
    return tuple(path)
