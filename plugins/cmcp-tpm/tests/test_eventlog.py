"""The event log readers: a spec-conformant crypto-agile log built here, replayed, and
cross-checked against tpm2-tools' independent parser; malformed logs; cMCP JSON logs."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from cmcp_tpm import eventlog

SHA1, SHA256 = 0x0004, 0x000B
EV_POST_CODE, EV_NO_ACTION, EV_SEPARATOR = 0x1, 0x3, 0x4
EV_S_CRTM_VERSION, EV_IPL = 0x8, 0xD
EV_EFI_ACTION = 0x80000007
BANKS = {SHA1: "sha1", SHA256: "sha256"}


# ---------------------------------------------------------------- building TCG logs


def spec_id_event(
    algorithms: Sequence[tuple[int, int]] = ((SHA1, 20), (SHA256, 32)),
    *,
    signature: bytes = b"Spec ID Event03\x00",
    count: int | None = None,
    vendor: bytes = b"",
    trailing: bytes = b"",
) -> bytes:
    """TCG_PCClientPCREvent (SHA-1 format) carrying TCG_EfiSpecIDEventStruct."""
    body = signature + struct.pack("<IBBBB", 0, 0, 2, 0, 2)
    body += struct.pack("<I", len(algorithms) if count is None else count)
    body += b"".join(struct.pack("<HH", alg, size) for alg, size in algorithms)
    body += bytes([len(vendor)]) + vendor + trailing
    return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(body)) + body


@dataclass(frozen=True)
class Event:
    pcr: int
    event_type: int
    data: bytes

    @property
    def extended(self) -> bool:
        return self.event_type != EV_NO_ACTION

    def digest(self, alg: int) -> bytes:
        name = BANKS[alg]
        if not self.extended:
            return bytes(hashlib.new(name).digest_size)
        return hashlib.new(name, self.data).digest()

    def encode(self, algorithms: Sequence[int] = (SHA1, SHA256)) -> bytes:
        """TCG_PCR_EVENT2."""
        out = struct.pack("<III", self.pcr, self.event_type, len(algorithms))
        out += b"".join(struct.pack("<H", alg) + self.digest(alg) for alg in algorithms)
        return out + struct.pack("<I", len(self.data)) + self.data


def startup_locality(locality: int) -> Event:
    return Event(0, EV_NO_ACTION, b"StartupLocality\x00" + bytes([locality]))


FIRMWARE_EVENTS = (
    Event(0, EV_S_CRTM_VERSION, "1.02".encode("utf-16-le") + b"\x00\x00"),
    Event(0, EV_POST_CODE, b"POST CODE"),
    Event(1, EV_POST_CODE, b"ACPI DATA"),
    *(Event(pcr, EV_SEPARATOR, bytes(4)) for pcr in range(8)),
    Event(4, EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
    Event(4, EV_IPL, b"grub_cmd: linux /vmlinuz root=/dev/sda1"),
    Event(8, EV_IPL, b"kernel_cmdline: /vmlinuz root=/dev/sda1"),
    Event(5, EV_EFI_ACTION, b"Exit Boot Services Invocation"),
    Event(14, EV_IPL, b"MokList"),
)


def build_log(events: Sequence[Event], *, spec: bytes | None = None) -> bytes:
    return (spec if spec is not None else spec_id_event()) + b"".join(e.encode() for e in events)


def expected_values(events: Sequence[Event], locality: int = 0) -> dict[str, dict[int, bytes]]:
    """The replay, computed here with hashlib from the events as built."""
    result: dict[str, dict[int, bytes]] = {}
    for alg, name in BANKS.items():
        size = hashlib.new(name).digest_size
        values: dict[int, bytes] = {0: bytes(size - 1) + bytes([locality])} if locality else {}
        for event in events:
            if event.extended:
                start = values.get(event.pcr, bytes(size))
                values[event.pcr] = hashlib.new(name, start + event.digest(alg)).digest()
        result[name] = values
    return result


# ---------------------------------------------------------------- tpm2-tools


def tpm2_eventlog_pcrs(path: Path) -> dict[str, dict[int, bytes]]:
    """The `pcrs:` section that `tpm2_eventlog FILE` prints."""
    completed = subprocess.run(
        ["tpm2_eventlog", str(path)], capture_output=True, text=True, timeout=20, check=True
    )
    _, marker, section = completed.stdout.partition("\npcrs:\n")
    assert marker, completed.stdout[-2000:]
    pcrs: dict[str, dict[int, bytes]] = {}
    bank: dict[int, bytes] = {}
    for line in section.splitlines():
        if match := re.fullmatch(r"  (\w+):", line):
            bank = pcrs.setdefault(match.group(1), {})
        elif match := re.fullmatch(r"    (\d+)\s*: 0x([0-9a-fA-F]+)", line):
            bank[int(match.group(1))] = bytes.fromhex(match.group(2))
        elif line.strip():
            break
    return pcrs


def tpm2_tools_version() -> tuple[int, ...]:
    completed = subprocess.run(
        ["tpm2_eventlog", "--version"], capture_output=True, text=True, timeout=20, check=False
    )
    match = re.search(r'version="(\d+)\.(\d+)', completed.stdout)
    assert match, completed.stdout
    return int(match.group(1)), int(match.group(2))


needs_tpm2_tools = pytest.mark.skipif(
    shutil.which("tpm2_eventlog") is None, reason="tpm2-tools (tpm2_eventlog) is not installed"
)


@needs_tpm2_tools
def test_replay_agrees_with_tpm2_eventlog(tmp_path: Path) -> None:
    data = build_log(FIRMWARE_EVENTS)
    path = tmp_path / "binary_bios_measurements"
    path.write_bytes(data)

    replayed = eventlog.replay(eventlog.parse_tcg_log(data))

    reference = tpm2_eventlog_pcrs(path)
    assert set(reference) == {"sha1", "sha256"}
    assert replayed == reference
    assert replayed == expected_values(FIRMWARE_EVENTS)
    assert sorted(replayed["sha256"]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 14]


@needs_tpm2_tools
def test_startup_locality_sets_pcr0_start(tmp_path: Path) -> None:
    events = (startup_locality(3), *FIRMWARE_EVENTS)
    data = build_log(events)
    path = tmp_path / "binary_bios_measurements"
    path.write_bytes(data)

    log = eventlog.parse_tcg_log(data)
    replayed = eventlog.replay(log)

    assert log.startup_locality == 3
    assert replayed == expected_values(FIRMWARE_EVENTS, locality=3)
    pcr0_start = bytes(31) + b"\x03"
    pcr0 = pcr0_start
    for event in FIRMWARE_EVENTS:
        if event.pcr == 0:
            pcr0 = hashlib.sha256(pcr0 + hashlib.sha256(event.data).digest()).digest()
    assert replayed["sha256"][0] == pcr0
    reference = tpm2_eventlog_pcrs(path)
    # tpm2-tools before 5.5 extends EV_NO_ACTION digests and ignores StartupLocality
    # (tpm2-software/tpm2-tools#3224, #3146), so PCR 0 is compared there only from 5.5 on.
    compared = set(reference["sha256"]) - ({0} if tpm2_tools_version() < (5, 5) else set())
    for bank in ("sha1", "sha256"):
        assert {i: reference[bank][i] for i in compared} == {i: replayed[bank][i] for i in compared}
    assert compared >= {1, 2, 3, 4, 5, 6, 7, 8, 14}


def test_events_in_order_with_types_and_descriptions() -> None:
    log = eventlog.parse_tcg_log(build_log((startup_locality(0), *FIRMWARE_EVENTS)))

    assert log.format == "tcg"
    assert log.banks == ("sha1", "sha256")
    assert log.algorithms == {"sha1": 20, "sha256": 32}
    first, locality, crtm, *rest = log.events
    assert (first.event_type, first.description, first.extended) == (
        "EV_NO_ACTION",
        "Spec ID Event03",
        False,
    )
    assert (locality.event_type, locality.description, locality.extended) == (
        "EV_NO_ACTION",
        "StartupLocality 0",
        False,
    )
    assert (crtm.pcr, crtm.event_type, crtm.description) == (0, "EV_S_CRTM_VERSION", "1.02")
    assert crtm.digests["sha256"] == hashlib.sha256(FIRMWARE_EVENTS[0].data).digest()
    separators = [e for e in rest if e.event_type == "EV_SEPARATOR"]
    assert [e.pcr for e in separators] == list(range(8))
    assert separators[0].description == "separator 0x00000000"
    assert [e.pcr for e in rest] == [e.pcr for e in FIRMWARE_EVENTS[1:]]
    # Locality 0 is the ordinary start: PCR 0 replays from zeros.
    assert eventlog.replay(log) == expected_values(FIRMWARE_EVENTS)
    assert eventlog.extend_counts(log, "sha256")[0] == 3


@pytest.mark.parametrize("pad", [b"\xff", b"\x00"])
def test_trailing_padding_is_skipped(pad: bytes) -> None:
    data = build_log(FIRMWARE_EVENTS)
    log = eventlog.parse_tcg_log(data + pad * 4096)

    assert log.padding == 4096
    assert eventlog.replay(log) == expected_values(FIRMWARE_EVENTS)
    assert len(log.events) == len(FIRMWARE_EVENTS) + 1


def test_single_bank_log() -> None:
    spec = spec_id_event([(SHA256, 32)])
    data = spec + b"".join(e.encode([SHA256]) for e in FIRMWARE_EVENTS)

    log = eventlog.parse_tcg_log(data)

    assert log.banks == ("sha256",)
    assert eventlog.replay(log) == {"sha256": expected_values(FIRMWARE_EVENTS)["sha256"]}


# ---------------------------------------------------------------- malformed logs


def boundaries(events: Sequence[Event]) -> set[int]:
    offset = len(spec_id_event())
    result = {offset}
    for event in events:
        offset += len(event.encode())
        result.add(offset)
    return result


def parse_or_error(data: bytes) -> eventlog.EventLog | eventlog.EventLogError:
    try:
        return eventlog.parse_tcg_log(data)
    except eventlog.EventLogError as exc:
        return exc


def test_every_truncation_is_an_error_or_a_shorter_log() -> None:
    events = (startup_locality(3), *FIRMWARE_EVENTS)
    data = build_log(events)
    ends = boundaries(events)
    errors = 0
    for cut in range(1, len(data)):
        outcome = parse_or_error(data[:cut])
        if isinstance(outcome, eventlog.EventLogError):
            errors += 1
            assert outcome.where.startswith("offset 0x")
            assert int(outcome.where.removeprefix("offset "), 16) <= cut
            continue
        # Without an error, the log ended at an event boundary or in bytes that are all
        # padding; never a partial event.
        whole = max(end for end in ends if end <= cut)
        tail = set(data[whole:cut])
        assert cut == whole or tail <= {0x00} or tail <= {0xFF}
        assert outcome.padding == cut - whole
    assert errors > len(data) // 2


def test_truncated_event_names_offset_and_need() -> None:
    data = build_log(FIRMWARE_EVENTS)
    with pytest.raises(eventlog.EventLogError, match=r"truncated log") as caught:
        eventlog.parse_tcg_log(data[:-3])
    assert "offset 0x" in str(caught.value)


def test_absurd_event_size() -> None:
    data = bytearray(build_log(FIRMWARE_EVENTS[:1]))
    size_at = len(data) - len(FIRMWARE_EVENTS[0].data) - 4
    data[size_at : size_at + 4] = struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(eventlog.EventLogError, match="data size 4294967280 exceeds") as caught:
        eventlog.parse_tcg_log(bytes(data))
    assert caught.value.where == f"offset {size_at:#x}"


def test_digest_count_must_match_spec_id() -> None:
    event = bytearray(FIRMWARE_EVENTS[0].encode())
    event[8:12] = struct.pack("<I", 1_000_000)
    with pytest.raises(eventlog.EventLogError, match="carries 1000000 digests"):
        eventlog.parse_tcg_log(spec_id_event() + bytes(event))


def test_undeclared_digest_algorithm() -> None:
    data = spec_id_event([(SHA1, 20), (0x000C, 48)]) + FIRMWARE_EVENTS[0].encode()
    with pytest.raises(eventlog.EventLogError, match="0x000b is not declared"):
        eventlog.parse_tcg_log(data)


def test_pcr_index_beyond_23() -> None:
    with pytest.raises(eventlog.EventLogError, match="PCR index 24 is beyond PCR 23"):
        eventlog.parse_tcg_log(build_log([Event(24, EV_IPL, b"x")]))


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (spec_id_event(signature=b"Spec ID Event02\x00"), "not a TCG crypto-agile event log"),
        (spec_id_event(signature=b"Spec ID Event00\x00"), "TPM 1.2"),
        (spec_id_event(count=0), "declares 0 algorithms"),
        (spec_id_event(count=70000), "declares 70000 algorithms"),
        (spec_id_event(count=3), "truncated"),
        (spec_id_event([(SHA256, 20)]), "gives sha256 a digest size of 20, not 32"),
        (spec_id_event([(0x0012, 0)]), "digest size of 0"),
        (spec_id_event([(0x0012, 4096)]), "digest size of 4096"),
        (spec_id_event([(SHA1, 20), (SHA1, 20)]), "declares algorithm 0x0004 twice"),
        (spec_id_event(trailing=b"\x01\x02"), "2 bytes follow the Spec ID vendor info"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_bad_spec_id(spec: bytes, problem: str) -> None:
    with pytest.raises(eventlog.EventLogError, match=problem):
        eventlog.parse_tcg_log(build_log(FIRMWARE_EVENTS, spec=spec))


def test_empty_and_non_tcg_input() -> None:
    with pytest.raises(eventlog.EventLogError, match="empty"):
        eventlog.parse_tcg_log(b"")
    with pytest.raises(eventlog.EventLogError, match="the Spec ID event needs 37 bytes"):
        eventlog.parse_tcg_log(spec_id_event()[:40])
    with pytest.raises(eventlog.EventLogError, match="Spec ID Event03"):
        eventlog.load_event_log(b"\x7fELF" + bytes(200))


def test_vendor_info_and_unknown_algorithm_are_read() -> None:
    spec = spec_id_event([(SHA256, 32), (0x0012, 32)], vendor=b"vendor!")
    sm3 = bytes(range(32))
    event = struct.pack("<III", 4, EV_IPL, 2) + struct.pack("<H", SHA256)
    event += hashlib.sha256(b"x").digest() + struct.pack("<H", 0x0012) + sm3
    event += struct.pack("<I", 1) + b"x"

    log = eventlog.parse_tcg_log(spec + event)

    assert log.banks == ("sha256",)
    assert log.algorithms == {"sha256": 32, "sm3_256": 32}
    assert log.events[1].digests["sm3_256"] == sm3
    assert (
        eventlog.replay(log)["sha256"][4]
        == hashlib.sha256(bytes(32) + hashlib.sha256(b"x").digest()).digest()
    )


def test_startup_locality_must_come_first_and_be_valid() -> None:
    late = (FIRMWARE_EVENTS[0], startup_locality(3))
    with pytest.raises(eventlog.EventLogError, match="before any extend of PCR 0"):
        eventlog.parse_tcg_log(build_log(late))
    with pytest.raises(eventlog.EventLogError, match="before any extend of PCR 0"):
        eventlog.parse_tcg_log(build_log((startup_locality(3), startup_locality(3))))
    with pytest.raises(eventlog.EventLogError, match="StartupLocality 7 is not 0-4"):
        eventlog.parse_tcg_log(build_log((startup_locality(7),)))
    short = Event(0, EV_NO_ACTION, b"StartupLocality\x00")
    with pytest.raises(eventlog.EventLogError, match="16 data bytes, not 17"):
        eventlog.parse_tcg_log(build_log((short,)))


# ---------------------------------------------------------------- cMCP JSON logs

BUNDLE = "sha256:" + "ab" * 32
GATEWAY_EVENT = {
    "pcr": 23,
    "bank": "sha256",
    "digest": "ab" * 32,
    "type": "cmcp-policy-bundle",
    "data": BUNDLE,
}


def test_cmcp_log_from_list_evidence_attestation_and_claim() -> None:
    evidence = {"attest": "AA==", "pcrs": {"sha256": {}}, "event_log": [GATEWAY_EVENT]}
    attestation = {"provider": "tpm", "evidence_type": "tpm2-quote-v1", "evidence": evidence}
    claim = {"cmcp_version": "1.0", "gateway": {"attestation": attestation}}
    for document in ([GATEWAY_EVENT], evidence, attestation, claim):
        log = eventlog.parse_cmcp_log(document)
        assert log.format == "cmcp"
        assert log.banks == ("sha256",)
        (event,) = log.events
        assert (event.pcr, event.event_type, event.description) == (
            23,
            "cmcp-policy-bundle",
            BUNDLE,
        )
        assert eventlog.replay(log) == {
            "sha256": {23: hashlib.sha256(bytes(32) + bytes.fromhex("ab" * 32)).digest()}
        }
    from_file = eventlog.load_event_log(b"\n  " + json.dumps(claim).encode())
    assert from_file.events == log.events


@pytest.mark.parametrize(
    ("document", "where", "problem"),
    [
        ({"gateway": {}}, "gateway", "no gateway.attestation"),
        (
            {"gateway": {"attestation": {"provider": "software", "evidence": {}}}},
            "gateway.attestation.evidence",
            "provider 'software'",
        ),
        ({"attest": "AA=="}, "JSON", "no event_log"),
        ({"event_log": {}}, "event_log", "not a list"),
        ([{**GATEWAY_EVENT, "pcr": 24}], "event_log[0].pcr", "PCR index"),
        ([{**GATEWAY_EVENT, "pcr": True}], "event_log[0].pcr", "PCR index"),
        ([GATEWAY_EVENT, {**GATEWAY_EVENT, "bank": "md5"}], "event_log[1].bank", "one of"),
        ([{**GATEWAY_EVENT, "digest": "ab" * 31}], "event_log[0].digest", "64 hex digits"),
        ([{**GATEWAY_EVENT, "digest": "zz" * 32}], "event_log[0].digest", "64 hex digits"),
        ([{**GATEWAY_EVENT, "type": ""}], "event_log[0].type", "non-empty"),
        ([{**GATEWAY_EVENT, "data": 5}], "event_log[0].data", "string"),
        ([{**GATEWAY_EVENT, "extra": 1}], "event_log[0]", "unknown members extra"),
        ([7], "event_log[0]", "not an object"),
    ],
)
def test_bad_cmcp_log(document: object, where: str, problem: str) -> None:
    with pytest.raises(eventlog.EventLogError, match=problem) as caught:
        eventlog.parse_cmcp_log(document)
    assert caught.value.where == where


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'{"event_log": [], "event_log": []}', "appears twice"),
        (b'[{"pcr": NaN}]', "NaN is not a JSON number"),
        (b'{"event_log": [', "not valid JSON"),
        (b"[\xff]", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_bad_json_text(text: bytes, problem: str) -> None:
    with pytest.raises(eventlog.EventLogError, match=problem):
        eventlog.load_event_log(text)
