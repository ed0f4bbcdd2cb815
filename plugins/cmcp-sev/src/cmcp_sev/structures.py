"""The SEV-SNP ATTESTATION_REPORT (SEV-SNP Firmware ABI, "ATTESTATION_REPORT Structure"),
parsed strictly, and the GHCB certificate table that comes with an extended report.

Layout, all little-endian, 1184 bytes; the signature covers bytes 0x000..0x29F:

    0x000 VERSION u32            0x004 GUEST_SVN u32       0x008 POLICY u64
    0x010 FAMILY_ID [16]         0x020 IMAGE_ID [16]       0x030 VMPL u32
    0x034 SIGNATURE_ALGO u32     0x038 CURRENT_TCB [8]     0x040 PLATFORM_INFO u64
    0x048 KEY_INFO u32 (bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY)
    0x04C reserved [4]           0x050 REPORT_DATA [64]    0x090 MEASUREMENT [48]
    0x0C0 HOST_DATA [32]         0x0E0 ID_KEY_DIGEST [48]  0x110 AUTHOR_KEY_DIGEST [48]
    0x140 REPORT_ID [32]         0x160 REPORT_ID_MA [32]   0x180 REPORTED_TCB [8]
    0x188 v2: reserved [24];  v3, v4, v5: CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP, reserved [21]
    0x1A0 CHIP_ID [64]           0x1E0 COMMITTED_TCB [8]
    0x1E8 CURRENT build, minor, major, reserved   0x1EC COMMITTED build, minor, major, reserved
    0x1F0 LAUNCH_TCB [8]
    0x1F8 v2..v4: reserved [168];  v5: LAUNCH_MIT_VECTOR u64, CURRENT_MIT_VECTOR u64, reserved [152]
    0x2A0 SIGNATURE: R [72], S [72] (little-endian integers), reserved [368]

Version 4 has version 3's layout. Every reserved byte must be zero, including the
signature's unused tail, which the signature does not cover: a report that is not exactly
what the firmware writes is refused rather than interpreted.

A TCB_VERSION is 8 bytes whose layout depends on the processor: Milan and Genoa put the
boot loader, TEE, SNP and microcode SPLs in bytes 0, 1, 6 and 7; Turin puts FMC, boot
loader, TEE and SNP in bytes 0..3 and microcode in byte 7. `Tcb.decode` takes the product.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass
from typing import Final

REPORT_SIZE: Final = 0x4A0
SIGNED_SIZE: Final = 0x2A0
SUPPORTED_VERSIONS: Final = (2, 3, 4, 5)
SIG_ALGO_ECDSA_P384_SHA384: Final = 1
ECDSA_COMPONENT_SIZE: Final = 72  # each of R and S, little-endian, zero-extended
P384_SIZE: Final = 48

# Guest policy bits (ABI "GUEST_POLICY Structure").
POLICY_SMT: Final = 1 << 16
POLICY_RESERVED_ONE: Final = 1 << 17  # reserved, must be one
POLICY_MIGRATE_MA: Final = 1 << 18
POLICY_DEBUG: Final = 1 << 19
POLICY_SINGLE_SOCKET: Final = 1 << 20
POLICY_CXL_ALLOW: Final = 1 << 21
POLICY_MEM_AES_256_XTS: Final = 1 << 22
POLICY_RAPL_DIS: Final = 1 << 23
POLICY_CIPHERTEXT_HIDING: Final = 1 << 24
POLICY_PAGE_SWAP_DISABLE: Final = 1 << 25
POLICY_KNOWN_BITS: Final = (1 << 26) - 1
POLICY_FLAG_NAMES: Final = {
    POLICY_SMT: "SMT", POLICY_MIGRATE_MA: "MIGRATE_MA", POLICY_DEBUG: "DEBUG",
    POLICY_SINGLE_SOCKET: "SINGLE_SOCKET", POLICY_CXL_ALLOW: "CXL_ALLOW",
    POLICY_MEM_AES_256_XTS: "MEM_AES_256_XTS", POLICY_RAPL_DIS: "RAPL_DIS",
    POLICY_CIPHERTEXT_HIDING: "CIPHERTEXT_HIDING", POLICY_PAGE_SWAP_DISABLE: "PAGE_SWAP_DISABLE",
}  # fmt: skip

KEY_INFO_AUTHOR_KEY_EN: Final = 1 << 0
KEY_INFO_MASK_CHIP_KEY: Final = 1 << 1
KEY_INFO_KNOWN_BITS: Final = 0b11111


class SigningKey(enum.IntEnum):
    VCEK = 0
    VLEK = 1
    NONE = 7  # MASK_CHIP_KEY: the report is unsigned


class Product(enum.StrEnum):
    """The EPYC generations whose roots are pinned; the value is AMD KDS's product name."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


class ReportFormatError(ValueError):
    """The bytes are not an attestation report this verifier accepts; the message says why."""


