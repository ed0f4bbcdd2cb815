"""The /dev/sev-guest ioctls SNP_GET_EXT_REPORT and SNP_GET_REPORT (linux/sev-guest.h),
for kernels without configfs-tsm.

    struct snp_report_req { __u8 user_data[64]; __u32 vmpl; __u8 rsvd[28]; };      96 bytes
    struct snp_ext_report_req { struct snp_report_req data; __u64 certs_address;
                                __u32 certs_len; };                    112 bytes (aligned 8)
    struct snp_report_resp { __u8 data[4000]; };  MSG_REPORT_RSP: status u32,
                                report_size u32, reserved[24], then the report
    struct snp_guest_request_ioctl { __u8 msg_version; __u64 req_data; __u64 resp_data;
                                     __u64 exitinfo2 (fw_error u32, vmm_error u32); } 32 bytes
    SNP_GET_REPORT     = _IOWR('S', 0x0, struct snp_guest_request_ioctl)
    SNP_GET_EXT_REPORT = _IOWR('S', 0x2, struct snp_guest_request_ioctl)

When the host's certificate table does not fit, the kernel fails the extended request with
vmm_error SNP_GUEST_VMM_ERR_INVALID_LEN and writes the size it needs into certs_len; the
request is retried once with that size.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cmcp_sev.structures import REPORT_SIZE

REPORT_REQ: Final = struct.Struct("<64sI28x")
EXT_REPORT_REQ: Final = struct.Struct("<96sQI4x")
GUEST_REQUEST: Final = struct.Struct("<B7xQQQ")
RESPONSE_SIZE: Final = 4000
RESPONSE_HEADER: Final = struct.Struct("<II24x")
_IOC_READ_WRITE: Final = 3


def iowr(number: int, size: int) -> int:
    return (_IOC_READ_WRITE << 30) | (size << 16) | (ord("S") << 8) | number


SNP_GET_REPORT: Final = iowr(0x0, GUEST_REQUEST.size)
SNP_GET_EXT_REPORT: Final = iowr(0x2, GUEST_REQUEST.size)
MSG_VERSION: Final = 1
VMM_ERR_INVALID_LEN: Final = 1
PAGE: Final = 4096
FIRST_CERTS_LEN: Final = 4 * PAGE
MAX_CERTS_LEN: Final = 64 * PAGE


class GuestIoctlError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class IoctlReport:
    report: bytes
    cert_table: bytes | None  # None when the plain SNP_GET_REPORT was used


def pack_report_req(report_data: bytes, vmpl: int) -> bytes:
    if len(report_data) != 64:
        raise ValueError("report_data is 64 bytes")
    return REPORT_REQ.pack(report_data, vmpl)


def pack_ext_report_req(report_data: bytes, vmpl: int, certs_address: int, certs_len: int) -> bytes:
    return EXT_REPORT_REQ.pack(pack_report_req(report_data, vmpl), certs_address, certs_len)


def pack_guest_request(req_address: int, resp_address: int) -> bytes:
    return GUEST_REQUEST.pack(MSG_VERSION, req_address, resp_address, 0)


def unpack_response(response: bytes) -> bytes:
    """The report of a MSG_REPORT_RSP, or `GuestIoctlError` with the firmware's status."""
    status, size = RESPONSE_HEADER.unpack_from(response)
    if status != 0:
        raise GuestIoctlError(f"the firmware refused the report request (status 0x{status:x})")
    if size != REPORT_SIZE:
        raise GuestIoctlError(f"the firmware returned a {size}-byte report, not {REPORT_SIZE}")
    return bytes(response[RESPONSE_HEADER.size : RESPONSE_HEADER.size + size])


def _errors(exitinfo2: int) -> tuple[int, int]:
    return exitinfo2 & 0xFFFFFFFF, exitinfo2 >> 32


def _call(
    fd: int, request: int, req: ctypes.Array[ctypes.c_char]
) -> tuple[bytes, int, OSError | None]:
    response = ctypes.create_string_buffer(RESPONSE_SIZE)
    guest = bytearray(pack_guest_request(ctypes.addressof(req), ctypes.addressof(response)))
    try:
        fcntl.ioctl(fd, request, guest, True)
    except OSError as error:
        return b"", GUEST_REQUEST.unpack(bytes(guest))[3], error
    return response.raw, GUEST_REQUEST.unpack(bytes(guest))[3], None


def get_report(
    device: Path, report_data: bytes, vmpl: int, *, extended: bool = True
) -> IoctlReport:
    """A report from /dev/sev-guest, with the host's certificate table when it has one."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        raise GuestIoctlError(f"cannot open {device}: {error.strerror}") from None
    try:
        if extended:
            certs_len = FIRST_CERTS_LEN
            for _ in range(2):
                certs = ctypes.create_string_buffer(certs_len)
                req = ctypes.create_string_buffer(
                    pack_ext_report_req(report_data, vmpl, ctypes.addressof(certs), certs_len),
                    EXT_REPORT_REQ.size,
                )
                response, exitinfo2, failure = _call(fd, SNP_GET_EXT_REPORT, req)
                if failure is None:
                    return IoctlReport(unpack_response(response), certs.raw)
                _, vmm_error = _errors(exitinfo2)
                if vmm_error == VMM_ERR_INVALID_LEN:
                    wanted = EXT_REPORT_REQ.unpack(req.raw)[2]
                    if not certs_len < wanted <= MAX_CERTS_LEN:
                        raise GuestIoctlError(f"the host's certificate table needs {wanted} bytes")
                    certs_len = wanted
                    continue
                if failure.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    raise GuestIoctlError(_describe("SNP_GET_EXT_REPORT", failure, exitinfo2))
                break  # no extended requests here: ask for the bare report
        req = ctypes.create_string_buffer(pack_report_req(report_data, vmpl), REPORT_REQ.size)
        response, exitinfo2, failure = _call(fd, SNP_GET_REPORT, req)
        if failure is not None:
            raise GuestIoctlError(_describe("SNP_GET_REPORT", failure, exitinfo2))
        return IoctlReport(unpack_response(response), None)
    finally:
        os.close(fd)


def _describe(name: str, error: OSError, exitinfo2: int) -> str:
    fw_error, vmm_error = _errors(exitinfo2)
    return (
        f"{name} failed: {error.strerror} (firmware error 0x{fw_error:x}, "
        f"hypervisor error 0x{vmm_error:x})"
    )
