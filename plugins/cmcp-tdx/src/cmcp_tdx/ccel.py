"""The CCEL event log of a TD (ACPI "CCEL" table data, /sys/firmware/acpi/tables/data/CCEL):
a TCG crypto-agile log whose "PCR index" is the TDX measurement register index,
1..4 for RTMR0..3 (0 would be MRTD, which firmware never extends).

The log starts with a TCG_PCR_EVENT (SHA-1 format) carrying the Spec ID Event03 that
lists the digest algorithms and sizes; every later event is a TCG_PCR_EVENT2 with one
digest per algorithm. The table's log area is padded with 0xFF (or zeros) after the last
event, to its end. Replay extends each RTMR from 48 zero bytes: RTMR = SHA-384(RTMR ||
digest); EV_NO_ACTION events are not extended. An event's data is covered by nothing the
quote signs, only its digest is (through the replay), so the parser checks every byte it
can: the header's fields and the padding.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

SHA384_ALG: Final = 0x000C
SHA384_SIZE: Final = 48
EV_NO_ACTION: Final = 0x00000003
RTMR_COUNT: Final = 4
MAX_EVENTS: Final = 1 << 16
MAX_EVENT_DATA: Final = 1 << 24
_SPEC_ID: Final = b"Spec ID Event03\x00"


class CcelError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Event:
    mr_index: int
    event_type: int
    sha384: bytes
    data: bytes


def _u32(data: bytes, offset: int, what: str) -> int:
    if offset + 4 > len(data):
        raise CcelError(f"the log ends inside {what} at byte {offset}")
    return int(struct.unpack_from("<I", data, offset)[0])


def _u16(data: bytes, offset: int, what: str) -> int:
    if offset + 2 > len(data):
        raise CcelError(f"the log ends inside {what} at byte {offset}")
    return int(struct.unpack_from("<H", data, offset)[0])


def _algorithms(event: bytes) -> dict[int, int]:
    """The digest sizes the Spec ID Event03 lists; every field of it is checked (the header
    is extended nowhere, so a field left unread would be a change nothing notices)."""
    if not event.startswith(_SPEC_ID) or len(event) < 28:
        raise CcelError("the first event is not a TCG Spec ID Event03 (not a crypto-agile log)")
    major, uintn_size = event[21], event[23]
    if major != 2 or uintn_size != 2:
        raise CcelError(
            f"the Spec ID event says spec version {major}.x with uintnSize {uintn_size}, not "
            "2.x with 2 (a TCG PC Client crypto-agile log)"
        )
    count = _u32(event, 24, "the Spec ID event")
    if not 0 < count <= 8:
        raise CcelError(f"the Spec ID event lists {count} algorithms")
    sizes = {}
    for n in range(count):
        sizes[_u16(event, 28 + 4 * n, "the algorithm list")] = _u16(
            event, 30 + 4 * n, "the algorithm list"
        )
    vendor_at = 28 + 4 * count
    if vendor_at >= len(event) or vendor_at + 1 + event[vendor_at] != len(event):
        raise CcelError("the Spec ID event's vendor information does not end the event")
    if sizes.get(SHA384_ALG) != SHA384_SIZE:
        raise CcelError("the log does not record SHA-384 digests")
    return sizes


def _padding(data: bytes, offset: int) -> bool:
    rest = data[offset : offset + 8]
    return len(rest) < 8 or rest in (b"\xff" * 8, b"\x00" * 8)


def parse(data: bytes) -> list[Event]:
    """The events after the Spec ID header, up to the padding. `CcelError` on a malformed
    log, never a silently shortened one: an event running past the data fails."""
    if len(data) < 32:
        raise CcelError(f"the log is {len(data)} bytes, too short for its header event")
    # TCG numbers the header's register 0; TDVF writes the MR index of PCR 0, which is 1.
    if _u32(data, 0, "the header event") not in (0, 1):
        raise CcelError("the header event names a register other than 0 or 1")
    if _u32(data, 4, "the header event") != EV_NO_ACTION:
        raise CcelError("the header event is not an EV_NO_ACTION event")
    if any(data[8:28]):
        raise CcelError("the header event's SHA-1 digest field is not zero")
    header_size = _u32(data, 28, "the header event")
    if 32 + header_size > len(data):
        raise CcelError("the header event runs past the log")
    sizes = _algorithms(data[32 : 32 + header_size])
    offset, events = 32 + header_size, list[Event]()
    while not _padding(data, offset):
        if len(events) >= MAX_EVENTS:
            raise CcelError(f"the log has more than {MAX_EVENTS} events")
        mr_index = _u32(data, offset, "an event header")
        event_type = _u32(data, offset + 4, "an event header")
        count = _u32(data, offset + 8, "an event header")
        if not 0 < count <= len(sizes):
            raise CcelError(f"event {len(events)} has {count} digests")
        cursor, sha384 = offset + 12, b""
        for _ in range(count):
            alg = _u16(data, cursor, "a digest")
            size = sizes.get(alg)
            if size is None:
                raise CcelError(f"event {len(events)} uses algorithm 0x{alg:04x} not in the header")
            if cursor + 2 + size > len(data):
                raise CcelError(f"event {len(events)} ends inside a digest")
            if alg == SHA384_ALG:
                sha384 = data[cursor + 2 : cursor + 2 + size]
            cursor += 2 + size
        size = _u32(data, cursor, "an event size")
        if size > MAX_EVENT_DATA or cursor + 4 + size > len(data):
            raise CcelError(f"event {len(events)} declares {size} data bytes past the log's end")
        if not sha384:
            raise CcelError(f"event {len(events)} has no SHA-384 digest")
        events.append(Event(mr_index, event_type, sha384, data[cursor + 4 : cursor + 4 + size]))
        offset = cursor + 4 + size
    rest = data[offset:]
    if rest.strip(b"\xff") and rest.strip(b"\x00"):
        raise CcelError(
            f"the {len(rest)} bytes after event {len(events) - 1} are not padding (all 0xFF or "
            "all zero)"
        )
    return events


def replay(events: list[Event]) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 from reset. `CcelError` for an event aimed at another register."""
    rtmrs = [bytes(SHA384_SIZE)] * RTMR_COUNT
    for n, event in enumerate(events):
        if event.event_type == EV_NO_ACTION:
            continue
        if not 1 <= event.mr_index <= RTMR_COUNT:
            raise CcelError(
                f"event {n} extends measurement register index {event.mr_index}, not an RTMR (1..4)"
            )
        slot = event.mr_index - 1
        rtmrs[slot] = hashlib.sha384(rtmrs[slot] + event.sha384).digest()
    return rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]
