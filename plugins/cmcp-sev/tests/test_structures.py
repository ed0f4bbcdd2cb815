"""Parsing the ATTESTATION_REPORT strictly: every version's layout, TCB layouts by product,
and refusals of wrong sizes, unknown versions and non-zero reserved fields."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cmcp_sev import structures as snp
from cmcp_sev.synthetic import TURIN_CPUID, ReportFields, report_body


def _report(fields: ReportFields) -> bytes:
    return bytes(report_body(fields)) + bytes(snp.REPORT_SIZE - snp.SIGNED_SIZE)


def test_genuine_milan_report_parses_as_its_manifest_states(vectors: Path) -> None:
    raw = (vectors / "gosev-milan-report.bin").read_bytes()
    report = snp.parse_report(raw)
    assert report.version == 2
    assert report.signature_algo == 1
    assert report.signing_key == snp.SigningKey.VCEK
    assert report.policy == 0xB0000
    assert report.debug
    assert report.policy_flags == ("SMT", "DEBUG")
    assert report.report_data == bytes.fromhex("0102030405") + bytes(59)
    assert report.measurement.hex().startswith("b07af962")
    assert report.measurement.hex().endswith("2b01")
    tcb = report.reported_tcb.decode(snp.Product.MILAN)
    assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc) == (2, 0, 5, 68, None)
    assert report.cpuid is None and report.mit_vectors is None
    assert str(report.current_version) == "1.49.3"
    assert report.signed_bytes == raw[:0x2A0]


@pytest.mark.parametrize("version", [3, 4, 5])
def test_later_versions_carry_cpuid_and_v5_the_mitigation_vectors(version: int) -> None:
    report = snp.parse_report(
        _report(ReportFields(version=version, cpuid=TURIN_CPUID, mit_vectors=(3, 7)))
    )
    assert report.cpuid == TURIN_CPUID
    assert report.cpuid_product is snp.Product.TURIN
    assert report.mit_vectors == ((3, 7) if version == 5 else None)


def test_turin_tcb_layout_has_an_fmc_byte() -> None:
    tcb = snp.Tcb(bytes([1, 2, 3, 4, 0, 0, 0, 9]))
    assert tcb.decode(snp.Product.TURIN) == snp.TcbParts(2, 3, 4, 9, fmc=1)
    with pytest.raises(snp.ReportFormatError, match="Milan layout reserves"):
        tcb.decode(snp.Product.MILAN)
    with pytest.raises(snp.ReportFormatError, match="Turin layout reserves"):
        snp.Tcb(bytes([0, 0, 0, 0, 0, 5, 0, 9])).decode(snp.Product.TURIN)


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [(0x19, 0x01, snp.Product.MILAN), (0x19, 0x11, snp.Product.GENOA),
     (0x19, 0xA0, snp.Product.GENOA), (0x1A, 0x02, snp.Product.TURIN),
     (0x17, 0x31, None), (0x1A, 0x50, None)],
)  # fmt: skip
def test_cpuid_products(family: int, model: int, product: snp.Product | None) -> None:
    assert snp.product_from_cpuid(family, model) is product


def _corrupt(offset: int, value: int, fields: ReportFields | None = None) -> bytes:
    data = bytearray(_report(fields or ReportFields()))
    data[offset] = value
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bytes(1183), "1184 bytes, these are 1183"),
        (_report(ReportFields()) + b"\x00", "these are 1185"),
        (_report(ReportFields(version=1)), "version 1 is not one"),
        (_report(ReportFields(version=6)), "version 6 is not one"),
        (_corrupt(0x034, 2), "SIGNATURE_ALGO is 2"),
        (_corrupt(0x030, 4), "VMPL is 4"),
        (_report(ReportFields(policy=0x10000)), "bit 17 is reserved and must be one"),
        (_report(ReportFields(policy=0x4030000)), "bits above 25"),
        (_corrupt(0x049, 1), "KEY_INFO"),
        (_corrupt(0x04D, 1), "reserved word after KEY_INFO"),
        (_corrupt(0x188, 1, ReportFields(version=2)), "after REPORTED_TCB"),
        (_corrupt(0x19F, 1), "after CPUID_STEP"),
        (_corrupt(0x1EB, 1), "after CURRENT_MAJOR"),
        (_corrupt(0x1EF, 1), "after COMMITTED_MAJOR"),
        (_corrupt(0x1F8, 1), "after LAUNCH_TCB"),
        (_corrupt(0x208, 1, ReportFields(version=5)), "after CURRENT_MIT_VECTOR"),
        (_corrupt(0x2A0 + 48, 1), "high bytes of signature R"),
        (_corrupt(0x2E8 + 71, 1), "high bytes of signature S"),
        (_corrupt(0x49F, 1), "reserved tail of the signature"),
    ],
)
def test_malformed_reports_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(snp.ReportFormatError, match=message):
        snp.parse_report(data)


def test_certificate_table_round_trip_and_refusals() -> None:
    table = snp.build_cert_table(
        {snp.GUID_VCEK: b"vcek", snp.GUID_ASK: b"ask", snp.GUID_ARK: b"ark"}
    )
    assert snp.parse_cert_table(table) == {"vcek": b"vcek", "ask": b"ask", "ark": b"ark"}
    # The mixed-endian GUID form is located too, and unknown GUIDs are skipped.
    other = struct.pack("<16sII", bytes(range(16)), 72, 1)
    mixed = struct.pack("<16sII", snp.GUID_VLEK.bytes_le, 73, 4)
    padded = other + mixed + bytes(24) + b"xVLEK"
    assert snp.parse_cert_table(padded) == {"vlek": b"VLEK"}
    with pytest.raises(snp.ReportFormatError, match="without its all-zero entry"):
        snp.parse_cert_table(struct.pack("<16sII", snp.GUID_ARK.bytes, 24, 1) + b"x")
    with pytest.raises(snp.ReportFormatError, match="points outside"):
        snp.parse_cert_table(struct.pack("<16sII", snp.GUID_ARK.bytes, 48, 99) + bytes(24))
    entry = struct.pack("<16sII", snp.GUID_ASK.bytes, 72, 1)
    with pytest.raises(snp.ReportFormatError, match="two ASK"):
        snp.parse_cert_table(entry + entry + bytes(24) + b"a")
