"""The HCL report: what Azure's paravisor writes to the vTPM's NV index 0x01400001.

All integers are little-endian:

    [0:32]      header: b"HCLA", version, report_size, request_type, status, 12 reserved bytes
    [32:1216]   the hardware report: an SNP ATTESTATION_REPORT (1184 bytes), or a TDREPORT
                (1024 bytes) followed by 160 zero bytes
    [1216:1236] IGVM_REQUEST_DATA: data_size, version, report_type (2 SNP, 4 TDX),
                hash_type (1 SHA-256), variable_data_size
    [1236:...]  the runtime data (a JSON document), exactly variable_data_size bytes, ending
                at the header's report_size
    the rest    zero bytes, to the size of the NV index

The binding the paravisor makes: the hardware report's REPORT_DATA[0:32] is the SHA-256 of
exactly the runtime-data bytes (no header, no padding) and REPORT_DATA[32:64] is zero. None
of the header, the request data or the padding is signed by anything, so `parse` accepts
one layout only and refuses anything beside it (a byte outside the structure could carry
what no signature covers).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from cmcp_azure.plugin import SNP_NAME, TDX_NAME

NV_INDEX: Final = 0x01400001  # the HCL report, refreshed by the paravisor when read
USER_DATA_NV_INDEX: Final = 0x01400002  # up to 64 bytes the next report carries as user-data
USER_DATA_SIZE: Final = 64
MAGIC: Final = b"HCLA"
VERSIONS: Final = frozenset({1, 2})
REQUEST_TYPE: Final = 2  # a hardware report request
HEADER_SIZE: Final = 32
HARDWARE_OFFSET: Final = HEADER_SIZE
HARDWARE_SIZE: Final = 1184  # room for an SNP report; a TDREPORT is zero-padded to it
TDREPORT_SIZE: Final = 1024
REQUEST_DATA_OFFSET: Final = HARDWARE_OFFSET + HARDWARE_SIZE  # 1216
REQUEST_DATA_SIZE: Final = 20
RUNTIME_DATA_OFFSET: Final = REQUEST_DATA_OFFSET + REQUEST_DATA_SIZE  # 1236
IGVM_VERSION: Final = 1
HASH_SHA256: Final = 1
MAX_SIZE: Final = 8192  # larger than any NV index a vTPM offers
REPORT_DATA_SIZE: Final = 64
# Where each hardware report keeps its REPORT_DATA, from the start of that report.
SNP_REPORT_DATA_OFFSET: Final = 0x50
TDREPORT_REPORT_DATA_OFFSET: Final = 128

_HEADER = struct.Struct("<4sIIII12s")
_REQUEST_DATA = struct.Struct("<IIIII")


class HclFormatError(ValueError):
    """The bytes are not an HCL report of the one layout accepted."""


class ReportType(enum.IntEnum):
    SNP = 2
    TDX = 4

    @property
    def hardware_size(self) -> int:
        return HARDWARE_SIZE if self is ReportType.SNP else TDREPORT_SIZE

    @property
    def provider(self) -> str:
        """The cMCP provider of an Azure CVM with this hardware."""
        return SNP_NAME if self is ReportType.SNP else TDX_NAME

    @property
    def report_data_offset(self) -> int:
        if self is ReportType.SNP:
            return SNP_REPORT_DATA_OFFSET
        return TDREPORT_REPORT_DATA_OFFSET


@dataclass(frozen=True, slots=True)
class HclReport:
    version: int
    report_type: ReportType
    hardware_report: bytes  # the SNP report (1184 bytes) or the TDREPORT (1024 bytes)
    runtime_data: bytes  # exactly the bytes whose SHA-256 the hardware report carries

    @property
    def report_data(self) -> bytes:
        """The hardware report's 64-byte REPORT_DATA, as the hardware signed (or MACed) it."""
        start = self.report_type.report_data_offset
        return self.hardware_report[start : start + REPORT_DATA_SIZE]

    @property
    def runtime_data_digest(self) -> bytes:
        return hashlib.sha256(self.runtime_data).digest()

    @property
    def expected_report_data(self) -> bytes:
        """What REPORT_DATA must be for the runtime data to be the hardware's."""
        return self.runtime_data_digest + bytes(REPORT_DATA_SIZE - 32)


