"""Synthetic TDX DCAP quotes for tests: v4 quotes of a given TD body, signed by a test
attestation key that a test Quoting Enclave vouches for, whose report a test PCK key signs,
under a test PKI shaped like Intel's (Intel SGX Root CA -> Intel SGX PCK Platform CA ->
Intel SGX PCK Certificate, ECDSA P-256, the SGX extension with FMSPC, PCE id and TCB
components). `TdxVerifier` given the test root with `--trust-root` passes every check of
such a quote but the TCB status, for which there is no collateral.
Nothing here is used by the collector or the verifier.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from cmcp_cli.attestation.toolkit import key_usage
from cmcp_tdx import pki
from cmcp_tdx import quote as tdx

NOT_BEFORE: Final = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER: Final = datetime(2031, 1, 1, tzinfo=UTC)
AT: Final = datetime(2026, 6, 1, tzinfo=UTC)
FMSPC: Final = bytes.fromhex("00806f050000")  # a Sapphire Rapids platform, as on Azure
PCE_ID: Final = bytes(2)
QE_MRSIGNER: Final = bytes.fromhex(
    "8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"
)
QE_AUTH_DATA: Final = bytes(range(32))  # the QE's authentication data, as Intel's QE sends


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(part) for part in dotted.split("."))
    encoded = bytearray()
    for value in (40 * first + second, *rest):
        chunk = [value & 0x7F]
        while value := value >> 7:
            chunk.append(0x80 | (value & 0x7F))
        encoded += bytes(reversed(chunk))
    return _der(0x06, bytes(encoded))


def _integer(value: int) -> bytes:
    return _der(0x02, value.to_bytes(1 + value.bit_length() // 8, "big"))


def _pair(oid: str, value: bytes) -> bytes:
    return _der(0x30, _oid(oid) + value)


@dataclass(frozen=True)
class PckFacts:
    """What the PCK certificate's SGX extension states about its platform."""

    fmspc: bytes = FMSPC
    pce_id: bytes = PCE_ID
    pce_svn: int = 13
    component_svns: tuple[int, ...] = (3, 3, 2, 2, 2, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)

    def extension(self) -> bytes:
        """The DER of the SGX extension (1.2.840.113741.1.13.1) as Intel's PCS writes it."""
        sgx = pki.SGX_EXTENSION
        tcb = b"".join(
            _pair(f"{sgx}.2.{n}", _integer(svn)) for n, svn in enumerate(self.component_svns, 1)
        )
        tcb += _pair(f"{sgx}.2.17", _integer(self.pce_svn))
        tcb += _pair(f"{sgx}.2.18", _der(0x04, bytes(self.component_svns)))
        return _der(
            0x30,
            _pair(f"{sgx}.1", _der(0x04, bytes(range(16))))  # PPID
            + _pair(f"{sgx}.2", _der(0x30, tcb))
            + _pair(f"{sgx}.3", _der(0x04, self.pce_id))
            + _pair(f"{sgx}.4", _der(0x04, self.fmspc))
            + _pair(f"{sgx}.5", _der(0x0A, b"\x00")),  # SGX type: standard
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    signer: ec.EllipticCurvePrivateKey,
    *,
    path_length: int | None = None,
    ca: bool = True,
    extra: x509.ExtensionType | None = None,
    not_after: datetime = NOT_AFTER,
) -> x509.Certificate:
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE if not ca else NOT_BEFORE - timedelta(days=365))
        .not_valid_after(not_after if not ca else NOT_AFTER + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            key_usage(key_cert_sign=True, crl_sign=True)
            if ca
            else key_usage(digital_signature=True),
            critical=True,
        )
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.public_key()  # type: ignore[arg-type]  # an EC key: ours
            ),
            critical=False,
        )
    if extra is not None:
        builder = builder.add_extension(extra, critical=False)
    return builder.sign(signer, hashes.SHA256())


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as quotes carry it: r||s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The x||y of a P-256 key, as quotes carry the attestation key."""
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]


@dataclass
class IntelPki:
    """A root, a PCK Platform CA and a PCK certificate named like Intel's, and the keys of a
    Quoting Enclave's attestation key and of the PCK."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    attestation_key: ec.EllipticCurvePrivateKey = field(default_factory=_p256)

    @classmethod
    def create(cls, facts: PckFacts | None = None) -> IntelPki:
        root_key, ca_key, pck_key = _p256(), _p256(), _p256()
        root = _certificate("Intel SGX Root CA", root_key, None, root_key, path_length=1)
        ca = _certificate("Intel SGX PCK Platform CA", ca_key, root, root_key, path_length=0)
        sgx = x509.UnrecognizedExtension(
            x509.ObjectIdentifier(pki.SGX_EXTENSION), (facts or PckFacts()).extension()
        )
        pck = _certificate(pki.PCK_LEAF_CN, pck_key, ca, ca_key, ca=False, extra=sgx)
        return cls(root_key, root, ca_key, ca, pck_key, pck)

    def root_pem(self) -> bytes:
        return self.root.public_bytes(Encoding.PEM)

    def chain_pem(self) -> bytes:
        """The PCK chain as a quote carries it: leaf, PCK CA, root, canonical PEM."""
        return b"".join(c.public_bytes(Encoding.PEM) for c in (self.pck, self.ca, self.root))

    def qe_report(self, *, auth_data: bytes = QE_AUTH_DATA) -> bytes:
        """The Quoting Enclave's report: its REPORTDATA binds the attestation key."""
        report = bytearray(tdx.QE_REPORT_SIZE)
        report[0:16] = bytes([3, 3, 2, 2, 2, 1, 0, 3]) + bytes(8)  # CPUSVN
        report[48:64] = bytes.fromhex("11000000000000000700000000000000")  # INIT|MODE64BIT
        report[64:96] = hashlib.sha256(b"test quoting enclave").digest()  # MRENCLAVE
        report[128:160] = QE_MRSIGNER
        struct.pack_into("<HH", report, 256, 2, 8)  # ISVPRODID 2 (the TD QE), ISVSVN 8
        binding = hashlib.sha256(raw_public_key(self.attestation_key) + auth_data).digest()
        report[320:352] = binding
        return bytes(report)

    def quote(
        self,
        body: tdx.TdBody,
        *,
        auth_data: bytes = QE_AUTH_DATA,
        chain_pem: bytes | None = None,
        user_data: bytes = bytes(20),
    ) -> bytes:
        """A v4 quote of `body` signed by the attestation key, with the QE report signed by
        the PCK key and the PCK chain (`chain_pem` replaces it, for a test of a bad one)."""
        header = struct.pack(
            "<HHIHH16s20s", 4, tdx.ATT_KEY_ECDSA_P256, tdx.TEE_TYPE_TDX, 0, 0,
            tdx.INTEL_QE_VENDOR_ID, user_data,
        )  # fmt: skip
        signed = header + body_bytes(body)
        qe_report = self.qe_report(auth_data=auth_data)
        chain = self.chain_pem() if chain_pem is None else chain_pem
        pck_data = struct.pack("<HI", tdx.CERT_PCK_CHAIN, len(chain)) + chain
        qe_data = (
            qe_report
            + raw_signature(self.pck_key, qe_report)
            + struct.pack("<H", len(auth_data))
            + auth_data
            + pck_data
        )
        signature_data = (
            raw_signature(self.attestation_key, signed)
            + raw_public_key(self.attestation_key)
            + struct.pack("<HI", tdx.CERT_QE_REPORT, len(qe_data))
            + qe_data
        )
        return signed + struct.pack("<I", len(signature_data)) + signature_data


