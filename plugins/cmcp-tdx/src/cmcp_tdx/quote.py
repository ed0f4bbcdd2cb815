"""The Intel TDX DCAP quote, v4 and v5, as the Intel TDX DCAP Quoting Library API lays it
out (all integers little-endian):

    header (48)   version u16, attestation key type u16, TEE type u32, reserved u16 x 2,
                  QE vendor id (16), user data (20)
    v4: TD quote body (584)
    v5: body type u16 (2 = TD report 1.0, 3 = TD report 1.5), body size u32, body
    signature data length u32, signature data:
        quote signature (64, raw r||s), attestation public key (64, raw x||y),
        certification data type u16 (6 = QE report certification data), size u32:
            QE report (384, an SGX report body), QE report signature (64),
            QE authentication data size u16 + data,
            certification data type u16 (5 = PCK certificate chain, PEM), size u32, data

The quote signature covers the header and the body (for v5 including the body type and
size). Parsing checks every declared length exactly and refuses any other certification
data (types 1-4 carry an encrypted PPID, not a certificate chain, and cannot be verified
offline) and a bare TDREPORT. Bytes after the declared end are counted, never interpreted:
no signature covers them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

HEADER_SIZE: Final = 48
BODY_V4_SIZE: Final = 584  # TD report 1.0
BODY_V5_15_SIZE: Final = 648  # TD report 1.5: + TEE_TCB_SVN2 (16) + MRSERVICETD (48)
BODY_TYPE_TD10: Final = 2
BODY_TYPE_TD15: Final = 3
BODY_SIZES: Final = {BODY_TYPE_TD10: BODY_V4_SIZE, BODY_TYPE_TD15: BODY_V5_15_SIZE}
ATT_KEY_ECDSA_P256: Final = 2
TEE_TYPE_TDX: Final = 0x81
TEE_TYPE_SGX: Final = 0x00
INTEL_QE_VENDOR_ID: Final = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
CERT_QE_REPORT: Final = 6
CERT_PCK_CHAIN: Final = 5
QE_REPORT_SIZE: Final = 384
SIGNATURE_SIZE: Final = 64
KEY_SIZE: Final = 64
TDREPORT_SIZE: Final = 1024
TD_DEBUG: Final = 1  # TDATTRIBUTES bit 0 (TUD.DEBUG)
MR_SIZE: Final = 48

_CERT_TYPE_NAMES: Final = {
    1: "a plain PPID (type 1)",
    2: "an RSA-2048-OAEP encrypted PPID (type 2)",
    3: "an RSA-3072-OAEP encrypted PPID (type 3)",
    4: "a PCK leaf certificate alone (type 4)",
    5: "a PCK certificate chain without a QE report (type 5)",
    7: "platform manifest data (type 7)",
}


class QuoteFormatError(ValueError):
    """The bytes are not a TDX DCAP quote this verifier can judge."""


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    att_key_type: int
    tee_type: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True, slots=True)
class TdBody:
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None  # TD report 1.5 only
    mrservicetd: bytes | None = None  # TD report 1.5 only

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.td_attributes, "little") & TD_DEBUG)


@dataclass(frozen=True, slots=True)
class EnclaveReport:
    """An SGX report body: here the Quoting Enclave's own report."""

    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True, slots=True)
