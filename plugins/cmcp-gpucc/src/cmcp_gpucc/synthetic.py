"""Synthetic GPU evidence for tests: a device chain shaped like NVIDIA's under a test root
(root -> "NVIDIA <chip> Identity" -> provisioner ICA -> BROM -> FMC leaf, ECDSA P-384 with
SHA-384, the leaf stating its FWID and device name as NVIDIA's do) and SPDM 1.1 measurement
exchanges signed by the leaf over a chosen nonce, so the paths no public vector reaches (a
report bound to our binding, one whose RIMs match) are exercised with real signatures.
Synthetic RIMs and OCSP responses come from `cmcp_gpucc.rim_signing`. Nothing here is used
by the collector or the verifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from cmcp_cli.attestation.toolkit import key_usage
from cmcp_gpucc import opaque, spdm
from cmcp_gpucc.evidence import encode
from cmcp_gpucc.rim_signing import NOT_AFTER, NOT_BEFORE, Issued, issue

BLOCKS: Final = 64
DRIVER: Final = "550.90.07"
VBIOS: Final = bytes.fromhex("009f009601000000")  # 96.00.9F.00.01
VBIOS_TEXT: Final = "96.00.9F.00.01"
# The RIM indices NVIDIA's GH100 RIMs list as active (MANIFEST.md of the vectors).
DRIVER_INDICES: Final = (7, *range(21, 41))
VBIOS_INDICES: Final = (*range(7), *range(8, 13))
_SHA384_OID: Final = bytes.fromhex("0609608648016503040202")
_NVIDIA_SAN: Final = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.1")


def block_values(seed: str = "gpu") -> dict[int, bytes]:
    """64 distinct SHA-384 measurement values by SPDM block index."""
    return {i: hashlib.sha384(f"{seed} block {i}".encode()).digest() for i in range(1, 65)}


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def tcb_info(fwid: bytes) -> bytes:
    """A DICE TcbInfo with one SHA-384 FWID, as a Blackwell leaf states it."""
    fwids = _der(0x30, _SHA384_OID + _der(0x04, fwid))
    return _der(0x30, _der(0x80, b"NVIDIA") + _der(0xA6, fwids))


def _leaf(
    issuer: Issued,
    key: ec.EllipticCurvePrivateKey,
    chip: str,
    fwid: bytes,
    not_after: datetime,
) -> x509.Certificate:
    san = x509.OtherName(_NVIDIA_SAN, _der(0x0C, f"NVIDIA:{chip}:0123456789ABCDEF".encode()))
    usage = key_usage(digital_signature=True)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{chip} A01 GSP FMC LF"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cMCP test PKI"),
                ]
            )
        )
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(not_after)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1.1"), tcb_info(fwid)),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA384())
    )


@dataclass(frozen=True)
class DevicePki:
    """A test Device Identity root and a GPU's chain under it, named as NVIDIA names them."""

    chip: str
    root: Issued
    identity: Issued
    provisioner: Issued
    brom: Issued
    leaf: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    fwid: bytes

    @classmethod
    def create(
        cls,
        chip: str = "GH100",
        *,
        leaf_not_after: datetime = NOT_AFTER,
        fwid: bytes | None = None,
        curve: ec.EllipticCurve | None = None,
    ) -> DevicePki:
        """The chain for `chip`; `curve` gives the leaf another key than P-384 (NVIDIA's)."""
        root = issue("cMCP Test Device Identity CA", None, ca=True)
        identity = issue(f"NVIDIA {chip} Identity", root, ca=True)
        provisioner = issue(f"NVIDIA {chip} Provisioner ICA 1", identity, ca=True)
        brom = issue(f"{chip} A01 GSP BROM", provisioner, ca=True)
        key = ec.generate_private_key(curve or ec.SECP384R1())
        fwid = fwid or hashlib.sha384(b"test GSP firmware").digest()
        leaf = _leaf(brom, key, chip, fwid, leaf_not_after)
        return cls(chip, root, identity, provisioner, brom, leaf, key, fwid)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """Leaf first, ending with the root, as NVML returns a GPU's chain."""
        return (
            self.leaf,
            self.brom.cert,
            self.provisioner.cert,
            self.identity.cert,
            self.root.cert,
        )

    @property
    def ocsp_pairs(self) -> list[tuple[x509.Certificate, Issued]]:
        """The certificates NVIDIA's OCSP service covers, each with its issuer."""
        return [
            (self.brom.cert, self.provisioner),
            (self.provisioner.cert, self.identity),
            (self.identity.cert, self.root),
        ]

    def root_pem(self) -> bytes:
        return self.root.cert.public_bytes(Encoding.PEM)


