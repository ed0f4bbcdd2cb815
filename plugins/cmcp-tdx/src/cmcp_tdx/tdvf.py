"""MRTD from a TDVF (OVMF built for TDX) image, as the TDX module measures the TD's
initial memory.

The image's TDX metadata is found through the OVMF GUIDed table at the end of the
reset-vector region: 32 bytes before the image's end sits the table footer GUID
96b582de-1fb2-45f7-baea-a366c55a082d, preceded by the table's length (u16); entries, read
backwards, are `data, length u16, GUID`. The entry with GUID
e47a6535-984a-4798-865e-4685a7bf8ec2 holds (in its last 4 bytes) the metadata's offset
from the image's end. The metadata ("TDVF", length, version 1, section count) lists
sections of 32 bytes: data offset u32, raw size u32, GPA u64, memory size u64, type u32,
attributes u32 (bit 0 MR.EXTEND, bit 1 PAGE.AUG).

The VMM adds every 4 KiB page of every section that is not PAGE.AUG with TDH.MEM.PAGE.ADD,
which extends MRTD by a 128-byte buffer "MEM.PAGE.ADD" || GPA (u64 at offset 16); for
MR.EXTEND sections TDH.MR.EXTEND then extends, per 256-byte chunk, a 128-byte buffer
"MR.EXTEND" || GPA followed by the chunk. MRTD is the SHA-384 of all those buffers in
order. Linux KVM adds and extends page by page ("single"); some older VMM/kernel stacks
added all of a section's pages before extending them ("two-pass").
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from typing import Final, Literal

PAGE: Final = 0x1000
CHUNK: Final = 0x100
MR_EXTEND: Final = 1
PAGE_AUG: Final = 2
FOOTER_GUID: Final = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
METADATA_GUID: Final = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
MAX_SECTIONS: Final = 64
MAX_PAGES: Final = 1 << 16  # 256 MiB of measured memory; real TDVF measures a few MiB
PageOrder = Literal["single", "two-pass"]
PAGE_ORDERS: Final[tuple[PageOrder, ...]] = ("single", "two-pass")


class TdvfError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Section:
    data_offset: int
    raw_size: int
    address: int
    memory_size: int
    kind: int
    attributes: int


def _metadata_offset(image: bytes) -> int:
    end = len(image) - 32
    if end < 18 or image[end - 16 : end] != FOOTER_GUID:
        raise TdvfError("the image has no OVMF GUIDed table footer (not an OVMF/TDVF image)")
    table_length = struct.unpack_from("<H", image, end - 18)[0]
    start = end - table_length
    if table_length < 18 or start < 0:
        raise TdvfError("the OVMF GUIDed table has a bad length")
    cursor = end - 18  # the footer entry (length + GUID) ends the table
    while cursor - 18 >= start:
        guid = image[cursor - 16 : cursor]
        length = struct.unpack_from("<H", image, cursor - 18)[0]
        if length < 18 or cursor - length < start:
            raise TdvfError("an OVMF GUIDed table entry has a bad length")
        if guid == METADATA_GUID:
            if length < 22:
                raise TdvfError("the TDX metadata entry is too short")
            return int(struct.unpack_from("<I", image, cursor - 22)[0])
        cursor -= length
    raise TdvfError(
        "the image has no TDX metadata (GUID e47a6535-984a-4798-865e-4685a7bf8ec2): it is not "
        "built for TDX"
    )


def sections(image: bytes) -> list[Section]:
    offset = len(image) - _metadata_offset(image)
    if not 0 <= offset <= len(image) - 16:
        raise TdvfError("the TDX metadata offset points outside the image")
    signature, _length, version, count = struct.unpack_from("<4sIII", image, offset)
    if signature != b"TDVF" or version != 1:
        raise TdvfError("the TDX metadata is not a TDVF descriptor version 1")
    if not 0 < count <= MAX_SECTIONS or offset + 16 + 32 * count > len(image):
        raise TdvfError(f"the TDX metadata lists {count} sections")
    found, pages = [], 0
    for n in range(count):
        section = Section(*struct.unpack_from("<IIQQII", image, offset + 16 + 32 * n))
        if section.address % PAGE or section.memory_size % PAGE:
            raise TdvfError(f"section {n} is not page aligned")
        if section.raw_size > section.memory_size:
            raise TdvfError(f"section {n} has more data than memory")
        if section.attributes & MR_EXTEND and (
            section.raw_size != section.memory_size
            or section.data_offset + section.raw_size > len(image)
        ):
            raise TdvfError(f"section {n} is measured but its data is not all in the image")
        pages += section.memory_size // PAGE
        if pages > MAX_PAGES:
            raise TdvfError(f"the sections measure more than {MAX_PAGES} pages")
        found.append(section)
    return found


def _buffer(operation: bytes, gpa: int) -> bytes:
    return operation.ljust(16, b"\x00") + struct.pack("<Q", gpa) + bytes(104)


def mrtd(image: bytes, order: PageOrder = "single") -> bytes:
    digest = hashlib.sha384()

    def add(section: Section, page: int) -> None:
        if not section.attributes & PAGE_AUG:
            digest.update(_buffer(b"MEM.PAGE.ADD", section.address + page * PAGE))

    def extend(section: Section, page: int) -> None:
        if section.attributes & MR_EXTEND:
            for chunk in range(0, PAGE, CHUNK):
                start = section.data_offset + page * PAGE + chunk
                digest.update(_buffer(b"MR.EXTEND", section.address + page * PAGE + chunk))
                digest.update(image[start : start + CHUNK])

    for section in sections(image):
        count = section.memory_size // PAGE
        if order == "two-pass":
            for page in range(count):
                add(section, page)
            for page in range(count):
                extend(section, page)
        else:
            for page in range(count):
                add(section, page)
                extend(section, page)
    return digest.digest()
