"""Synthetic SEV-SNP evidence for tests: reports built field by field and signed by a test
PKI shaped like AMD's (ARK -> ASK -> VCEK, RSA-PSS SHA-384 links, AMD extensions), so the
verifier's paths that the genuine vectors cannot reach (a report bound to our binding,
other report versions, Turin's TCB layout, VLEKs) are exercised with real signatures.
Nothing here is used by the collector or the verifier.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from cmcp_cli.attestation.toolkit import key_usage
from cmcp_sev import certificates as certs
from cmcp_sev import structures as snp
from cmcp_sev.evidence import encode

NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2031, 1, 1, tzinfo=UTC)
AT = datetime(2026, 6, 1, tzinfo=UTC)
PSS = certs.AMD_PSS
MILAN_CPUID = (0x19, 0x01, 0x01)
TURIN_CPUID = (0x1A, 0x02, 0x01)


@dataclass
class ReportFields:
    version: int = 3
    policy: int = 0x30000  # SMT allowed, the reserved-one bit, no debug
    vmpl: int = 0
    signing_key: int = 0
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(range(48))
    chip_id: bytes = bytes(range(1, 65))
    tcb: bytes = bytes([3, 0, 0, 0, 0, 0, 8, 115])  # Milan layout: bl 3, tee 0, snp 8, ucode 115
    cpuid: tuple[int, int, int] = MILAN_CPUID
    mit_vectors: tuple[int, int] = (0, 0)


def report_body(f: ReportFields) -> bytes:
    """The 0x2A0 signed bytes of a report with these fields."""
    body = bytearray(snp.SIGNED_SIZE)
    struct.pack_into("<IIQ", body, 0x000, f.version, 1, f.policy)
    struct.pack_into("<II", body, 0x030, f.vmpl, snp.SIG_ALGO_ECDSA_P384_SHA384)
    body[0x038:0x040] = f.tcb
    struct.pack_into("<QI", body, 0x040, 0b101, f.signing_key << 2)
    body[0x050:0x090] = f.report_data
    body[0x090:0x0C0] = f.measurement
    body[0x140:0x160] = bytes([0x5A]) * 32
    body[0x160:0x180] = bytes([0xFF]) * 32
    body[0x180:0x188] = f.tcb
    if f.version >= 3:
        body[0x188:0x18B] = bytes(f.cpuid)
    body[0x1A0:0x1E0] = f.chip_id
    body[0x1E0:0x1E8] = f.tcb
    body[0x1E8:0x1EB] = bytes([7, 55, 1])
    body[0x1EC:0x1EF] = bytes([7, 55, 1])
    body[0x1F0:0x1F8] = f.tcb
    if f.version == 5:
        struct.pack_into("<QQ", body, 0x1F8, *f.mit_vectors)
    return bytes(body)


def sign_report(body: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA384())))
    signature = r.to_bytes(72, "little") + s.to_bytes(72, "little")
    return body + signature + bytes(snp.REPORT_SIZE - snp.SIGNED_SIZE - 144)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _der_integer(value: int) -> bytes:
    content = value.to_bytes(1 + value.bit_length() // 8, "big")
    return bytes([0x02, len(content)]) + content


def amd_extension_values(
    tcb: snp.TcbParts, hwid: bytes | None, product_name: str
) -> dict[str, bytes]:
    values = {
        certs.OID_STRUCT_VERSION: _der_integer(1),
        certs.OID_PRODUCT_NAME: bytes([0x16, len(product_name)]) + product_name.encode(),
        certs.SPL_OIDS["bl"]: _der_integer(tcb.bootloader),
        certs.SPL_OIDS["tee"]: _der_integer(tcb.tee),
        certs.SPL_OIDS["snp"]: _der_integer(tcb.snp),
        certs.SPL_OIDS["ucode"]: _der_integer(tcb.microcode),
    }
    if tcb.fmc is not None:
        values[certs.SPL_OIDS["fmc"]] = _der_integer(tcb.fmc)
    if hwid is not None:
        values[certs.OID_HWID] = hwid
    return values


@dataclass
class AmdPki:
    """A root, an intermediate and an endorsement key, named like AMD's for `product`."""

    product: snp.Product
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    extras: dict[str, x509.Certificate] = field(default_factory=dict)

    @classmethod
    def create(cls, product: snp.Product = snp.Product.MILAN, *, vlek: bool = False) -> AmdPki:
        ark_key = rsa.generate_private_key(65537, 2048)
        ask_key = rsa.generate_private_key(65537, 2048)
        ark_name = _name(f"ARK-{product.value}")
        ask_cn = f"SEV-VLEK-{product.value}" if vlek else f"SEV-{product.value}"
        ark = _ca(ark_name, ark_name, ark_key.public_key(), ark_key, None)
        ask = _ca(_name(ask_cn), ark_name, ask_key.public_key(), ark_key, 0)
        return cls(product, ark_key, ark, ask_key, ask)

    def leaf(
        self,
        key: ec.EllipticCurvePrivateKey,
        extensions: dict[str, bytes],
        *,
        not_after: datetime = NOT_AFTER,
        common_name: str = "SEV-VCEK",
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.ask.subject)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(not_after)
        )
        for oid, value in extensions.items():
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
            )
        return builder.sign(self.ask_key, hashes.SHA384(), rsa_padding=PSS)

    def vcek(
        self,
        key: ec.EllipticCurvePrivateKey,
        fields: ReportFields,
        *,
        extensions: Mapping[str, bytes] | None = None,
        not_after: datetime = NOT_AFTER,
    ) -> x509.Certificate:
        """The VCEK of the chip and TCB that `fields` state, with AMD's extensions (Turin's
        hwID is the chip id's first 8 bytes); `extensions` replaces any of them by OID."""
        parts = snp.Tcb(fields.tcb).decode(self.product)
        hwid = fields.chip_id[:8] if self.product is snp.Product.TURIN else fields.chip_id
        values = amd_extension_values(parts, hwid, self.product.value)
        values.update(extensions or {})
        return self.leaf(key, values, not_after=not_after)

    def root_pem(self) -> bytes:
        return self.ark.public_bytes(Encoding.PEM)

    def crl(
        self,
        revoked: tuple[x509.Certificate, ...] = (),
        *,
        last_update: datetime = AT - timedelta(days=1),
        next_update: datetime = AT + timedelta(days=7),
        signer: rsa.RSAPrivateKey | None = None,
        rsa_padding: padding.PSS | padding.PKCS1v15 = PSS,
    ) -> x509.CertificateRevocationList:
        """The ARK's CRL, as AMD KDS serves it, revoking `revoked`."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(last_update)
            .next_update(next_update)
        )
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(last_update)
                .build()
            )
        return builder.sign(signer or self.ark_key, hashes.SHA384(), rsa_padding=rsa_padding)


def _ca(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey,
    signer: rsa.RSAPrivateKey,
    path_length: int | None,
) -> x509.Certificate:
    usage = key_usage(key_cert_sign=True, crl_sign=True)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE - timedelta(days=365))
        .not_valid_after(NOT_AFTER + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(usage, critical=True)
        .sign(signer, hashes.SHA384(), rsa_padding=PSS)
    )


def evidence(
    report: bytes,
    leaf: x509.Certificate | None,
    chain: list[x509.Certificate] | None = None,
    signing_key: str = "vcek",
) -> dict[str, object]:
    doc: dict[str, object] = {"report": encode(report), "signing_key": signing_key}
    if leaf is not None:
        doc[signing_key] = encode(leaf.public_bytes(Encoding.DER))
    if chain:
        doc["cert_chain"] = [encode(c.public_bytes(Encoding.DER)) for c in chain]
    return doc