@dataclass
class ReportFields:
    blocks: Mapping[int, bytes] = field(default_factory=block_values)
    driver: str = DRIVER
    vbios: bytes = VBIOS
    nvdec0: int = opaque.NVDEC0_DISABLED
    fwid: bytes | None = None  # None: the PKI's FWID
    mode: int | None = 2  # PPCIE
    responder_nonce: bytes = bytes(range(100, 132))


def _tlv(kind: int, value: bytes) -> bytes:
    return kind.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


def opaque_data(f: ReportFields, fwid: bytes) -> bytes:
    data = _tlv(opaque.VBIOS_VERSION, f.vbios) + _tlv(
        opaque.DRIVER_VERSION, f.driver.encode() + b"\0"
    )
    data += _tlv(opaque.NVDEC0_STATUS, bytes([f.nvdec0])) + _tlv(opaque.FWID, fwid)
    if f.mode is not None:
        data += _tlv(opaque.OPAQUE_DATA_VERSION, (1).to_bytes(2, "little"))
        data += _tlv(opaque.FEATURE_FLAG, f.mode.to_bytes(2, "little"))
    return data


def unsigned_report(nonce: bytes, f: ReportFields, fwid: bytes) -> bytes:
    """The request and response without the signature, as a GPU lays them out."""
    request = bytes([spdm.SPDM_VERSION_1_1, spdm.GET_MEASUREMENTS, 0x01, 0xFF]) + nonce + b"\0"
    record = b"".join(
        bytes([index, spdm.DMTF_SPECIFICATION])
        + (3 + len(value)).to_bytes(2, "little")
        + bytes([0x01])
        + len(value).to_bytes(2, "little")
        + value
        for index, value in sorted(f.blocks.items())
    )
    data = opaque_data(f, fwid)
    response = (
        bytes([spdm.SPDM_VERSION_1_1, spdm.MEASUREMENTS, 0, 0, len(f.blocks)])
        + len(record).to_bytes(3, "little")
        + record
        + f.responder_nonce
        + len(data).to_bytes(2, "little")
        + data
    )
    return request + response


def sign(body: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA384())))
    return body + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def report(pki: DevicePki, nonce: bytes, fields: ReportFields | None = None) -> bytes:
    """A measurement exchange over `nonce`, signed by the PKI's leaf key."""
    f = fields or ReportFields()
    return sign(unsigned_report(nonce, f, f.fwid or pki.fwid), pki.key)


def nvml(**changes: Any) -> dict[str, Any]:
    """What NVML says about the synthetic GPU, with `changes`."""
    said: dict[str, Any] = {
        "driver_version": DRIVER,
        "vbios_version": VBIOS_TEXT,
        "cc_mode": "on",
    }
    return {**said, **changes}


def nvml_of(report: bytes, **changes: Any) -> dict[str, Any]:
    """What NVML says about the GPU that made `report`: the versions it signed."""
    data = opaque.parse(spdm.parse(report).opaque)
    signed = {"driver_version": data.driver_version, "vbios_version": data.vbios_version}
    return nvml(**{**signed, **changes})


def evidence(
    report: bytes,
    chain: Sequence[x509.Certificate],
    *,
    nvml_said: Mapping[str, Any] | None = None,
    rims: Mapping[str, bytes] | None = None,
    ocsp: Sequence[bytes] = (),
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "report": encode(report),
        "certificates": [encode(c.public_bytes(Encoding.DER)) for c in chain],
        "nvml": dict(nvml_said if nvml_said is not None else nvml()),
    }
    if rims:
        doc["rims"] = {kind: encode(xml) for kind, xml in rims.items()}
    if ocsp:
        doc["ocsp"] = [encode(response) for response in ocsp]
    return doc
