"""A GPU's device certificate chain, judged with `cryptography`: exactly NVIDIA's five
certificates, leaf first, each issued by the next, ending at a pinned root, every one valid
at the claim's time; the chip it names, and the firmware digest (FWID) the leaf states.

    <chip> A01 GSP FMC LF            the leaf: its P-384 key signs the SPDM measurements
    <chip> A01 GSP BROM              the GPU's boot ROM identity
    NVIDIA <chip> Provisioner ICA …  NVIDIA's provisioning intermediate
    NVIDIA <chip> Identity           the chip family's identity CA
    NVIDIA Device Identity CA        the root (pinned)

Each link is checked with `Certificate.verify_directly_issued_by` (issuer name and ECDSA
signature) after checking that the issuer is a CA that may sign certificates. Problems are
returned as sentences (`ChainError`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cmcp_cli.attestation.toolkit import p384_key_problem, validity_problem
from cmcp_gpucc import x509_rules
from cmcp_gpucc.roots import Anchor, TrustSet, fingerprint
from cmcp_gpucc.x509_rules import describe

CHAIN_LENGTH: Final = 5
ROLES: Final = ("the leaf", "the BROM certificate", "the provisioner ICA", "the identity CA")
# The chip families a device chain may name, and the architecture each is.
ARCHITECTURES: Final = ((re.compile(r"GH100"), "Hopper"), (re.compile(r"GB1\d\d"), "Blackwell"))
_IDENTITY: Final = re.compile(r"NVIDIA (G[A-Z]\d{3}) Identity")
# NVIDIA's device-identity otherName in the leaf's subjectAltName: "NVIDIA:<chip>:<id>".
_NVIDIA_SAN: Final = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.1")
# Where the leaf states its FWID: TCG DICE TcbInfo on Hopper, NVIDIA's arc under it on Blackwell.
FWID_OIDS: Final = ("2.23.133.5.4.1", "2.23.133.5.4.1.1")
_SHA384_OID: Final = bytes.fromhex("608648016503040202")


class ChainError(ValueError):
    """The device chain does not hold; the message says why."""


@dataclass(frozen=True, slots=True)
class DeviceChain:
    certs: tuple[x509.Certificate, ...]  # leaf first, ending with the pinned root
    anchor: Anchor


@dataclass(frozen=True, slots=True)
class Chip:
    name: str  # "GH100"
    architecture: str  # "Hopper"

    def describe(self) -> str:
        return f"NVIDIA {self.architecture} ({self.name})"


def leaf_key_problem(cert: x509.Certificate) -> str | None:
    return p384_key_problem(cert, "the leaf", "NVIDIA's SPDM reports")


def leaf_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ChainError(leaf_key_problem(cert) or "the leaf has no P-384 key.")
    return key


def _unknown_critical(cert: x509.Certificate, label: str) -> str | None:
    for extension in cert.extensions:
        if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
            return f"{label} has a critical extension {extension.oid.dotted_string} we do not know."
    return None


def _leaf_problem(leaf: x509.Certificate) -> str | None:
    return x509_rules.signer_problem(leaf, "the leaf") or leaf_key_problem(leaf)


def _link_problem(cert: x509.Certificate, issuer: x509.Certificate, label: str) -> str | None:
    if not isinstance(cert.signature_hash_algorithm, hashes.SHA384) or not isinstance(
        issuer.public_key(), ec.EllipticCurvePublicKey
    ):
        return f"{label} is not signed with ECDSA and SHA-384, as NVIDIA signs device chains."
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as error:
        detail = str(error).rstrip(".") or type(error).__name__
        return f"{label} was not issued by {describe(issuer)} ({detail})."
    return None


def chip_of(certs: Sequence[x509.Certificate]) -> Chip:
    """The chip and architecture a verified chain names, every certificate agreeing: the
    identity CA the pinned root issued names it, the others must name the same chip."""
    identity = describe(certs[3])
    match = _IDENTITY.fullmatch(identity)
    if match is None:
        raise ChainError(f"the identity CA is named {identity!r}, not 'NVIDIA <chip> Identity'.")
    chip = match.group(1)
    architecture = next((arch for rx, arch in ARCHITECTURES if rx.fullmatch(chip)), None)
    if architecture is None:
        raise ChainError(
            f"the chain is for the chip {chip}, which is neither Hopper (GH100) nor "
            "Blackwell (GB1xx)."
        )
    for cert, role in zip(certs[:3], ROLES[:3], strict=True):
        if chip not in describe(cert).split():
            raise ChainError(f"{role} ({describe(cert)}) does not name the chip {chip}.")
    for name in _san_names(certs[0]):
        parts = name.split(":")
        if len(parts) != 3 or parts[0] != "NVIDIA" or parts[1] != chip:
            raise ChainError(f"the leaf's device name {name!r} is not NVIDIA:{chip}:<id>.")
    return Chip(chip, architecture)


def _san_names(leaf: x509.Certificate) -> Iterator[str]:
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    for other in names.get_values_for_type(x509.OtherName):
        if other.type_id != _NVIDIA_SAN:
            continue
        tag, content = _single(other.value)
        if tag != 0x0C:  # UTF8String
            raise ChainError("the leaf's NVIDIA device name is not a UTF8String.")
        yield content.decode("utf-8", errors="replace")


def verify_chain(certs: Sequence[x509.Certificate], trust: TrustSet, at: datetime) -> DeviceChain:
    """The chain, judged link by link at `at`; `ChainError` says the first problem."""
    if len(certs) != CHAIN_LENGTH:
        raise ChainError(
            f"the device chain has {len(certs)} certificate(s); an NVIDIA GPU's has "
            f"{CHAIN_LENGTH}: the leaf (GSP FMC LF), the BROM certificate, the provisioner ICA, "
            "the chip's identity CA and the NVIDIA Device Identity CA, in that order."
        )
    if (problem := _leaf_problem(certs[0])) is not None:
        raise ChainError(problem[0].upper() + problem[1:])
    labels = [*ROLES, "the root"]
    for position in range(CHAIN_LENGTH - 1):
        cert, issuer = certs[position], certs[position + 1]
        issuer_label = f"{labels[position + 1]} ({describe(issuer)})"
        for problem in (
            x509_rules.issuer_problem(issuer, issuer_label, position),
            _link_problem(cert, issuer, f"{labels[position]} ({describe(cert)})"),
        ):
            if problem is not None:
                raise ChainError(problem[0].upper() + problem[1:])
    root = certs[-1]
    anchor = next((a for a in trust.device if a.fingerprint == fingerprint(root)), None)
    if anchor is None:
        raise ChainError(
            f"The chain ends at {describe(root)} (sha256 {fingerprint(root)}), which is not a "
            f"pinned root ({trust.describe(trust.device)})."
        )
    for cert, label in zip(certs, labels, strict=True):
        for problem in (
            _unknown_critical(cert, f"{label} ({describe(cert)})"),
            validity_problem(cert, f"{label} ({describe(cert)})", at),
        ):
            if problem is not None:
                raise ChainError(problem[0].upper() + problem[1:])
    return DeviceChain(tuple(certs), anchor)


def _single(data: bytes) -> tuple[int, bytes]:
    items = list(_tlvs(data))
    if len(items) != 1:
        raise ChainError("a certificate extension is not a single DER value.")
    return items[0]


def _tlvs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The DER values that make up `data`, exactly; `ChainError` on any malformed length."""
    at = 0
    while at < len(data):
        if len(data) - at < 2:
            raise ChainError("a certificate extension ends inside a DER header.")
        tag, length, at = data[at], data[at + 1], at + 2
        if length & 0x80:
            count = length & 0x7F
            if count not in (1, 2) or len(data) - at < count:
                raise ChainError("a certificate extension has an unusable DER length.")
            length, at = int.from_bytes(data[at : at + count], "big"), at + count
            if length < 0x80 or (count == 2 and length < 0x100):
                raise ChainError("a certificate extension has a non-minimal DER length.")
        if len(data) - at < length:
            raise ChainError("a certificate extension's DER value is cut short.")
        yield tag, data[at : at + length]
        at += length


def _fwids(data: bytes) -> Iterator[bytes]:
    """Every FWID (SEQUENCE {sha384 OID, 48-byte OCTET STRING}) inside `data`, in order."""
    for tag, content in _tlvs(data):
        if not tag & 0x20:  # primitive: nothing inside
            continue
        children = list(_tlvs(content))
        if (
            tag == 0x30
            and len(children) == 2
            and children[0] == (0x06, _SHA384_OID)
            and children[1][0] == 0x04
            and len(children[1][1]) == 48
        ):
            yield children[1][1]
        else:
            yield from _fwids(content)


def leaf_fwid(leaf: x509.Certificate) -> bytes | None:
    """The first SHA-384 FWID the leaf's DICE TcbInfo states; None when it states none."""
    for extension in leaf.extensions:
        if extension.oid.dotted_string in FWID_OIDS and isinstance(
            extension.value, x509.UnrecognizedExtension
        ):
            return next(_fwids(extension.value.value), None)
    return None
