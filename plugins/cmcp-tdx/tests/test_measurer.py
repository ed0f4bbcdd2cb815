"""`cmcp measure tdx`: MRTD from Debian's OVMF (cross-checked against an independent
computation below), RTMRs from the genuine CCEL log, registers given directly, and the
refusals that name the options."""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cmcp_cli.attestation.api import MeasureInputs, ProviderError
from cmcp_tdx import tdvf
from cmcp_tdx.measurement import measurement_string
from cmcp_tdx.measurer import TdxMeasurer
from cmcp_tdx.quote import parse_quote

Vector = Callable[[str], bytes]
OVMF = Path("/usr/share/ovmf/OVMF.fd")  # Debian's ovmf package; its build carries TDX metadata
ZERO = "00" * 48


def _firmware() -> bytes:
    if not OVMF.is_file():
        pytest.skip(f"{OVMF} is not installed (Debian: apt-get install ovmf)")
    return OVMF.read_bytes()


def _independent_mrtd(image: bytes, two_pass: bool = False) -> bytes:
    """A second, deliberately plain reading: find the metadata GUID in the image's last
    page, build the whole measured byte stream, hash it once."""
    guid = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
    at = image.rindex(guid, len(image) - 4096)
    metadata = len(image) - int.from_bytes(image[at - 6 : at - 2], "little")  # data, u16, GUID
    assert image[metadata : metadata + 4] == b"TDVF"
    count = int.from_bytes(image[metadata + 12 : metadata + 16], "little")
    stream = bytearray()
    for n in range(count):
        fields = struct.unpack("<IIQQII", image[metadata + 16 + 32 * n : metadata + 48 + 32 * n])
        offset, _raw, gpa, size, _kind, attributes = fields
        adds, extends = bytearray(), bytearray()
        for page in range(size // 4096):
            add = bytearray(128)
            add[0:12] = b"MEM.PAGE.ADD"
            add[16:24] = (gpa + page * 4096).to_bytes(8, "little")
            extend = bytearray()
            if attributes & 1:
                for chunk in range(16):
                    header = bytearray(128)
                    header[0:9] = b"MR.EXTEND"
                    header[16:24] = (gpa + page * 4096 + chunk * 256).to_bytes(8, "little")
                    start = offset + page * 4096 + chunk * 256
                    extend += header + image[start : start + 256]
            if not attributes & 2:
                adds += add
            if two_pass:
                extends += extend
            else:
                adds += extend
        stream += adds + extends
    return hashlib.sha384(bytes(stream)).digest()


def _measure(**values: str) -> tuple[str, dict[str, object]]:
    result = TdxMeasurer().measure(
        MeasureInputs(values={name.replace("_", "-"): (value,) for name, value in values.items()})
    )
    return result.measurement, dict(result.details)


def test_mrtd_of_debian_ovmf_matches_an_independent_computation() -> None:
    image = _firmware()
    assert tdvf.mrtd(image) == _independent_mrtd(image)
    assert tdvf.mrtd(image, "two-pass") == _independent_mrtd(image, two_pass=True)
    assert tdvf.mrtd(image) != tdvf.mrtd(image, "two-pass")
    measured, details = _measure(firmware=str(OVMF), rtmr0=ZERO, rtmr1=ZERO, rtmr2=ZERO, rtmr3=ZERO)
    assert details["mrtd"] == _independent_mrtd(image).hex()
    assert measured == measurement_string(_independent_mrtd(image), [bytes(48)] * 4)


def test_event_log_gives_the_cos113_rtmrs(vector: Vector, tmp_path: Path) -> None:
    log = tmp_path / "CCEL"
    log.write_bytes(vector("gotdx-cos113-ccel-data.dat"))
    body = parse_quote(vector("gotdx-cos113-quote-v4.dat")).body
    measured, details = _measure(mrtd=body.mrtd.hex(), event_log=str(log))
    assert measured == measurement_string(body.mrtd, body.rtmrs)
    assert details["rtmr3"] == body.rtmrs[3].hex() and details["events"] == 43


def test_the_measurement_is_what_the_verifier_reports(vector: Vector) -> None:
    body = parse_quote(vector("gotdx-spr-e4-quote-v4.dat")).body
    registers = {f"rtmr{n}": value.hex() for n, value in enumerate(body.rtmrs)}
    measured, _ = _measure(mrtd=body.mrtd.hex(), **registers)
    expected = hashlib.sha384(body.mrtd + b"".join(body.rtmrs)).hexdigest()
    assert measured == "sha384:" + expected


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"rtmr0": ZERO, "rtmr1": ZERO, "rtmr2": ZERO, "rtmr3": ZERO}, "MRTD is unknown"),
        ({"mrtd": ZERO, "firmware": "/x", "rtmr0": ZERO}, "both give MRTD"),
        ({"mrtd": ZERO, "rtmr0": ZERO}, "missing --rtmr1, --rtmr2, --rtmr3"),
        ({"mrtd": "abc", "rtmr0": ZERO}, "not a 48-byte register"),
        ({"mrtd": ZERO, "event_log": "/nonexistent", "rtmr1": ZERO}, "both give RTMRs"),
        ({"mrtd": ZERO, "event_log": "/nonexistent"}, "cannot be read"),
        ({"mrtd": ZERO, "page_order": "single"}, "only to --firmware"),
        ({"firmware": "/nonexistent", "page_order": "random"}, "not single or two-pass"),
    ],
)
def test_unusable_inputs_name_the_option(values: dict[str, str], fragment: str) -> None:
    with pytest.raises(ProviderError, match=fragment):
        _measure(**values)


def test_a_non_tdx_image_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "plain.fd"
    image.write_bytes(bytes(8192))
    with pytest.raises(ProviderError, match="no OVMF GUIDed table"):
        _measure(firmware=str(image), rtmr0=ZERO, rtmr1=ZERO, rtmr2=ZERO, rtmr3=ZERO)


def test_an_image_without_tdx_metadata_is_refused(tmp_path: Path) -> None:
    footer = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
    table = struct.pack("<H", 18) + footer
    image = tmp_path / "nontdx.fd"
    image.write_bytes(bytes(4096) + table + bytes(32))
    with pytest.raises(ProviderError, match="not built for TDX"):
        _measure(firmware=str(image), rtmr0=ZERO, rtmr1=ZERO, rtmr2=ZERO, rtmr3=ZERO)