def product_from_cpuid(family: int, model: int) -> Product | None:
    """The product of a CPUID family/model pair (AMD's Fn0000_0001_EAX), None if unknown."""
    if family == 0x19 and model <= 0x0F:
        return Product.MILAN
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return Product.GENOA
    if family == 0x1A and model <= 0x11:
        return Product.TURIN
    return None


@dataclass(frozen=True, slots=True)
class TcbParts:
    """The security patch levels of one TCB_VERSION; `fmc` only on Turin."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def describe(self) -> str:
        fmc = f"fmc={self.fmc} " if self.fmc is not None else ""
        return f"{fmc}bl={self.bootloader} tee={self.tee} snp={self.snp} ucode={self.microcode}"


@dataclass(frozen=True, slots=True)
class Tcb:
    raw: bytes  # 8 bytes, as in the report

    def decode(self, product: Product) -> TcbParts:
        """The SPLs in `product`'s layout; `ReportFormatError` when a byte that layout
        reserves is not zero (the TCB then belongs to another layout)."""
        b = self.raw
        if product is Product.TURIN:
            reserved, parts = b[4:7], TcbParts(b[1], b[2], b[3], b[7], fmc=b[0])
        else:
            reserved, parts = b[2:6], TcbParts(b[0], b[1], b[6], b[7])
        if any(reserved):
            raise ReportFormatError(
                f"TCB {b.hex()} has non-zero bytes that the {product.value} layout reserves"
            )
        return parts


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


@dataclass(frozen=True, slots=True)
class Report:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: Tcb
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: Tcb
    cpuid: tuple[int, int, int] | None  # family, model, stepping (v3 and later)
    chip_id: bytes
    committed_tcb: Tcb
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: Tcb
    mit_vectors: tuple[int, int] | None  # launch, current (v5)
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signing_key(self) -> int:
        return (self.key_info >> 2) & 0b111

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def abi(self) -> tuple[int, int]:
        """The minimum firmware ABI (major, minor) the guest policy requires."""
        return (self.policy >> 8) & 0xFF, self.policy & 0xFF

    @property
    def policy_flags(self) -> tuple[str, ...]:
        return tuple(name for bit, name in POLICY_FLAG_NAMES.items() if self.policy & bit)

    @property
    def cpuid_product(self) -> Product | None:
        return None if self.cpuid is None else product_from_cpuid(*self.cpuid[:2])


def _zero(data: bytes, start: int, end: int, what: str) -> None:
    nonzero = [offset for offset in range(start, end) if data[offset]]
    if nonzero:
        raise ReportFormatError(
            f"{what} (0x{start:03X}..0x{end - 1:03X}) must be zero but byte 0x{nonzero[0]:03X} "
            f"is 0x{data[nonzero[0]]:02x}"
        )


def _version(data: bytes, offset: int) -> FirmwareVersion:
    build, minor, major = data[offset], data[offset + 1], data[offset + 2]
    return FirmwareVersion(major, minor, build)


def parse_report(data: bytes) -> Report:
    """The report, or `ReportFormatError` naming the first way the bytes are not one."""
    if len(data) != REPORT_SIZE:
        raise ReportFormatError(
            f"an attestation report is {REPORT_SIZE} bytes, these are {len(data)}"
        )
    version, guest_svn, policy = struct.unpack_from("<IIQ", data, 0x000)
    if version not in SUPPORTED_VERSIONS:
        raise ReportFormatError(
            f"report version {version} is not one this verifier knows "
            f"({', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    vmpl, signature_algo = struct.unpack_from("<II", data, 0x030)
    (platform_info,) = struct.unpack_from("<Q", data, 0x040)
    (key_info,) = struct.unpack_from("<I", data, 0x048)
    if signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise ReportFormatError(
            f"SIGNATURE_ALGO is {signature_algo}, not 1 (ECDSA P-384 with SHA-384)"
        )
    if vmpl > 3:
        raise ReportFormatError(f"VMPL is {vmpl}, beyond the four levels 0..3")
    if not policy & POLICY_RESERVED_ONE:
        raise ReportFormatError("guest policy bit 17 is reserved and must be one, but is zero")
    if policy & ~POLICY_KNOWN_BITS:
        raise ReportFormatError(
            f"guest policy 0x{policy:x} sets bits above 25 that this verifier does not know"
        )
    if key_info & ~KEY_INFO_KNOWN_BITS:
        raise ReportFormatError(f"KEY_INFO 0x{key_info:08x} sets reserved bits 31:5")
    _zero(data, 0x04C, 0x050, "the reserved word after KEY_INFO")
    cpuid: tuple[int, int, int] | None = None
    if version == 2:
        _zero(data, 0x188, 0x1A0, "the reserved bytes after REPORTED_TCB")
    else:
        cpuid = (data[0x188], data[0x189], data[0x18A])
        _zero(data, 0x18B, 0x1A0, "the reserved bytes after CPUID_STEP")
    _zero(data, 0x1EB, 0x1EC, "the reserved byte after CURRENT_MAJOR")
    _zero(data, 0x1EF, 0x1F0, "the reserved byte after COMMITTED_MAJOR")
    mit_vectors: tuple[int, int] | None = None
    if version == 5:
        launch_mit, current_mit = struct.unpack_from("<QQ", data, 0x1F8)
        mit_vectors = (launch_mit, current_mit)
        _zero(data, 0x208, SIGNED_SIZE, "the reserved bytes after CURRENT_MIT_VECTOR")
    else:
        _zero(data, 0x1F8, SIGNED_SIZE, "the reserved bytes after LAUNCH_TCB")
    r_bytes = data[0x2A0 : 0x2A0 + ECDSA_COMPONENT_SIZE]
    s_bytes = data[0x2E8 : 0x2E8 + ECDSA_COMPONENT_SIZE]
    _zero(data, 0x2A0 + P384_SIZE, 0x2E8, "the high bytes of signature R beyond P-384")
    _zero(data, 0x2E8 + P384_SIZE, 0x330, "the high bytes of signature S beyond P-384")
    _zero(data, 0x330, REPORT_SIZE, "the reserved tail of the signature")
    return Report(
        raw=bytes(data),
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=data[0x010:0x020],
        image_id=data[0x020:0x030],
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=Tcb(data[0x038:0x040]),
        platform_info=platform_info,
        key_info=key_info,
        report_data=data[0x050:0x090],
        measurement=data[0x090:0x0C0],
        host_data=data[0x0C0:0x0E0],
        id_key_digest=data[0x0E0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=Tcb(data[0x180:0x188]),
        cpuid=cpuid,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=Tcb(data[0x1E0:0x1E8]),
        current_version=_version(data, 0x1E8),
        committed_version=_version(data, 0x1EC),
        launch_tcb=Tcb(data[0x1F0:0x1F8]),
        mit_vectors=mit_vectors,
        signature_r=int.from_bytes(r_bytes, "little"),
        signature_s=int.from_bytes(s_bytes, "little"),
    )


# The GHCB specification's certificate table (extended guest request, and configfs-tsm's
# auxblob for sev_guest): entries of GUID (16 bytes), offset (u32), length (u32), ended by
# an all-zero entry; offsets count from the start of the table.
GUID_ARK: Final = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
GUID_ASK: Final = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_VCEK: Final = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK: Final = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
CERT_NAMES: Final = {GUID_ARK: "ark", GUID_ASK: "ask", GUID_VCEK: "vcek", GUID_VLEK: "vlek"}
_ENTRY: Final = struct.Struct("<16sII")
_MAX_ENTRIES: Final = 64


def _guid(raw: bytes) -> uuid.UUID | None:
    """The known GUID of an entry. Hosts write GUIDs in RFC 4122 byte order (the kernel and
    virtee do); the mixed-endian EFI order is accepted too, since the table only locates
    certificates that the verifier then checks on their own."""
    for guid in CERT_NAMES:
        if raw in (guid.bytes, guid.bytes_le):
            return guid
    return None


def parse_cert_table(table: bytes) -> dict[str, bytes]:
    """The certificates of a GHCB certificate table by role (vcek, vlek, ask, ark); entries
    of other GUIDs are ignored. `ReportFormatError` when the table is malformed."""
    found: dict[str, bytes] = {}
    for index in range(_MAX_ENTRIES):
        start = index * _ENTRY.size
        if start + _ENTRY.size > len(table):
            raise ReportFormatError("the certificate table ends without its all-zero entry")
        raw_guid, offset, length = _ENTRY.unpack_from(table, start)
        if raw_guid == bytes(16) and offset == 0 and length == 0:
            return found
        if offset + length > len(table) or length == 0:
            raise ReportFormatError(
                f"certificate table entry {index} points outside the table "
                f"(offset {offset}, length {length}, table {len(table)} bytes)"
            )
        guid = _guid(raw_guid)
        if guid is None:
            continue
        name = CERT_NAMES[guid]
        if name in found:
            raise ReportFormatError(f"the certificate table holds two {name.upper()} entries")
        found[name] = table[offset : offset + length]
    raise ReportFormatError(f"the certificate table has more than {_MAX_ENTRIES} entries")


def build_cert_table(certs: dict[uuid.UUID, bytes]) -> bytes:
    """A certificate table holding `certs` (what a host writes; used by tests and fakes)."""
    header = _ENTRY.size * (len(certs) + 1)
    entries, blobs, offset = b"", b"", header
    for guid, blob in certs.items():
        entries += _ENTRY.pack(guid.bytes, offset, len(blob))
        blobs += blob
        offset += len(blob)
    return entries + _ENTRY.pack(bytes(16), 0, 0) + blobs
