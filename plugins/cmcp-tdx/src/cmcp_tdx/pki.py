"""Intel's PKI as the TDX verifier needs it, with `cryptography` alone: the pinned Intel SGX
Root CA, certificate chains to it judged as of an explicit time, raw ECDSA P-256 signatures
(r||s, as quotes and Intel collateral carry them), and the SGX extension of a PCK
certificate (FMSPC, PCE id, TCB components).

Chains are built and checked by `cryptography.x509.verification` (signatures, validity at
the given time, CA basic constraints, names); Intel's end-entity certificates carry no
subjectAltName, so the end-entity extension policy permits any extensions while CA
certificates keep the Web PKI CA policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from cmcp_cli.attestation import toolkit
from cmcp_cli.attestation.toolkit import as_utc, certificate_fingerprint, trust_root_certificates
from cmcp_tdx import der

# SHA-256 of the DER of the Intel SGX Root CA (CN=Intel SGX Root CA, valid to 2049-12-31).
INTEL_ROOT_SHA256: Final = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
ROOT_RESOURCE: Final = "intel-sgx-root-ca.pem"
SGX_EXTENSION: Final = "1.2.840.113741.1.13.1"
_TCB: Final = SGX_EXTENSION + ".2"
_PCEID: Final = SGX_EXTENSION + ".3"
_FMSPC: Final = SGX_EXTENSION + ".4"
_PCESVN: Final = _TCB + ".17"
_CPUSVN: Final = _TCB + ".18"
PCK_LEAF_CN: Final = "Intel SGX PCK Certificate"
PCK_CA_CNS: Final = frozenset({"Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA"})
_MAX_CHAIN: Final = 4


fingerprint = certificate_fingerprint  # what the root is pinned by


class PkiError(ValueError):
    """A certificate, chain or signature does not hold; the message says why."""


def vendored_root() -> x509.Certificate:
    """The Intel SGX Root CA shipped in this package, refused unless it is the pinned one."""
    data = resources.files("cmcp_tdx").joinpath("data", ROOT_RESOURCE).read_bytes()
    cert = x509.load_pem_x509_certificate(data)
    if fingerprint(cert) != INTEL_ROOT_SHA256:
        raise PkiError(
            f"the vendored {ROOT_RESOURCE} has SHA-256 {fingerprint(cert)}, not the pinned "
            f"{INTEL_ROOT_SHA256}: the installation is corrupt"
        )
    return cert


def pinned_roots(trust_roots: Sequence[bytes]) -> tuple[list[x509.Certificate], str]:
    """The roots to anchor in and where they come from: the auditor's `--trust-root` PEMs
    when given (they replace the vendored root), else the vendored Intel SGX Root CA."""
    if not trust_roots:
        return [vendored_root()], "the vendored Intel SGX Root CA"
    try:
        roots = trust_root_certificates(trust_roots)
    except ValueError as error:
        raise PkiError(str(error)) from None
    return roots, "the roots given with --trust-root"


def load_pem_chain(pem: bytes, what: str) -> list[x509.Certificate]:
    """The certificates of a quote's PEM chain, which must be written as Intel's PCS writes
    it (64-character lines, LF; C-string NULs after it): the chain is unsigned, so a second
    spelling of the same certificates would be a change that nothing else notices."""
    text = pem.rstrip(b"\x00")
    try:
        certs = x509.load_pem_x509_certificates(text)
    except ValueError as error:
        raise PkiError(f"the {what} is not PEM certificate data ({error})") from None
    if len(certs) > _MAX_CHAIN:
        raise PkiError(f"the {what} has {len(certs)} certificates, more than {_MAX_CHAIN}")
    if text != b"".join(cert.public_bytes(Encoding.PEM) for cert in certs):
        raise PkiError(
            f"the {what} is not canonical PEM (64-character base64 lines, LF line ends, "
            "nothing between the certificates): it was altered after the quote was made"
        )
    return certs


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode(errors="replace")


def validity_problem(cert: x509.Certificate, at: datetime) -> str | None:
    label = f"certificate {common_name(cert) or cert.subject.rfc4514_string()!r}"
    return toolkit.validity_problem(cert, label, at)


def verify_chain(
    certs: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], at: datetime, what: str
) -> list[x509.Certificate]:
    """`certs[0]` (an end entity) through the rest to one of `roots`, valid at `at`: the
    validated chain, leaf first and the pinned root last. `PkiError` says what fails."""
    if not certs:
        raise PkiError(f"the {what} holds no certificate")
    for cert in certs:
        if (problem := validity_problem(cert, at)) is not None:
            raise PkiError(f"in the {what}, {problem.rstrip('.')}")
    builder = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(as_utc(at))
        .max_chain_depth(_MAX_CHAIN)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
        )
    )
    try:
        verified = builder.build_client_verifier().verify(certs[0], list(certs[1:]))
    except VerificationError as error:
        raise PkiError(f"the {what} does not verify to a pinned root: {error}") from None
    chain = list(verified.chain)
    if (problem := validity_problem(chain[-1], at)) is not None:
        raise PkiError(f"the pinned root: {problem.rstrip('.')}")
    # What the chain carries is evidence too: a certificate off the verified path (such as
    # an altered copy of the root, which the pinned root stands in for) is refused.
    for position, cert in enumerate(certs, 1):
        if cert not in chain:
            raise PkiError(
                f"certificate {position} of the {what} ({common_name(cert)!r}, SHA-256 "
                f"{fingerprint(cert)}) is not on the verified path to the pinned root"
            )
    return chain


def p256_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """A raw 64-byte x||y P-256 public key, as quotes carry the attestation key."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise PkiError("the attestation key is not a point on NIST P-256") from None


