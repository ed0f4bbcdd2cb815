"""The /dev/tdx_guest ioctl TDX_CMD_GET_REPORT0 (linux/tdx-guest.h), for kernels without
configfs-tsm: the TD's TDREPORT for 64 bytes of REPORTDATA.

    struct tdx_report_req { __u8 reportdata[64]; __u8 tdreport[1024]; };     1088 bytes
    TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct tdx_report_req)

TDREPORT_STRUCT starts with REPORTMACSTRUCT (256 bytes): REPORTTYPE (TYPE u8, 0x81 for TDX;
SUBTYPE; VERSION; reserved), reserved (12), CPUSVN (16), TEE_TCB_INFO_HASH (48),
TEE_INFO_HASH (48), REPORTDATA (64, bytes 128..192), MAC (32), reserved (32). The MAC is
keyed to this CPU, so a TDREPORT proves nothing elsewhere: it only ever leaves the
collector inside a quote from the host's quote generation service (`cmcp_tdx.qgs`).
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cmcp_cli.attestation.api import ProviderError
from cmcp_tdx.settings import SECTION

REPORT_DATA_SIZE: Final = 64
TDREPORT_SIZE: Final = 1024
REPORT_REQ: Final = struct.Struct(f"<{REPORT_DATA_SIZE}s{TDREPORT_SIZE}s")
REPORT_TYPE_TDX: Final = 0x81
REPORTDATA_OFFSET: Final = 128
_IOC_READ_WRITE: Final = 3

# (fd, request, buffer): the kernel reads the buffer and writes its answer back into it.
Ioctl = Callable[[int, int, bytearray], object]


def iowr(kind: str, number: int, size: int) -> int:
    """Linux's _IOWR(kind, number, size) on x86 (2 direction bits, 14 size bits)."""
    return (_IOC_READ_WRITE << 30) | (size << 16) | (ord(kind) << 8) | number


TDX_CMD_GET_REPORT0: Final = iowr("T", 1, REPORT_REQ.size)


def kernel_ioctl(fd: int, request: int, buffer: bytearray) -> None:
    fcntl.ioctl(fd, request, buffer, True)


def get_tdreport(device: Path, report_data: bytes, ioctl: Ioctl = kernel_ioctl) -> bytes:
    """The TDREPORT for `report_data`, checked to be a TDX report that carries it."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"REPORTDATA is {REPORT_DATA_SIZE} bytes, not {len(report_data)}")
    buffer = bytearray(REPORT_REQ.pack(report_data, bytes(TDREPORT_SIZE)))
    fd = _open(device)
    try:
        ioctl(fd, TDX_CMD_GET_REPORT0, buffer)
    except OSError as error:
        raise ProviderError(
            f"TDX_CMD_GET_REPORT0 on {device} failed: {error.strerror or error}",
            hint=f"{device} must be the tdx_guest driver's device (Linux 6.2+), "
            f"or set {SECTION}.device to it",
        ) from None
    finally:
        os.close(fd)
    tdreport = bytes(buffer[REPORT_DATA_SIZE:])
    if len(tdreport) != TDREPORT_SIZE:
        raise ProviderError(f"{device} returned {len(tdreport)} bytes of TDREPORT, not 1024")
    if tdreport[0] != REPORT_TYPE_TDX:
        raise ProviderError(
            f"the report from {device} has REPORTTYPE 0x{tdreport[0]:02x}, not 0x81 (TDX)",
            hint=f"set {SECTION}.device to the TDX guest device, /dev/tdx_guest",
        )
    if tdreport[REPORTDATA_OFFSET : REPORTDATA_OFFSET + REPORT_DATA_SIZE] != report_data:
        raise ProviderError(f"the TDREPORT from {device} does not carry the REPORTDATA written")
    return tdreport


def _open(device: Path) -> int:
    try:
        return os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProviderError(
            f"{device} does not exist: this is not a TDX guest, or its tdx_guest driver "
            "is not loaded",
            hint=f"load the tdx_guest driver (CONFIG_TDX_GUEST_DRIVER), or set {SECTION}.device",
        ) from None
    except PermissionError:
        raise ProviderError(
            f"cannot open {device}: permission denied",
            hint=f"run the gateway as root, or give its user read and write access to {device} "
            "(for example with a udev rule)",
        ) from None
    except OSError as error:
        raise ProviderError(f"cannot open {device}: {error.strerror or error}") from None
