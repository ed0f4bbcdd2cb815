"""Reading the event logs that explain PCR values, and replaying them.

Two formats reach the measurer:

- cMCP's own JSON log, the `event_log` list of `tpm2-quote-v1` evidence: the extends the
  gateway made (the policy bundle hash into its PCR). It is accepted bare, inside the
  evidence, inside a claim's `gateway.attestation`, or as the attestation object itself.
- The TCG PC Client Platform Firmware Profile crypto-agile log that firmware leaves in
  /sys/kernel/security/tpm0/binary_bios_measurements: one TCG_PCClientPCREvent in the
  SHA-1 format carrying the Spec ID Event03 (which banks the log records and their digest
  sizes), then TCG_PCR_EVENT2 entries until the end or the firmware's 0x00/0xFF padding.

Every length read from a binary log is checked against the bytes that remain before it is
used, so a malformed log raises `EventLogError` naming the offset and the problem instead of
reading past the end. EV_NO_ACTION events are recorded but never extended; the
StartupLocality one sets PCR 0's starting value to the locality in its last byte.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cmcp_tpm import pcr

EV_NO_ACTION = 0x00000003

# Names of the event types of the PC Client PFP 1.05/1.06, for reports only.
EVENT_TYPE_NAMES: Mapping[int, str] = {
    0x00000000: "EV_PREBOOT_CERT",
    0x00000001: "EV_POST_CODE",
    0x00000002: "EV_UNUSED",
    0x00000003: "EV_NO_ACTION",
    0x00000004: "EV_SEPARATOR",
    0x00000005: "EV_ACTION",
    0x00000006: "EV_EVENT_TAG",
    0x00000007: "EV_S_CRTM_CONTENTS",
    0x00000008: "EV_S_CRTM_VERSION",
    0x00000009: "EV_CPU_MICROCODE",
    0x0000000A: "EV_PLATFORM_CONFIG_FLAGS",
    0x0000000B: "EV_TABLE_OF_DEVICES",
    0x0000000C: "EV_COMPACT_HASH",
    0x0000000D: "EV_IPL",
    0x0000000E: "EV_IPL_PARTITION_DATA",
    0x0000000F: "EV_NONHOST_CODE",
    0x00000010: "EV_NONHOST_CONFIG",
    0x00000011: "EV_NONHOST_INFO",
    0x00000012: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000000: "EV_EFI_EVENT_BASE",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}
# Event types whose data is text worth showing as the description.
_TEXT_EVENT_TYPES = frozenset({0x00000001, 0x00000005, 0x00000008, 0x0000000D, 0x80000007})

# Names of algorithms a log may declare beyond the banks cMCP replays (pcr.BANK_ALGORITHMS).
_OTHER_ALGORITHM_NAMES: Mapping[int, str] = {0x000D: "sha512", 0x0012: "sm3_256"}
_MAX_DIGEST_SIZE = 64  # SHA-512, the largest TPM digest
_MAX_ALGORITHMS = 16

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
_LEGACY_SPEC_ID_SIGNATURE = b"Spec ID Event00\x00"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"
_MAX_LOCALITY = 4  # 0 and 3 from TPM2_Startup, 4 for an H-CRTM
_NOT_TCG = (
    "the log does not start with the Spec ID Event03 (PCR 0, EV_NO_ACTION): "
    "not a TCG crypto-agile event log"
)

CMCP_POLICY_BUNDLE_EVENT = "cmcp-policy-bundle"
_CMCP_EVENT_MEMBERS = frozenset({"pcr", "bank", "digest", "type", "data"})
_HEX = re.compile(r"[0-9a-fA-F]*")


class EventLogError(ValueError):
    """A log that cannot be read; `where` is the byte offset or the JSON position."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


@dataclass(frozen=True, slots=True)
class LogEvent:
    pcr: int
    digests: Mapping[str, bytes]  # bank (or algorithm) name -> digest
    event_type: str  # EV_* name, "0x..." for an unknown TCG type, or the cMCP event type
    description: str | None = None
    extended: bool = True  # False for EV_NO_ACTION: recorded, not extended


@dataclass(frozen=True, slots=True)
class EventLog:
    format: str  # "tcg" or "cmcp"
    events: tuple[LogEvent, ...]
    banks: tuple[str, ...]  # the replayable banks the log records digests for
    startup_locality: int | None = None  # from a TCG StartupLocality event
    padding: int = 0  # bytes of trailing 0x00/0xFF padding skipped
    algorithms: Mapping[str, int] = field(default_factory=dict)  # all declared: name -> size


