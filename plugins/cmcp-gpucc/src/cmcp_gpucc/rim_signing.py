"""Synthetic RIMs and OCSP responses for tests, signed under a test PKI shaped like NVIDIA's
(CoRIM root -> Reference Value CA -> L3 -> L4 RIM signer, ECDSA P-384/SHA-384), so the
appraisal paths no public RIM reaches (a RIM that matches a report, a good OCSP status) are
exercised with real signatures. No public GPU evidence and RIM pair appraises clean, so a
positive case needs these.

RIMs are laid out as NVIDIA's (a TCG SWID `SoftwareIdentity` with `Meta` and one
`Resource type="Measurement"` per index) and signed by signxml as NVIDIA signs them:
enveloped, ecdsa-sha384, c14n 1.1, SHA-384 reference digest, the signer chain embedded leaf
first. Nothing here is used by the collector or the verifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type information
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from cmcp_cli.attestation.toolkit import key_usage
from cmcp_gpucc.rim import SHA384_NS, SWID

NOT_BEFORE: Final = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER: Final = datetime(2031, 1, 1, tzinfo=UTC)
# A time inside every default validity period here.
AT: Final = datetime(2026, 6, 1, tzinfo=UTC)
TCG_RIM: Final = (
    "https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-"
    "information-model/"
)
# How many RIM indices NVIDIA's manifests list (0..63, one per SPDM block 1..64).
INDICES: Final = 64


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cMCP test PKI"),
        ]
    )


def issue(
    common_name: str,
    issuer: Issued | None,
    *,
    ca: bool,
    path_length: int | None = None,
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
    ocsp_signing: bool = False,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """A certificate for a fresh P-384 key, signed by `issuer` (self-signed without one)."""
    key = key or ec.generate_private_key(ec.SECP384R1())
    subject = _name(common_name)
    signer = issuer.key if issuer is not None else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            key_usage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca), critical=True
        )
    )
    if ocsp_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
        )
    return Issued(builder.sign(signer, hashes.SHA384()), key)


@dataclass(frozen=True)
class RimPki:
    """A test CoRIM signing root and the chain below it down to a RIM signer."""

    root: Issued
    ca: Issued
    l3: Issued
    signer: Issued

    @classmethod
    def create(
        cls, *, signer_not_before: datetime = NOT_BEFORE, signer_not_after: datetime = NOT_AFTER
    ) -> RimPki:
        root = issue("cMCP Test CoRIM signing Root CA", None, ca=True)
        ca = issue("cMCP Test Reference Value GH100 CA", root, ca=True)
        l3 = issue("cMCP Test Reference Value L3 GH100", ca, ca=True, path_length=0)
        signer = issue(
            "cMCP Test RIM L4 Signer", l3, ca=False,
            not_before=signer_not_before, not_after=signer_not_after,
        )  # fmt: skip
        return cls(root, ca, l3, signer)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The chain a RIM embeds, leaf first, ending with the root as NVIDIA's do."""
        return (self.signer.cert, self.l3.cert, self.ca.cert, self.root.cert)

    def responses(
        self,
        *,
        this_update: datetime = AT - timedelta(days=1),
        next_update: datetime | None = AT + timedelta(days=6),
    ) -> list[bytes]:
        """Good OCSP responses for the signer, L3 and CA, each signed by its issuer."""
        return good_responses(
            [(self.signer.cert, self.l3), (self.l3.cert, self.ca), (self.ca.cert, self.root)],
            this_update=this_update,
            next_update=next_update,
        )

    def sign(self, document: bytes) -> bytes:
        return sign_rim(document, self.signer.key, self.chain)