def body_bytes(body: tdx.TdBody) -> bytes:
    """The 584 bytes of a TD report 1.0 quote body stating `body`."""
    raw = (
        body.tee_tcb_svn + body.mrseam + body.mrsignerseam + body.seam_attributes
        + body.td_attributes + body.xfam + body.mrtd + body.mrconfigid + body.mrowner
        + body.mrownerconfig + b"".join(body.rtmrs) + body.report_data
    )  # fmt: skip
    if len(raw) != tdx.BODY_V4_SIZE:
        raise ValueError(f"the body's fields make {len(raw)} bytes, not {tdx.BODY_V4_SIZE}")
    return raw


def td_body(report_data: bytes, **fields: bytes) -> tdx.TdBody:
    """A TD body with plausible values (no debug, RTMRs zero) and this REPORTDATA; `fields`
    replaces any of the others by name (`mrtd=...`)."""
    values: dict[str, object] = {
        "tee_tcb_svn": bytes([5, 1, 16]) + bytes(13),
        "mrseam": hashlib.sha384(b"test TDX module").digest(),
        "mrsignerseam": bytes(48),
        "seam_attributes": bytes(8),
        "td_attributes": bytes([0, 0, 0, 0x10]) + bytes(4),  # SEPT_VE_DISABLE (bit 28)
        "xfam": bytes.fromhex("e71a060000000000"),
        "mrtd": hashlib.sha384(b"test TD image").digest(),
        "mrconfigid": bytes(48),
        "mrowner": bytes(48),
        "mrownerconfig": bytes(48),
        "rtmrs": (bytes(48),) * 4,
        "report_data": report_data,
    }
    values.update(fields)
    return tdx.TdBody(**values)  # type: ignore[arg-type]  # the names are TdBody's own
