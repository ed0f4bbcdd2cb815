"""The TDREPORT's bytes that no quote repeats: offline nothing signs them, so the genuine
TDX report's are accepted only as the TDX module writes them, and a flipped one is refused."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from cmcp_azure import hcl, tdreport


@pytest.fixture(scope="module")
def genuine(azure_vectors: Path) -> bytes:
    report = hcl.parse((azure_vectors / "trustee-tdx-hcl-report.bin").read_bytes())
    return report.hardware_report


def flipped(report: bytes, at: int) -> bytes:
    changed = bytearray(report)
    changed[at] ^= 0x01
    return bytes(changed)


def test_the_genuine_tdreport_is_self_consistent(genuine: bytes) -> None:
    assert hashlib.sha384(genuine[256:495]).digest() == genuine[32:80]
    assert hashlib.sha384(genuine[512:1024]).digest() == genuine[80:128]
    assert tdreport.body_of(genuine).mrtd == genuine[528:576]


@pytest.mark.parametrize(
    ("at", "fragment"),
    [
        (5, "reserved bytes [4:16] are not zero"),
        (200, "reserved bytes [192:224] are not zero"),
        (500, "reserved bytes [495:512] are not zero"),
        (40, "TEE_TCB_INFO_HASH is not the SHA-384 of its TEE_TCB_INFO"),
        (256 + 130, "TEE_TCB_INFO_HASH"),  # TEE_TCB_SVN2, which no quote v4 body repeats
        (90, "TEE_INFO_HASH is not the SHA-384 of its TDINFO"),
        (1000, "TEE_INFO_HASH"),  # TDINFO's reserved tail
    ],
)
def test_a_flipped_byte_no_quote_repeats_is_refused(genuine: bytes, at: int, fragment: str) -> None:
    with pytest.raises(tdreport.TdReportFormatError, match=fragment.replace("[", r"\[")):
        tdreport.body_of(flipped(genuine, at))


def test_a_built_tdreport_states_its_body_and_its_hashes(genuine: bytes) -> None:
    body = dataclasses.replace(tdreport.body_of(genuine), mrtd=bytes(range(48)))
    built = tdreport.build(body)
    assert tdreport.body_of(built) == body
    assert hashlib.sha384(built[512:1024]).digest() == built[80:128]
