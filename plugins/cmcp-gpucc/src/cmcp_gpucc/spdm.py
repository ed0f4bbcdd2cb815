"""The SPDM 1.1 GET_MEASUREMENTS exchange an NVIDIA GPU signs, parsed strictly.

NVML returns the request the driver sent followed by the GPU's response:

    request  (37 bytes): SPDMVersion 0x11, code 0xE0 GET_MEASUREMENTS, Param1 0x01 (signature
             requested), Param2 0xFF (all measurements), 32-byte requester nonce, slot id
    response: SPDMVersion 0x11, code 0x60 MEASUREMENTS, Param1 0, Param2 = the slot id,
             NumberOfBlocks, MeasurementRecordLength (3 bytes LE), the measurement blocks,
             32-byte responder nonce, OpaqueLength (2 bytes LE), opaque data (NVIDIA TLVs,
             `cmcp_gpucc.opaque`), 96-byte ECDSA P-384 signature r || s

The signature covers every byte before it (request || response without the signature).
Anything else is refused with the reason: another SPDM version or code, other request
parameters, a block not in DMTF format or not a 48-byte SHA-384 digest, a repeated block
index, lengths that do not add up, and any byte after the signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

SPDM_VERSION_1_1: Final = 0x11
GET_MEASUREMENTS: Final = 0xE0
MEASUREMENTS: Final = 0x60
REQUEST_SIZE: Final = 37
NONCE_SIZE: Final = 32
SIGNATURE_SIZE: Final = 96  # ECDSA P-384: r || s, 48 bytes each, big-endian
SIGNATURE_REQUESTED: Final = 0x01
ALL_MEASUREMENTS: Final = 0xFF
SLOT: Final = 0  # NVML returns the certificate chain of slot 0
DMTF_SPECIFICATION: Final = 0x01
DIGEST_SIZE: Final = 48  # SHA-384, the hash the RIMs' golden values use
MAX_OPAQUE: Final = 1024  # SPDM 1.1 bounds OpaqueLength
_RESPONSE_HEADER: Final = 8
_RAW_BITSTREAM: Final = 0x80


class SpdmError(ValueError):
    """The bytes are not an SPDM 1.1 GET_MEASUREMENTS exchange of the expected form."""


@dataclass(frozen=True, slots=True)
class MeasurementBlock:
    index: int  # 1..254
    value_type: int  # DMTFSpecMeasurementValueType (bit 7 clear: a digest)
    value: bytes  # a 48-byte SHA-384 digest


@dataclass(frozen=True, slots=True)
class Exchange:
    """A parsed request and response; `signed` and `signature` split the raw bytes."""

    requester_nonce: bytes
    slot: int
    blocks: Mapping[int, MeasurementBlock]  # by SPDM block index
    responder_nonce: bytes
    opaque: bytes
    signed: bytes  # request || response without the signature
    signature: bytes  # r || s

    def digests(self) -> Mapping[int, bytes]:
        """Each block's value by its SPDM index."""
        return MappingProxyType({index: block.value for index, block in self.blocks.items()})


def split_signature(raw: bytes) -> tuple[bytes, bytes]:
    """The signed bytes and the trailing P-384 signature, without parsing: the signature is
    always the last 96 bytes, so it is judged even when the rest does not parse."""
    if len(raw) <= REQUEST_SIZE + SIGNATURE_SIZE:
        raise SpdmError(
            f"the report is {len(raw)} bytes, too short for a {REQUEST_SIZE}-byte request, "
            f"a response and a {SIGNATURE_SIZE}-byte signature"
        )
    return raw[:-SIGNATURE_SIZE], raw[-SIGNATURE_SIZE:]


def _expect(actual: int, expected: int, what: str) -> None:
    if actual != expected:
        raise SpdmError(f"{what} is 0x{actual:02x}, not 0x{expected:02x}")


def _request(raw: bytes) -> tuple[bytes, int]:
    version, code, param1, param2 = raw[0], raw[1], raw[2], raw[3]
    if version != SPDM_VERSION_1_1:
        raise SpdmError(
            f"the request is SPDM version 0x{version:02x}; only SPDM 1.1 (0x11) is known"
        )
    _expect(code, GET_MEASUREMENTS, "the request code (GET_MEASUREMENTS is 0xE0)")
    _expect(param1, SIGNATURE_REQUESTED, "the request's Param1 (a signature requested is 0x01)")
    _expect(param2, ALL_MEASUREMENTS, "the request's Param2 (all measurements is 0xFF)")
    slot = raw[4 + NONCE_SIZE]
    _expect(slot, SLOT, "the request's slot id")
    return raw[4 : 4 + NONCE_SIZE], slot


