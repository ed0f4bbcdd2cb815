"""The SPDM 1.1 exchange, NVIDIA's opaque TLVs and the evidence JSON are parsed strictly:
every other version, code, parameter, length or layout is refused with the reason, and
`gpu.format` fails with it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from cmcp_cli.attestation.api import TrustInputs
from cmcp_cli.testing.verdicts import assert_fails
from cmcp_gpucc import opaque, spdm, synthetic
from cmcp_gpucc.evidence import decode, encode
from cmcp_gpucc.rim_signing import AT
from cmcp_gpucc.synthetic import DevicePki, ReportFields
from cmcp_gpucc.verifier import GpuVerifier

NONCE = bytes(range(32))
FWID = bytes(48)
SIGNATURE = bytes(96)  # parsing never looks at the signature's value


def body(fields: ReportFields | None = None) -> bytes:
    return synthetic.unsigned_report(NONCE, fields or ReportFields(), FWID)


def report(fields: ReportFields | None = None) -> bytes:
    return body(fields) + SIGNATURE


def edit(at: int, value: int) -> Callable[[bytes], bytes]:
    def change(raw: bytes) -> bytes:
        changed = bytearray(raw)
        changed[at] = value
        return bytes(changed)

    return change


RECORD = 45  # where the measurement record starts: 37-byte request, 8-byte response header


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (edit(0, 0x10), "SPDM version 0x10; only SPDM 1.1"),
        (edit(0, 0x12), "SPDM version 0x12; only SPDM 1.1"),
        (edit(1, 0xE1), "request code"),
        (edit(2, 0x00), "Param1"),
        (edit(3, 0x05), "Param2"),
        (edit(36, 0x01), "slot id is 0x01"),
        (edit(37, 0x12), "response is SPDM version 0x12"),
        (edit(38, 0x7F), "response code"),
        (edit(39, 0x01), "response's Param1"),
        (edit(40, 0x01), "response's slot id"),
        (edit(41, 0), "no measurement block"),
        (edit(41, 65), "cut short"),
        (edit(41, 63), "its 63 blocks take"),
        (edit(RECORD, 0), "reserved index 0"),
        (edit(RECORD, 0xFF), "reserved index 255"),
        (edit(RECORD + 55, 1), "index 1 appears twice"),
        (edit(RECORD + 1, 0x02), "specification"),
        (edit(RECORD + 4, 0x81), "not a 48-byte SHA-384 digest"),
        (edit(RECORD + 5, 47), "says its value is 47 bytes"),
        (lambda raw: raw[:-97], "cut short"),
        (lambda raw: raw + b"\0", "more than its lengths account for"),
        (lambda raw: raw[:300], "cut short"),
        (lambda raw: raw[: spdm.REQUEST_SIZE + spdm.SIGNATURE_SIZE], "too short"),
    ],
)
def test_the_exchange_is_refused_unless_exactly_spdm_1_1(
    change: Callable[[bytes], bytes], fragment: str
) -> None:
    with pytest.raises(spdm.SpdmError) as refused:
        spdm.parse(change(report()))
    assert fragment in str(refused.value)


def test_an_oversized_opaque_length_is_refused() -> None:
    raw = report()
    exchange = spdm.parse(raw)
    where = len(raw) - spdm.SIGNATURE_SIZE - len(exchange.opaque) - 2
    changed = raw[:where] + (1025).to_bytes(2, "little") + raw[where + 2 :]
    with pytest.raises(spdm.SpdmError, match="more than SPDM's 1024"):
        spdm.parse(changed)


def test_the_parse_keeps_what_the_gpu_signed() -> None:
    fields = ReportFields()
    exchange = spdm.parse(report(fields))
    assert exchange.requester_nonce == NONCE and exchange.slot == 0
    assert dict(exchange.digests()) == dict(fields.blocks)
    assert exchange.signed == body(fields) and exchange.signature == SIGNATURE
    data = opaque.parse(exchange.opaque)
    assert (data.driver_version, data.vbios_version) == (synthetic.DRIVER, synthetic.VBIOS_TEXT)
    assert data.nvdec0_enabled is False and data.fwid == FWID and data.mode == "ppcie"


def tlv(kind: int, value: bytes) -> bytes:
    return kind.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


DRIVER = tlv(3, b"550.90.07\0")
VBIOS = tlv(6, bytes.fromhex("009f009601000000"))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (DRIVER, "no VBIOS version"),
        (VBIOS, "no driver version"),
        (DRIVER + VBIOS + DRIVER, "field 3 appears twice"),
        (DRIVER + VBIOS + b"\x01\x00", "stray byte"),
        (DRIVER + VBIOS + tlv(9, b"ab")[:-1], "says 2 bytes but 1 remain"),
        (tlv(3, b"550.90\x0007\0") + VBIOS, "not printable ASCII"),
        (tlv(3, b"\0\0") + VBIOS, "not printable ASCII"),
        (DRIVER + tlv(6, bytes(7)), "VBIOS version field is 7 bytes"),
        (DRIVER + VBIOS + tlv(11, b"\x00"), "NVDEC0 status is 00"),
        (DRIVER + VBIOS + tlv(11, b"\xaa\xaa"), "NVDEC0 status is aaaa"),
        (DRIVER + VBIOS + tlv(20, bytes(32)), "FWID is 32 bytes"),
        (DRIVER + VBIOS + tlv(34, b""), "field 34 is 0 bytes"),
        (DRIVER + VBIOS + tlv(36, bytes(9)), "field 36 is 9 bytes"),
    ],
)
def test_the_opaque_data_is_refused_unless_well_formed(data: bytes, fragment: str) -> None:
    with pytest.raises(opaque.OpaqueError) as refused:
        opaque.parse(data)
    assert fragment in str(refused.value)


def test_the_vbios_version_is_printed_as_nvidia_prints_it() -> None:
    assert opaque.vbios_version(bytes.fromhex("005e009601000000")) == "96.00.5E.00.01"
    assert opaque.vbios_version(bytes.fromhex("008800970f000000")) == "97.00.88.00.0F"
    data = opaque.parse(DRIVER + VBIOS + tlv(99, b"future field"))
    assert data.fields[99] == b"future field"  # NVIDIA adds fields; unknown ones are kept


CHAIN = DevicePki.create().chain


def good() -> dict[str, Any]:
    return synthetic.evidence(report(), CHAIN)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda e: e.update(extra=1), "unknown member(s) extra"),
        (lambda e: e.pop("report"), "report must be a non-empty base64 string"),
        (lambda e: e.update(report=e["report"].rstrip("=")), "not standard base64"),
        (lambda e: e.pop("certificates"), "certificates (the device chain NVML returned)"),
        (lambda e: e.update(certificates=[]), "certificates must be a list of 1 to 8"),
        (lambda e: e.pop("nvml"), "nvml (what NVML said about the GPU) is missing"),
        (
            lambda e: e["nvml"].update(index=0, uuid="GPU-0"),
            "nvml has unknown member(s) index, uuid",
        ),
        (lambda e: e["nvml"].pop("cc_mode"), "nvml lacks cc_mode"),
        (lambda e: e["nvml"].update(cc_mode="ON"), "nvml.cc_mode must be one of on, devtools, off"),
        (lambda e: e["nvml"].update(driver_version=550), "nvml.driver_version must be printable"),
        (
            lambda e: e["nvml"].update(vbios_version=" 96.00"),
            "nvml.vbios_version must be printable",
        ),
        (lambda e: e.update(rims={}), "rims must be an object"),
        (lambda e: e.update(rims={"firmware": encode(b"<x/>")}), "rims must be an object"),
        (lambda e: e.update(rims={"driver": "<x/>"}), "rims.driver is not standard base64"),
        (lambda e: e.update(ocsp=[]), "ocsp must be a list of 1 to 16"),
        (lambda e: e.update(ocsp=["AA=="] * 17), "ocsp must be a list of 1 to 16"),
    ],
)
def test_the_evidence_json_is_refused_unless_well_formed(
    change: Callable[[dict[str, Any]], object], fragment: str
) -> None:
    evidence = good()
    change(evidence)
    problems = decode(evidence).problems
    assert any(fragment in problem for problem in problems), problems
    verdict = GpuVerifier().verify(evidence, TrustInputs(binding=NONCE, at=AT))
    assert_fails(verdict, "gpu.format", fragment)


def test_well_formed_evidence_decodes_without_problems() -> None:
    evidence = good()
    evidence["rims"] = {"driver": encode(b"<a/>"), "vbios": encode(b"<b/>")}
    evidence["ocsp"] = [base64.b64encode(b"\x30\x00").decode()]
    decoded = decode(evidence)
    assert decoded.problems == []
    assert decoded.rims == {"driver": b"<a/>", "vbios": b"<b/>"} and decoded.ocsp == [b"\x30\x00"]
