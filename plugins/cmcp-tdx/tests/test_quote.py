"""Parsing TDX DCAP quotes: v4 and v5 layouts, exact lengths, and clear refusals of what
cannot be verified offline (other certification data, a bare TDREPORT, SGX quotes)."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from cmcp_tdx import quote as tdx

Vector = Callable[[str], bytes]
SPR = "gotdx-spr-e4-quote-v4.dat"


def _as_v5(raw: bytes, body_type: int = 2, extra: bytes = b"") -> bytes:
    """The v4 quote re-laid out as v5 (the signature no longer covers it)."""
    head = struct.pack("<H", 5) + raw[2:48]
    body = raw[48:632] + extra
    return head + struct.pack("<HI", body_type, len(body)) + body + raw[632:]


def _signature_data(raw: bytes) -> tuple[bytes, bytes]:
    size = struct.unpack_from("<I", raw, 632)[0]
    return raw[:636], raw[636 : 636 + size]


def test_v4_fields(vector: Vector) -> None:
    parsed = tdx.parse_quote(vector(SPR))
    assert parsed.header.version == 4 and parsed.header.tee_type == 0x81
    assert parsed.header.qe_vendor_id == tdx.INTEL_QE_VENDOR_ID
    assert parsed.body_type == tdx.BODY_TYPE_TD10 and parsed.body.tee_tcb_svn2 is None
    assert len(parsed.signed) == 632 and parsed.trailing == 39
    assert parsed.pck_chain_pem.count(b"BEGIN CERTIFICATE") == 3
    assert len(parsed.qe_auth_data) == 32 and not parsed.body.debug


def test_v5_td10_and_td15_bodies(vector: Vector) -> None:
    raw = vector(SPR)
    v5 = tdx.parse_quote(_as_v5(raw))
    assert v5.header.version == 5 and v5.body == tdx.parse_quote(raw).body
    assert len(v5.signed) == 48 + 6 + 584
    td15 = tdx.parse_quote(_as_v5(raw, 3, bytes(range(16)) + b"\x07" * 48))
    assert td15.body.tee_tcb_svn2 == bytes(range(16)) and td15.body.mrservicetd == b"\x07" * 48
    assert len(td15.signed) == 48 + 6 + 648


@pytest.mark.parametrize(
    ("body_type", "extra", "fragment"),
    [(1, b"", "SGX enclave report"), (3, b"", "declares 584 bytes, not 648"), (9, b"", "unknown")],
)
def test_v5_bad_bodies_are_refused(
    vector: Vector, body_type: int, extra: bytes, fragment: str
) -> None:
    with pytest.raises(tdx.QuoteFormatError, match=fragment):
        tdx.parse_quote(_as_v5(vector(SPR), body_type, extra))


def test_a_bare_tdreport_is_refused() -> None:
    report = bytes([0x81, 0, 0, 0]) + bytes(1020)
    with pytest.raises(tdx.QuoteFormatError, match="bare 1024-byte TDREPORT"):
        tdx.parse_quote(report)


def test_an_sgx_quote_is_refused(vector: Vector) -> None:
    raw = struct.pack("<H", 3) + vector(SPR)[2:]
    with pytest.raises(tdx.QuoteFormatError, match="SGX enclave quote"):
        tdx.parse_quote(raw)


@pytest.mark.parametrize("cert_type", [1, 2, 3, 4, 5])
def test_other_certification_data_is_refused(vector: Vector, cert_type: int) -> None:
    head, signature_data = _signature_data(vector(SPR))
    changed = signature_data[:128] + struct.pack("<H", cert_type) + signature_data[130:]
    with pytest.raises(tdx.QuoteFormatError, match=f"type {cert_type}"):
        tdx.parse_quote(head + changed)


def test_inner_certification_data_must_be_the_pck_chain(vector: Vector) -> None:
    raw = bytearray(vector(SPR))
    inner = 636 + 134 + 384 + 64 + 2 + 32
    assert struct.unpack_from("<H", raw, inner)[0] == tdx.CERT_PCK_CHAIN
    struct.pack_into("<H", raw, inner, 4)
    with pytest.raises(tdx.QuoteFormatError, match="PCK leaf certificate alone"):
        tdx.parse_quote(bytes(raw))


@pytest.mark.parametrize(
    ("where", "delta", "fragment"),
    [
        (632, 1, "only .* follow"),  # signature data length past the end
        (636 + 130, 1, "certification data declares"),
        (636 + 134 + 384 + 64 + 2 + 32 + 2, -1, "PCK certificate chain declares"),
    ],
)
def test_lengths_are_checked_exactly(vector: Vector, where: int, delta: int, fragment: str) -> None:
    raw = bytearray(vector(SPR))
    raw = raw[: len(raw) - tdx.parse_quote(bytes(raw)).trailing]
    struct.pack_into("<I", raw, where, struct.unpack_from("<I", raw, where)[0] + delta)
    with pytest.raises(tdx.QuoteFormatError, match=fragment):
        tdx.parse_quote(bytes(raw))


@pytest.mark.parametrize("size", [0, 10, 47, 100, 700])
def test_truncated_quotes_are_refused(vector: Vector, size: int) -> None:
    with pytest.raises(tdx.QuoteFormatError):
        tdx.parse_quote(vector(SPR)[:size])