def replay(log: EventLog) -> dict[str, dict[int, bytes]]:
    """{bank: {pcr: value}} for every PCR the log changes (PCR 0 also when a StartupLocality
    event sets its starting value); PCRs the log does not touch are not listed."""
    values: dict[str, dict[int, bytes]] = {}
    for bank in log.banks:
        bank_values: dict[int, bytes] = {}
        if log.startup_locality is not None:
            bank_values[0] = startup_value(bank, log.startup_locality)
        for event in log.events:
            digest = event.digests.get(bank)
            if not event.extended or digest is None:
                continue
            start = bank_values.get(event.pcr, pcr.initial_value(bank))
            bank_values[event.pcr] = pcr.extend(bank, start, digest)
        values[bank] = bank_values
    return values


def startup_value(bank: str, locality: int) -> bytes:
    """PCR 0 after TPM2_Startup at `locality`: zeros with the locality in the last byte."""
    return pcr.initial_value(bank)[:-1] + bytes([locality])


def extend_counts(log: EventLog, bank: str) -> dict[int, int]:
    """How many events extend each PCR in `bank`."""
    counts: dict[int, int] = {}
    for event in log.events:
        if event.extended and bank in event.digests:
            counts[event.pcr] = counts.get(event.pcr, 0) + 1
    return counts


def load_event_log(data: bytes) -> EventLog:
    """A log file of either format, told apart by content: JSON starts with `{` or `[`;
    a TCG log starts with its first event's PCR index, 0, in little-endian."""
    stripped = data.lstrip(b" \t\r\n\xef\xbb\xbf")
    if stripped[:1] in (b"{", b"["):
        try:
            document = json.loads(
                stripped.decode("utf-8"),
                object_pairs_hook=_unique_members,
                parse_constant=_reject_constant,
            )
        except EventLogError:
            raise
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise EventLogError("JSON", f"not valid JSON: {exc}") from None
        return parse_cmcp_log(document)
    return parse_tcg_log(data)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise EventLogError("JSON", f"member {key!r} appears twice in one object")
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise EventLogError("JSON", f"{name} is not a JSON number")


# ---------------------------------------------------------------- cMCP JSON log


def parse_cmcp_log(document: object) -> EventLog:
    """The gateway's `event_log`, from the list itself, an evidence object, an attestation
    object (`{"evidence": ...}`) or a whole claim (`gateway.attestation.evidence`)."""
    entries, where = _find_event_log(document)
    events: list[LogEvent] = []
    banks: set[str] = set()
    for index, entry in enumerate(entries):
        event = _cmcp_event(entry, f"{where}[{index}]")
        banks.update(event.digests)
        events.append(event)
    ordered_banks = tuple(b for b in pcr.DIGEST_SIZES if b in banks)
    sizes = {b: pcr.DIGEST_SIZES[b] for b in ordered_banks}
    return EventLog("cmcp", tuple(events), ordered_banks, algorithms=sizes)


def _find_event_log(document: object) -> tuple[Sequence[object], str]:
    path: list[str] = []
    node = document
    if isinstance(node, dict) and "gateway" in node:  # a whole claim
        gateway = node["gateway"]
        node = gateway.get("attestation") if isinstance(gateway, dict) else None
        path += ["gateway", "attestation"]
        if not isinstance(node, dict):
            raise EventLogError("gateway", "the claim has no gateway.attestation object")
    if isinstance(node, dict) and "evidence" in node and "event_log" not in node:
        provider = node.get("provider")
        node = node["evidence"]
        path.append("evidence")
        if not isinstance(node, dict) or "event_log" not in node:
            raise EventLogError(
                ".".join(path),
                f"the attestation evidence (provider {provider!r}) has no event_log: "
                "only evidence of the tpm provider carries one",
            )
    if isinstance(node, dict):
        if "event_log" not in node:
            raise EventLogError(
                "JSON", "no event_log: give the evidence, the claim, or the event_log list"
            )
        node = node["event_log"]
    path.append("event_log")
    where = ".".join(path)
    if not isinstance(node, list):
        raise EventLogError(where, "is not a list of events")
    return node, where


def _cmcp_event(entry: object, where: str) -> LogEvent:
    if not isinstance(entry, dict):
        raise EventLogError(where, "is not an object")
    unknown = sorted(set(entry) - _CMCP_EVENT_MEMBERS)
    if unknown:
        raise EventLogError(where, f"unknown members {', '.join(unknown)}")
    index = entry.get("pcr")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < pcr.PCR_COUNT:
        raise EventLogError(f"{where}.pcr", f"must be a PCR index 0-{pcr.PCR_COUNT - 1}")
    bank = entry.get("bank")
    if not isinstance(bank, str) or bank not in pcr.DIGEST_SIZES:
        raise EventLogError(f"{where}.bank", f"must be one of {', '.join(pcr.DIGEST_SIZES)}")
    digest_hex = entry.get("digest")
    size = pcr.DIGEST_SIZES[bank]
    if (
        not isinstance(digest_hex, str)
        or len(digest_hex) != 2 * size
        or not _HEX.fullmatch(digest_hex)
    ):
        raise EventLogError(f"{where}.digest", f"must be {2 * size} hex digits ({bank})")
    event_type = entry.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise EventLogError(f"{where}.type", "must be a non-empty string")
    data = entry.get("data")
    if data is not None and not isinstance(data, str):
        raise EventLogError(f"{where}.data", "must be a string")
    return LogEvent(index, {bank: bytes.fromhex(digest_hex)}, event_type, data)