def parse(data: bytes) -> HclReport:
    """The HCL report in `data` (the whole NV index, padding included)."""
    if len(data) > MAX_SIZE:
        raise HclFormatError(f"it is {len(data)} bytes, more than the {MAX_SIZE} accepted")
    if len(data) < RUNTIME_DATA_OFFSET:
        raise HclFormatError(
            f"it is {len(data)} bytes, shorter than the {RUNTIME_DATA_OFFSET}-byte fixed part"
        )
    magic, version, report_size, request_type, status, reserved = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise HclFormatError(f"it starts with {magic.hex()}, not {MAGIC.hex()} ('HCLA')")
    if version not in VERSIONS:
        raise HclFormatError(f"header version {version} is not one of {sorted(VERSIONS)}")
    if request_type != REQUEST_TYPE:
        raise HclFormatError(f"request type {request_type} is not {REQUEST_TYPE} (a report)")
    if status != 0:
        raise HclFormatError(f"the paravisor reports status {status:#x}, not success")
    if any(reserved):
        raise HclFormatError("the header's reserved bytes are not zero")
    data_size, igvm_version, report_type, hash_type, variable_size = _REQUEST_DATA.unpack_from(
        data, REQUEST_DATA_OFFSET
    )
    if igvm_version != IGVM_VERSION:
        raise HclFormatError(f"IGVM request data version {igvm_version} is not {IGVM_VERSION}")
    try:
        kind = ReportType(report_type)
    except ValueError:
        raise HclFormatError(f"report type {report_type} is neither SNP (2) nor TDX (4)") from None
    if hash_type != HASH_SHA256:
        raise HclFormatError(
            f"runtime data hash type {hash_type} is not SHA-256 ({HASH_SHA256}), the only one "
            "accepted"
        )
    if data_size != REQUEST_DATA_SIZE + variable_size:
        raise HclFormatError(
            f"IGVM data_size {data_size} is not the {REQUEST_DATA_SIZE}-byte request data "
            f"plus the {variable_size}-byte runtime data"
        )
    end = RUNTIME_DATA_OFFSET + variable_size
    if report_size != end:
        raise HclFormatError(
            f"report_size {report_size} does not end where the runtime data does ({end})"
        )
    if end > len(data):
        raise HclFormatError(f"the runtime data runs past the {len(data)} bytes given")
    if any(data[end:]):
        raise HclFormatError(f"the bytes after report_size ({end}) are not all zero")
    hardware = data[HARDWARE_OFFSET:REQUEST_DATA_OFFSET]
    if any(hardware[kind.hardware_size :]):
        raise HclFormatError("the bytes after the TDREPORT are not all zero")
    return HclReport(
        version=version,
        report_type=kind,
        hardware_report=hardware[: kind.hardware_size],
        runtime_data=data[RUNTIME_DATA_OFFSET:end],
    )


def build(
    report_type: ReportType,
    hardware_report: bytes,
    runtime_data: bytes,
    *,
    version: int = 1,
    size: int = 0,
) -> bytes:
    """An HCL report of that layout, zero-padded to `size` bytes (no padding with 0): what a
    test double of the paravisor writes. It does not make REPORT_DATA fit the runtime data;
    the caller signs a hardware report that carries `sha256(runtime_data)`."""
    if len(hardware_report) != report_type.hardware_size:
        raise ValueError(f"a {report_type.name} report is {report_type.hardware_size} bytes")
    end = RUNTIME_DATA_OFFSET + len(runtime_data)
    header = _HEADER.pack(MAGIC, version, end, REQUEST_TYPE, 0, bytes(12))
    request = _REQUEST_DATA.pack(
        REQUEST_DATA_SIZE + len(runtime_data),
        IGVM_VERSION,
        report_type,
        HASH_SHA256,
        len(runtime_data),
    )
    hardware = hardware_report + bytes(HARDWARE_SIZE - len(hardware_report))
    body = header + hardware + request + runtime_data
    if size and size < len(body):
        raise ValueError(f"the report is {len(body)} bytes, more than size {size}")
    return body + bytes(max(0, size - len(body)))