def _blocks(record: bytes, count: int) -> dict[int, MeasurementBlock]:
    blocks: dict[int, MeasurementBlock] = {}
    at = 0
    for number in range(1, count + 1):
        if len(record) - at < 4:
            raise SpdmError(f"measurement block {number} of {count} is cut short")
        index, specification = record[at], record[at + 1]
        size = int.from_bytes(record[at + 2 : at + 4], "little")
        body = record[at + 4 : at + 4 + size]
        if len(body) != size:
            raise SpdmError(f"measurement block {number} (index {index}) is cut short")
        if index in (0x00, 0xFF):
            raise SpdmError(f"measurement block {number} has the reserved index {index}")
        if index in blocks:
            raise SpdmError(f"measurement index {index} appears twice")
        _expect(specification, DMTF_SPECIFICATION, f"measurement block {index}'s specification")
        if size < 3:
            raise SpdmError(f"measurement block {index} has no DMTF value header")
        value_type = body[0]
        value_size = int.from_bytes(body[1:3], "little")
        if value_size != size - 3:
            raise SpdmError(
                f"measurement block {index} says its value is {value_size} bytes in a "
                f"{size}-byte measurement"
            )
        if value_type & _RAW_BITSTREAM or value_size != DIGEST_SIZE:
            raise SpdmError(
                f"measurement block {index} is not a {DIGEST_SIZE}-byte SHA-384 digest "
                f"(type 0x{value_type:02x}, {value_size} bytes)"
            )
        blocks[index] = MeasurementBlock(index, value_type, body[3:])
        at += 4 + size
    if at != len(record):
        raise SpdmError(
            f"the measurement record is {len(record)} bytes but its {count} blocks take {at}"
        )
    return blocks


def parse(raw: bytes) -> Exchange:
    """The exchange in `raw`; `SpdmError` names the first thing that is not as expected."""
    signed, signature = split_signature(raw)
    requester_nonce, slot = _request(raw[:REQUEST_SIZE])
    response = signed[REQUEST_SIZE:]
    if len(response) < _RESPONSE_HEADER:
        raise SpdmError("the response is shorter than its 8-byte header")
    if response[0] != SPDM_VERSION_1_1:
        raise SpdmError(
            f"the response is SPDM version 0x{response[0]:02x}; only SPDM 1.1 (0x11) is known"
        )
    _expect(response[1], MEASUREMENTS, "the response code (MEASUREMENTS is 0x60)")
    _expect(response[2], 0, "the response's Param1 (reserved when all were requested)")
    _expect(response[3], slot, "the response's slot id (Param2)")
    count = response[4]
    if count == 0:
        raise SpdmError("the response holds no measurement block")
    record_length = int.from_bytes(response[5:8], "little")
    at = _RESPONSE_HEADER + record_length
    if len(response) < at + NONCE_SIZE + 2:
        raise SpdmError(
            f"the response is cut short: a {record_length}-byte measurement record, a nonce "
            "and the opaque length do not fit"
        )
    blocks = _blocks(response[_RESPONSE_HEADER:at], count)
    responder_nonce = response[at : at + NONCE_SIZE]
    at += NONCE_SIZE
    opaque_length = int.from_bytes(response[at : at + 2], "little")
    at += 2
    if opaque_length > MAX_OPAQUE:
        raise SpdmError(f"the opaque data is {opaque_length} bytes, more than SPDM's {MAX_OPAQUE}")
    rest = len(response) - at
    if rest < opaque_length:
        raise SpdmError(f"the {opaque_length}-byte opaque data is cut short")
    if rest > opaque_length:
        raise SpdmError(
            f"the report has {rest - opaque_length} byte(s) more than its lengths account for "
            f"(after the opaque data, or after the {SIGNATURE_SIZE}-byte signature)"
        )
    return Exchange(
        requester_nonce=requester_nonce,
        slot=slot,
        blocks=MappingProxyType(blocks),
        responder_nonce=responder_nonce,
        opaque=response[at:],
        signed=signed,
        signature=signature,
    )