class Quote:
    header: Header
    body_type: int
    body: TdBody
    signed: bytes  # the bytes the attestation key signs
    signature: bytes
    attestation_key: bytes
    qe_report_raw: bytes
    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    trailing: int  # bytes after the declared end, ignored


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.offset, self.what = data, 0, what

    def take(self, size: int, field: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise QuoteFormatError(
                f"the {self.what} ends at byte {len(self.data)}, inside {field} "
                f"(bytes {self.offset}..{end})"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def u16(self, field: str) -> int:
        return int(struct.unpack("<H", self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(struct.unpack("<I", self.take(4, field))[0])

    def rest(self) -> int:
        return len(self.data) - self.offset


def parse_header(data: bytes) -> Header:
    reader = _Reader(data, "quote")
    version = reader.u16("the header")
    att_key_type = reader.u16("the header")
    tee_type = reader.u32("the header")
    reader.take(4, "the header")  # reserved
    return Header(
        version,
        att_key_type,
        tee_type,
        reader.take(16, "the header"),
        reader.take(20, "the header"),
    )


def parse_body(raw: bytes, body_type: int) -> TdBody:
    reader = _Reader(raw, "TD quote body")
    take = reader.take
    tee_tcb_svn, mrseam, mrsignerseam = (
        take(16, "TEE_TCB_SVN"),
        take(48, "MRSEAM"),
        take(48, "MRSIGNERSEAM"),
    )
    seam_attributes, td_attributes, xfam = (
        take(8, "SEAMATTRIBUTES"),
        take(8, "TDATTRIBUTES"),
        take(8, "XFAM"),
    )
    mrtd, mrconfigid, mrowner, mrownerconfig = (
        take(MR_SIZE, name) for name in ("MRTD", "MRCONFIGID", "MROWNER", "MROWNERCONFIG")
    )
    rtmrs = (take(48, "RTMR0"), take(48, "RTMR1"), take(48, "RTMR2"), take(48, "RTMR3"))
    report_data = take(64, "REPORTDATA")
    svn2 = service = None
    if body_type == BODY_TYPE_TD15:
        svn2, service = take(16, "TEE_TCB_SVN2"), take(48, "MRSERVICETD")
    return TdBody(
        tee_tcb_svn=tee_tcb_svn, mrseam=mrseam, mrsignerseam=mrsignerseam,
        seam_attributes=seam_attributes, td_attributes=td_attributes, xfam=xfam, mrtd=mrtd,
        mrconfigid=mrconfigid, mrowner=mrowner, mrownerconfig=mrownerconfig, rtmrs=rtmrs,
        report_data=report_data, tee_tcb_svn2=svn2, mrservicetd=service,
    )  # fmt: skip


def parse_enclave_report(raw: bytes) -> EnclaveReport:
    if len(raw) != QE_REPORT_SIZE:
        raise QuoteFormatError(f"the QE report is {len(raw)} bytes, not {QE_REPORT_SIZE}")
    return EnclaveReport(
        cpu_svn=raw[0:16],
        misc_select=int.from_bytes(raw[16:20], "little"),
        attributes=raw[48:64],
        mr_enclave=raw[64:96],
        mr_signer=raw[128:160],
        isv_prod_id=int.from_bytes(raw[256:258], "little"),
        isv_svn=int.from_bytes(raw[258:260], "little"),
        report_data=raw[320:384],
    )


def _looks_like_tdreport(data: bytes) -> bool:
    # TDREPORT_STRUCT starts with REPORTMACSTRUCT, whose REPORTTYPE.TYPE is 0x81 (TDX).
    return len(data) == TDREPORT_SIZE and data[0] == TEE_TYPE_TDX and data[1] == 0


def parse_quote(data: bytes) -> Quote:
    """The quote's fields; `QuoteFormatError` says what is wrong with the layout. The
    header's meaning (key type, TEE type, vendor) is left to the verifier to judge."""
    if _looks_like_tdreport(data):
        raise QuoteFormatError(
            "this is a bare 1024-byte TDREPORT, not a quote: a TDREPORT is MACed for the "
            "local CPU only and proves nothing elsewhere (the QGS must turn it into a quote)"
        )
    if len(data) < HEADER_SIZE:
        raise QuoteFormatError(f"the quote is {len(data)} bytes, shorter than its 48-byte header")
    header = parse_header(data)
    reader = _Reader(data, "quote")
    reader.take(HEADER_SIZE, "the header")
    if header.version == 4:
        body_type = BODY_TYPE_TD10
        body_size = BODY_V4_SIZE
    elif header.version == 5:
        body_type = reader.u16("the body type")
        body_size = reader.u32("the body size")
        if body_type not in BODY_SIZES:
            kind = "an SGX enclave report" if body_type == 1 else "unknown"
            raise QuoteFormatError(
                f"quote v5 body type {body_type} is {kind}, not a TD report (2 or 3)"
            )
        if body_size != BODY_SIZES[body_type]:
            raise QuoteFormatError(
                f"quote v5 body type {body_type} declares {body_size} bytes, not "
                f"{BODY_SIZES[body_type]}"
            )
    elif header.version == 3:
        raise QuoteFormatError("quote version 3 is an SGX enclave quote, not a TDX quote")
    else:
        raise QuoteFormatError(f"quote version {header.version} is not 4 or 5")
    body = parse_body(reader.take(body_size, "the TD quote body"), body_type)
    signed = data[: reader.offset]
    sig_len = reader.u32("the signature data length")
    if sig_len > reader.rest():
        raise QuoteFormatError(
            f"the signature data declares {sig_len} bytes but only {reader.rest()} follow"
        )
    signature_data = reader.take(sig_len, "the signature data")
    trailing = reader.rest()
    sig = _Reader(signature_data, "signature data")
    signature = sig.take(SIGNATURE_SIZE, "the quote signature")
    key = sig.take(KEY_SIZE, "the attestation key")
    cert_type = sig.u16("the certification data type")
    cert_size = sig.u32("the certification data size")
    if cert_type != CERT_QE_REPORT:
        name = _CERT_TYPE_NAMES.get(cert_type, f"unknown type {cert_type}")
        raise QuoteFormatError(
            f"the certification data is {name}, not QE report certification data (type 6) "
            "with the PCK certificate chain, which offline verification needs"
        )
    if cert_size != sig.rest():
        raise QuoteFormatError(
            f"the certification data declares {cert_size} bytes but {sig.rest()} remain in "
            "the signature data"
        )
    return _with_qe_data(
        sig,
        header=header,
        body_type=body_type,
        body=body,
        signed=signed,
        signature=signature,
        key=key,
        trailing=trailing,
    )


def _with_qe_data(
    sig: _Reader,
    *,
    header: Header,
    body_type: int,
    body: TdBody,
    signed: bytes,
    signature: bytes,
    key: bytes,
    trailing: int,
) -> Quote:
    qe_raw = sig.take(QE_REPORT_SIZE, "the QE report")
    qe_signature = sig.take(SIGNATURE_SIZE, "the QE report signature")
    auth = sig.take(sig.u16("the QE authentication data size"), "the QE authentication data")
    inner_type = sig.u16("the PCK certification data type")
    inner_size = sig.u32("the PCK certification data size")
    if inner_type != CERT_PCK_CHAIN:
        name = _CERT_TYPE_NAMES.get(inner_type, f"unknown type {inner_type}")
        raise QuoteFormatError(
            f"the QE report's certification data is {name}, not a PCK certificate chain (type 5)"
        )
    if inner_size != sig.rest():
        raise QuoteFormatError(
            f"the PCK certificate chain declares {inner_size} bytes but {sig.rest()} remain"
        )
    chain = sig.take(inner_size, "the PCK certificate chain")
    return Quote(
        header=header,
        body_type=body_type,
        body=body,
        signed=signed,
        signature=signature,
        attestation_key=key,
        qe_report_raw=qe_raw,
        qe_report=parse_enclave_report(qe_raw),
        qe_report_signature=qe_signature,
        qe_auth_data=auth,
        pck_chain_pem=chain,
        trailing=trailing,
    )
