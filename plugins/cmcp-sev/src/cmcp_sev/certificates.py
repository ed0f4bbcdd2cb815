"""AMD's SEV-SNP certificates, judged with `cryptography` alone: the VCEK's (or VLEK's)
AMD extensions, and each link of the chain VCEK -> ASK -> ARK (VLEK -> ASVK -> ARK).

AMD signs ASKs, ARKs and VCEKs with RSASSA-PSS, SHA-384, MGF1-SHA-384 and a 48-byte salt.
Each link is verified explicitly with the issuer's RSA key and exactly those parameters,
after checking that the issuer's subject is the certificate's issuer name and that the
issuer is a CA allowed to sign certificates. Every problem is returned as a sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from cmcp_cli.attestation.toolkit import common_name, p384_key_problem
from cmcp_sev.structures import Product

_AMD: Final = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION: Final = f"{_AMD}.1"
OID_PRODUCT_NAME: Final = f"{_AMD}.2"
OID_HWID: Final = f"{_AMD}.4"
OID_CSP_ID: Final = f"{_AMD}.5"
# The TCB component SPLs a VCEK or VLEK was issued for: name -> OID.
SPL_OIDS: Final = {
    "bl": f"{_AMD}.3.1",
    "tee": f"{_AMD}.3.2",
    "snp": f"{_AMD}.3.3",
    "ucode": f"{_AMD}.3.8",
    "fmc": f"{_AMD}.3.9",  # Turin only
}
PSS_SALT: Final = 48
# How AMD signs its certificates and CRLs.
AMD_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT)


class ExtensionError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AmdExtensions:
    spl: dict[str, int] = field(default_factory=dict)  # the SPL_OIDS present
    hwid: bytes | None = None
    product_name: str | None = None
    csp_id: str | None = None


def _der_value(data: bytes, tags: tuple[int, ...], oid: str) -> tuple[int, bytes]:
    """The tag and content of the single DER TLV that is the whole of `data`."""
    if len(data) < 2 or data[0] not in tags:
        raise ExtensionError(f"extension {oid} is not a DER value of the expected type")
    length, start = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count not in (1, 2) or len(data) < 2 + count:
            raise ExtensionError(f"extension {oid} has an unusable DER length")
        length, start = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
        if length < 0x80 or (count == 2 and length < 0x100):
            raise ExtensionError(f"extension {oid} has a non-minimal DER length")
    if start + length != len(data):
        raise ExtensionError(f"extension {oid} has trailing or missing bytes")
    return data[0], data[start:]


def _spl(data: bytes, oid: str) -> int:
    _, content = _der_value(data, (0x02,), oid)  # INTEGER
    if not content or (len(content) > 1 and content[0] == 0 and content[1] < 0x80):
        raise ExtensionError(f"extension {oid} is not a minimal DER INTEGER")
    value = int.from_bytes(content, "big", signed=True)
    if not 0 <= value <= 0xFF:
        raise ExtensionError(f"extension {oid} holds {value}, not a security patch level 0..255")
    return value


def _text(data: bytes, oid: str) -> str:
    _, content = _der_value(data, (0x16, 0x0C), oid)  # IA5String, UTF8String
    try:
        return content.decode()
    except UnicodeDecodeError:
        raise ExtensionError(f"extension {oid} is not text") from None


def amd_extensions(cert: x509.Certificate) -> AmdExtensions:
    """The AMD extensions of a VCEK or VLEK; `ExtensionError` when one is malformed."""
    raw: dict[str, bytes] = {}
    for extension in cert.extensions:
        value = extension.value
        if isinstance(value, x509.UnrecognizedExtension):
            raw[extension.oid.dotted_string] = value.value
    spl = {name: _spl(raw[oid], oid) for name, oid in SPL_OIDS.items() if oid in raw}
    # hwID is the chip's CHIP_ID itself, carried as the extension's octets.
    hwid = raw.get(OID_HWID)
    product = _text(raw[OID_PRODUCT_NAME], OID_PRODUCT_NAME) if OID_PRODUCT_NAME in raw else None
    csp_id = _text(raw[OID_CSP_ID], OID_CSP_ID) if OID_CSP_ID in raw else None
    return AmdExtensions(spl, hwid, product, csp_id)


def product_of(cert_name: str) -> Product | None:
    """The product an AMD name ends with: ARK-Milan, SEV-Milan, SEV-VLEK-Genoa, ..."""
    suffix = cert_name.rsplit("-", 1)[-1]
    return next((p for p in Product if p.value == suffix), None)


def describe(cert: x509.Certificate) -> str:
    try:
        return common_name(cert)
    except ValueError:
        return "(unreadable subject)"


def describe_issuer(cert: x509.Certificate) -> str:
    names = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode(errors="replace")


def ca_problem(cert: x509.Certificate, label: str) -> str | None:
    """Why `cert` may not sign certificates, or None when it may."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return f"{label} has no basicConstraints: it is not a CA certificate."
    if not constraints.ca:
        return f"{label} is not a CA certificate (basicConstraints CA is false)."
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if not usage.key_cert_sign:
        return f"{label} has a keyUsage without keyCertSign: it may not sign certificates."
    return None


def signature_problem(cert: x509.Certificate, issuer: x509.Certificate, label: str) -> str | None:
    """Why `issuer` did not sign `cert` the way AMD signs (name, RSA-PSS SHA-384), or None."""
    if cert.issuer != issuer.subject:
        return f"{label} names issuer {cert.issuer.rfc4514_string()}, not {describe(issuer)}."
    return signed_by_problem(cert, cert.tbs_certificate_bytes, issuer, label)


def signed_by_problem(
    signed: x509.Certificate | x509.CertificateRevocationList,
    to_be_signed: bytes,
    issuer: x509.Certificate,
    label: str,
) -> str | None:
    """Why `issuer`'s key did not sign `to_be_signed`, the signed part of a certificate or
    CRL, the way AMD signs (RSA-PSS, SHA-384, salt 48), or None."""
    issuer_label = describe(issuer)
    if signed.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        return f"{label} is not signed with RSASSA-PSS, as AMD signs."
    if not isinstance(signed.signature_hash_algorithm, hashes.SHA384):
        return f"{label} is not signed with SHA-384, as AMD signs."
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return f"{issuer_label} has no RSA key, so it cannot have signed {label}."
    try:
        key.verify(signed.signature, to_be_signed, AMD_PSS, hashes.SHA384())
    except InvalidSignature:
        return f"{label} is not signed by the key of {issuer_label}."
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        return f"{label} cannot be checked against {issuer_label}: {str(error).rstrip('.')}."
    return None


def leaf_key_problem(cert: x509.Certificate, label: str) -> str | None:
    if (problem := p384_key_problem(cert, label, "SEV-SNP reports")) is not None:
        return problem
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    if constraints.ca:
        return f"{label} is a CA certificate, not an endorsement key."
    return None


def find_issuer(
    cert: x509.Certificate, candidates: tuple[x509.Certificate, ...]
) -> x509.Certificate | None:
    """The candidate whose subject is `cert`'s issuer and whose key signed it."""
    for candidate in candidates:
        if candidate.subject == cert.issuer and signature_problem(cert, candidate, "") is None:
            return candidate
    return None