# ---------------------------------------------------------------- TCG crypto-agile log


class _Reader:
    """Little-endian reads that never pass the end of the log."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset

    def take(self, size: int, what: str) -> bytes:
        if size > self.remaining:
            raise EventLogError(
                f"offset {self.offset:#x}",
                f"{what} needs {size} bytes but only {self.remaining} remain (truncated log)",
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value

    def at_padding(self) -> bool:
        """True when nothing but one repeated 0x00 or 0xFF byte is left."""
        rest = self.data[self.offset :]
        return bool(rest) and rest[0] in (0x00, 0xFF) and rest.count(rest[0]) == len(rest)


@dataclass(frozen=True, slots=True)
class _SpecId:
    sizes: Mapping[int, int]  # algorithm id -> digest size, in declared order


def parse_tcg_log(data: bytes) -> EventLog:
    """The events of a crypto-agile TCG log, in order, the Spec ID event first."""
    if not data:
        raise EventLogError("offset 0x0", "the log is empty")
    reader = _Reader(data)
    spec_event, spec_id = _read_spec_id_event(reader)
    names = {alg: _algorithm_name(alg) for alg in spec_id.sizes}
    events = [spec_event]
    locality: int | None = None
    pcr0_extended = False
    while reader.remaining:
        if reader.at_padding():
            break
        start = reader.offset
        event, raw = _read_event2(reader, spec_id, names)
        if not event.extended and event.pcr == 0 and raw.startswith(STARTUP_LOCALITY_SIGNATURE):
            if locality is not None or pcr0_extended:
                raise EventLogError(
                    f"offset {start:#x}",
                    "a StartupLocality event must come once, before any extend of PCR 0",
                )
            locality = _startup_locality(raw, start)
        pcr0_extended = pcr0_extended or (event.extended and event.pcr == 0)
        events.append(event)
    banks = tuple(b for b in pcr.DIGEST_SIZES if pcr.BANK_ALGORITHMS[b] in spec_id.sizes)
    return EventLog(
        "tcg",
        tuple(events),
        banks,
        startup_locality=locality,
        padding=reader.remaining,
        algorithms={names[alg]: size for alg, size in spec_id.sizes.items()},
    )


def _algorithm_name(alg: int) -> str:
    return pcr.BANK_OF_ALGORITHM.get(alg) or _OTHER_ALGORITHM_NAMES.get(alg) or f"alg{alg:#06x}"


def _read_spec_id_event(reader: _Reader) -> tuple[LogEvent, _SpecId]:
    """The first event: TCG_PCClientPCREvent (pcrIndex, eventType, SHA-1 digest, eventSize,
    event) whose event is the TCG_EfiSpecIDEventStruct."""
    index = reader.u32("the first event's PCR index")
    event_type = reader.u32("the first event's type")
    if index != 0 or event_type != EV_NO_ACTION:
        raise EventLogError("offset 0x0", _NOT_TCG)
    reader.take(20, "the first event's SHA-1 digest")
    size = reader.u32("the first event's size")
    data_offset = reader.offset
    data = reader.take(size, "the Spec ID event")
    where = f"offset {data_offset:#x}"
    signature = data[:16]
    if signature == _LEGACY_SPEC_ID_SIGNATURE:
        raise EventLogError(
            where, "a TPM 1.2 (SHA-1 only) log; only the TPM 2.0 crypto-agile format is read"
        )
    if signature != SPEC_ID_SIGNATURE:
        raise EventLogError(where, _NOT_TCG)
    spec = _Reader(data)
    spec.take(16, "the Spec ID signature")
    spec.take(4 + 1 + 1 + 1 + 1, "the Spec ID platform class, version and uintn size")
    count = spec.u32("the Spec ID algorithm count")
    if not 1 <= count <= _MAX_ALGORITHMS:
        raise EventLogError(
            f"offset {data_offset + spec.offset - 4:#x}",
            f"the Spec ID declares {count} algorithms (expected 1 to {_MAX_ALGORITHMS})",
        )
    sizes: dict[int, int] = {}
    for _ in range(count):
        entry_offset = data_offset + spec.offset
        alg = spec.u16("a Spec ID algorithm id")
        digest_size = spec.u16("a Spec ID digest size")
        known = pcr.DIGEST_SIZES.get(pcr.BANK_OF_ALGORITHM.get(alg, ""))
        if alg in sizes:
            problem = f"the Spec ID declares algorithm {alg:#06x} twice"
        elif not 1 <= digest_size <= _MAX_DIGEST_SIZE:
            problem = f"the Spec ID gives algorithm {alg:#06x} a digest size of {digest_size}"
        elif known is not None and digest_size != known:
            problem = (
                f"the Spec ID gives {pcr.BANK_OF_ALGORITHM[alg]} a digest size of "
                f"{digest_size}, not {known}"
            )
        else:
            sizes[alg] = digest_size
            continue
        raise EventLogError(f"offset {entry_offset:#x}", problem)
    vendor_size = spec.u8("the Spec ID vendor info size")
    spec.take(vendor_size, "the Spec ID vendor info")
    if spec.remaining:
        raise EventLogError(
            f"offset {data_offset + spec.offset:#x}",
            f"{spec.remaining} bytes follow the Spec ID vendor info inside its event",
        )
    event = LogEvent(0, {}, "EV_NO_ACTION", "Spec ID Event03", extended=False)
    return event, _SpecId(sizes)


def _read_event2(
    reader: _Reader, spec_id: _SpecId, names: Mapping[int, str]
) -> tuple[LogEvent, bytes]:
    """One TCG_PCR_EVENT2: pcrIndex, eventType, TPML_DIGEST_VALUES, eventSize, event."""
    start = reader.offset
    index = reader.u32("an event's PCR index")
    event_type = reader.u32("an event's type")
    if index >= pcr.PCR_COUNT:
        raise EventLogError(f"offset {start:#x}", f"PCR index {index} is beyond PCR 23")
    count_offset = reader.offset
    count = reader.u32("an event's digest count")
    if count != len(spec_id.sizes):
        raise EventLogError(
            f"offset {count_offset:#x}",
            f"the event carries {count} digests; the Spec ID declares {len(spec_id.sizes)} "
            "algorithms and every event must carry one digest of each",
        )
    digests: dict[str, bytes] = {}
    for _ in range(count):
        alg_offset = reader.offset
        alg = reader.u16("a digest's algorithm id")
        size = spec_id.sizes.get(alg)
        if size is None:
            raise EventLogError(
                f"offset {alg_offset:#x}",
                f"digest algorithm {alg:#06x} is not declared in the Spec ID event",
            )
        if names[alg] in digests:
            raise EventLogError(
                f"offset {alg_offset:#x}", f"the event carries two {names[alg]} digests"
            )
        digests[names[alg]] = reader.take(size, f"a {names[alg]} digest")
    size_offset = reader.offset
    event_size = reader.u32("an event's data size")
    if event_size > reader.remaining:
        raise EventLogError(
            f"offset {size_offset:#x}",
            f"the event's data size {event_size} exceeds the {reader.remaining} bytes left "
            "(a truncated log or a corrupt size)",
        )
    raw = reader.take(event_size, "an event's data")
    name = EVENT_TYPE_NAMES.get(event_type, f"{event_type:#010x}")
    extended = event_type != EV_NO_ACTION
    event = LogEvent(index, digests, name, _describe(event_type, raw), extended)
    return event, raw


def _startup_locality(raw: bytes, offset: int) -> int:
    if len(raw) != len(STARTUP_LOCALITY_SIGNATURE) + 1:
        raise EventLogError(
            f"offset {offset:#x}", f"a StartupLocality event has {len(raw)} data bytes, not 17"
        )
    locality = raw[-1]
    if locality > _MAX_LOCALITY:
        raise EventLogError(f"offset {offset:#x}", f"StartupLocality {locality} is not 0-4")
    return locality


def _describe(event_type: int, raw: bytes) -> str | None:
    if event_type == EV_NO_ACTION:
        if raw.startswith(STARTUP_LOCALITY_SIGNATURE) and len(raw) == 17:
            return f"StartupLocality {raw[16]}"
        return _printable(raw[:16].decode("ascii", "replace"))
    if event_type == 0x00000004 and len(raw) == 4:
        return f"separator {int.from_bytes(raw, 'little'):#010x}"
    if event_type in _TEXT_EVENT_TYPES:
        # EV_S_CRTM_VERSION is often UCS-2; the others are ASCII.
        wide = len(raw) >= 2 and raw[1] == 0
        return _printable(raw.decode("utf-16-le" if wide else "utf-8", "replace"))
    return None


def _printable(text: str) -> str | None:
    text = text.rstrip("\x00")
    if not text or not text.isprintable():
        return None
    return text[:120]