def rim_document(
    measurements: Mapping[int, Sequence[bytes]],
    *,
    version: str,
    product: str = "GH100",
    edition: str = "GPU",
    indices: int = INDICES,
) -> bytes:
    """An unsigned RIM listing `indices` measurement indices: those in `measurements` active
    with the given SHA-384 alternatives, the others inactive with a zero hash."""
    root = etree.Element(f"{{{SWID}}}SoftwareIdentity", nsmap={None: SWID, "ns2": SHA384_NS})
    for attribute, value in (
        ("corpus", "false"), ("name", product), ("patch", "false"), ("supplemental", "false"),
        ("tagId", f"cmcp-test-{product}-{edition}-{version}"), ("version", "1.0"),
        ("tagVersion", "0"),
    ):  # fmt: skip
        root.set(attribute, value)
    entity = etree.SubElement(root, f"{{{SWID}}}Entity")
    entity.set("name", "cMCP test PKI")
    entity.set("role", "softwareCreator tagCreator")
    meta = etree.SubElement(root, f"{{{SWID}}}Meta", nsmap={"ns1": TCG_RIM})
    for attribute, value in (
        ("colloquialVersion", version), ("edition", edition), ("product", product),
        ("revision", "r1"), ("PayloadType", "direct"), (f"{{{TCG_RIM}}}BindingSpec", "RIMIM"),
    ):  # fmt: skip
        meta.set(attribute, value)
    payload = etree.SubElement(root, f"{{{SWID}}}Payload")
    for index in range(max([indices, *(i + 1 for i in measurements)])):
        values = list(measurements.get(index, ()))
        resource = etree.SubElement(payload, f"{{{SWID}}}Resource")
        resource.set("type", "Measurement")
        resource.set("index", str(index))
        resource.set("active", "True" if values else "False")
        alternatives = values or [bytes(48)]
        resource.set("alternatives", str(len(alternatives)))
        for number, digest in enumerate(alternatives):
            resource.set(f"{{{SHA384_NS}}}Hash{number}", digest.hex())
        resource.set("name", f"Measurement_{index}")
        resource.set("size", "48")
    data: bytes = etree.tostring(root, xml_declaration=False, encoding="utf-8")
    return data


def rim_from_blocks(
    blocks: Mapping[int, bytes],
    active: Sequence[int],
    *,
    version: str,
    product: str = "GH100",
    extra_alternatives: int = 1,
) -> bytes:
    """An unsigned RIM whose active indices `active` (RIM indices) each accept SPDM block
    i+1 of `blocks`, after `extra_alternatives` other values, so a match is not always the
    first alternative."""
    measurements = {
        index: [bytes([0xA0 + n]) * 48 for n in range(extra_alternatives)] + [blocks[index + 1]]
        for index in active
    }
    return rim_document(measurements, version=version, product=product)


def sign_rim(
    document: bytes, key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate]
) -> bytes:
    """`document` with an enveloped XML-DSig by `key`, embedding `chain` leaf first."""
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA384,
        digest_algorithm=DigestAlgorithm.SHA384,
        c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
    )
    root = etree.fromstring(document, etree.XMLParser(resolve_entities=False, no_network=True))
    signed = signer.sign(root, key=key, cert=list(chain))
    data: bytes = etree.tostring(signed, encoding="utf-8")
    return data


def ocsp_response(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    responder: Issued,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    this_update: datetime = AT - timedelta(days=1),
    next_update: datetime | None = AT + timedelta(days=6),
    revocation_time: datetime | None = None,
    cert_id_hash: hashes.HashAlgorithm | None = None,
    by_key_hash: bool = False,
    include_responder: bool | None = None,
) -> bytes:
    """A DER OCSPResponse about `cert` (issued by `issuer`) signed by `responder`: the issuer
    itself, or a delegate it certified (`delegated_responder`), which is then carried in the
    response unless `include_responder` is False."""
    revoked = status is ocsp.OCSPCertStatus.REVOKED
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert,
        issuer=issuer,
        algorithm=cert_id_hash or hashes.SHA384(),
        cert_status=status,
        this_update=this_update,
        next_update=next_update,
        revocation_time=(revocation_time or this_update) if revoked else None,
        revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
    )
    encoding = ocsp.OCSPResponderEncoding.HASH if by_key_hash else ocsp.OCSPResponderEncoding.NAME
    builder = builder.responder_id(encoding, responder.cert)
    delegated = responder.cert.subject != issuer.subject
    if include_responder if include_responder is not None else delegated:
        builder = builder.certificates([responder.cert])
    response = builder.sign(responder.key, hashes.SHA384())
    return response.public_bytes(Encoding.DER)


def delegated_responder(
    issuer: Issued,
    *,
    ocsp_signing: bool = True,
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
) -> Issued:
    """An OCSP responder certificate `issuer` issues (with the OCSPSigning extended key usage
    unless `ocsp_signing` is False)."""
    return issue(
        "cMCP Test OCSP Responder", issuer, ca=False, ocsp_signing=ocsp_signing,
        not_before=not_before, not_after=not_after,
    )  # fmt: skip


def good_responses(
    pairs: Sequence[tuple[x509.Certificate, Issued]],
    *,
    this_update: datetime = AT - timedelta(days=1),
    next_update: datetime | None = AT + timedelta(days=6),
) -> list[bytes]:
    """A good OCSP response for each certificate, signed by the issuer paired with it."""
    return [
        ocsp_response(cert, issuer.cert, issuer, this_update=this_update, next_update=next_update)
        for cert, issuer in pairs
    ]
