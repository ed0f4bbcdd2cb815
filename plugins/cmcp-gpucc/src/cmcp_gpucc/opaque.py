"""The opaque data of an NVIDIA GPU's MEASUREMENTS response: NVIDIA's TLVs (u16 type,
u16 length, little-endian), signed with the rest of the response.

The verifier reads these fields; the others are kept as they are:

    3   driver version, NUL-padded ASCII ("550.90.07")
    6   VBIOS version, 8 bytes b0..b7 shown as b3.b2.b1.b0.b4 in uppercase hex
    11  NVDEC0 status: 0xAA enabled, 0x55 disabled (RIM index 35 is then not compared)
    20  FWID: the SHA-384 firmware digest the device certificate also states
    34  opaque-data version (u16)
    36  feature flag: the GPU's mode (0 MPT, 1 SPT, 2 PPCIE, as NVIDIA numbers them)

A field that appears twice, a field whose length runs past the data, a driver or VBIOS
version missing or malformed, and an NVDEC0 status other than the two known values are
refused: each is a signed statement the appraisal depends on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

DRIVER_VERSION: Final = 3
VBIOS_VERSION: Final = 6
NVDEC0_STATUS: Final = 11
FWID: Final = 20
OPAQUE_DATA_VERSION: Final = 34
FEATURE_FLAG: Final = 36
NVDEC0_ENABLED: Final = 0xAA
NVDEC0_DISABLED: Final = 0x55
FWID_SIZE: Final = 48
# NVIDIA's names for the GPU modes of the feature flag (what NVAT reports as `mode`).
MODES: Final = {0: "mpt", 1: "spt", 2: "ppcie"}


class OpaqueError(ValueError):
    """The opaque data is not NVIDIA's TLVs in the expected form."""


@dataclass(frozen=True, slots=True)
class OpaqueData:
    fields: Mapping[int, bytes]  # every TLV by type, in the order they came
    driver_version: str
    vbios_version: str  # "96.00.9F.00.01"
    nvdec0_enabled: bool | None  # None: the report states no NVDEC0 status
    fwid: bytes | None
    opaque_version: int | None
    mode: str | None  # from the feature flag; None when the report states none

    def describe_mode(self) -> str:
        return f"mode {self.mode}" if self.mode is not None else "no mode stated"


def fields_of(data: bytes) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    at = 0
    while at < len(data):
        if len(data) - at < 4:
            raise OpaqueError(f"{len(data) - at} stray byte(s) end the opaque data")
        kind = int.from_bytes(data[at : at + 2], "little")
        length = int.from_bytes(data[at + 2 : at + 4], "little")
        value = data[at + 4 : at + 4 + length]
        if len(value) != length:
            raise OpaqueError(f"opaque field {kind} says {length} bytes but {len(value)} remain")
        if kind in fields:
            raise OpaqueError(f"opaque field {kind} appears twice")
        fields[kind] = value
        at += 4 + length
    return fields


def driver_version(value: bytes) -> str:
    text = value.rstrip(b"\x00")
    if not text or not all(0x21 <= byte <= 0x7E for byte in text):
        raise OpaqueError(
            f"the driver version field ({value.hex()}) is not printable ASCII padded with NULs"
        )
    return text.decode("ascii")


def vbios_version(value: bytes) -> str:
    if len(value) != 8:
        raise OpaqueError(f"the VBIOS version field is {len(value)} bytes, not 8")
    return ".".join(f"{value[i]:02X}" for i in (3, 2, 1, 0, 4))


def _uint(value: bytes, kind: int, limit: int) -> int:
    if not 0 < len(value) <= limit:
        raise OpaqueError(f"opaque field {kind} is {len(value)} bytes, not 1 to {limit}")
    return int.from_bytes(value, "little")


def parse(data: bytes) -> OpaqueData:
    fields = fields_of(data)
    for kind, name in ((DRIVER_VERSION, "driver version"), (VBIOS_VERSION, "VBIOS version")):
        if kind not in fields:
            raise OpaqueError(f"the opaque data states no {name} (field {kind})")
    nvdec0: bool | None = None
    if NVDEC0_STATUS in fields:
        status = fields[NVDEC0_STATUS]
        if status not in (bytes([NVDEC0_ENABLED]), bytes([NVDEC0_DISABLED])):
            raise OpaqueError(
                f"the NVDEC0 status is {status.hex() or 'empty'}, neither aa (enabled) "
                "nor 55 (disabled)"
            )
        nvdec0 = status[0] == NVDEC0_ENABLED
    fwid = fields.get(FWID)
    if fwid is not None and len(fwid) != FWID_SIZE:
        raise OpaqueError(f"the FWID is {len(fwid)} bytes, not a {FWID_SIZE}-byte SHA-384")
    version = (
        _uint(fields[OPAQUE_DATA_VERSION], OPAQUE_DATA_VERSION, 2)
        if OPAQUE_DATA_VERSION in fields
        else None
    )
    mode: str | None = None
    if FEATURE_FLAG in fields:
        flag = _uint(fields[FEATURE_FLAG], FEATURE_FLAG, 8)
        mode = MODES.get(flag, f"unknown ({flag})")
    return OpaqueData(
        fields=MappingProxyType(fields),
        driver_version=driver_version(fields[DRIVER_VERSION]),
        vbios_version=vbios_version(fields[VBIOS_VERSION]),
        nvdec0_enabled=nvdec0,
        fwid=fwid,
        opaque_version=version,
        mode=mode,
    )