def p256_leaf_key(cert: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise PkiError(f"the {what} key cannot be read ({error})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PkiError(f"the {what} key is not an ECDSA P-256 key")
    return key


def raw_signature_ok(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """ECDSA P-256 / SHA-256 over `data` with a raw 64-byte r||s signature."""
    if len(signature) != 64:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (r and s):
        return False
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class PckInfo:
    """What a PCK certificate says about its platform's TCB."""

    fmspc: bytes
    pce_id: bytes
    pce_svn: int
    cpu_svn: bytes  # the 16 SGX TCB component SVNs
    component_svns: tuple[int, ...]


def pck_info(cert: x509.Certificate) -> PckInfo:
    try:
        extension = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION))
    except x509.ExtensionNotFound:
        raise PkiError("the PCK certificate has no SGX extension") from None
    value = extension.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    try:
        pairs = der.oid_values(der.sequence(raw))
        fmspc, pce_id, cpu_svn = (_octets(pairs, oid) for oid in (_FMSPC, _PCEID, _CPUSVN))
        pce_svn = _int(pairs, _PCESVN)
        components = tuple(_int(pairs, f"{_TCB}.{n}") for n in range(1, 17))
    except der.DerError as error:
        raise PkiError(f"the PCK certificate's SGX extension is malformed: {error}") from None
    if len(fmspc) != 6 or len(pce_id) != 2 or len(cpu_svn) != 16:
        raise PkiError("the PCK certificate's FMSPC, PCE id or CPUSVN has the wrong size")
    return PckInfo(fmspc, pce_id, pce_svn, cpu_svn, components)


def _octets(pairs: dict[str, tuple[int, bytes]], oid: str) -> bytes:
    tag, value = pairs.get(oid, (0, b""))
    if tag != der.OCTET_STRING:
        raise der.DerError(f"{oid} is missing or not an OCTET STRING")
    return value


def _int(pairs: dict[str, tuple[int, bytes]], oid: str) -> int:
    tag, value = pairs.get(oid, (0, b""))
    if tag != der.INTEGER:
        raise der.DerError(f"{oid} is missing or not an INTEGER")
    return der.integer(value)
