"""The QGS client against a real Unix-socket QGS stand-in: the exact request bytes, the
genuine quote coming back, and every malformed, failing, absent or silent QGS refused
with a ProviderError that names the address."""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cmcp_cli.attestation.api import ProviderError
from cmcp_tdx import qgs
from cmcp_tdx.settings import UnixAddress, VsockAddress
from cmcp_tdx.testing import Answer, FakeQgs, qgs_response, socket_dir

Vector = Callable[[str], bytes]
TDREPORT = bytes(range(256)) * 4
TIMEOUT = 5.0


@pytest.fixture
def path() -> Iterator[Path]:
    with socket_dir() as directory:
        yield directory / "qgs.sock"


def _ask(path: Path, answer: Answer, timeout: float = TIMEOUT) -> tuple[bytes, FakeQgs]:
    with FakeQgs(path, answer) as server:
        quote = qgs.get_quote(UnixAddress(path), TDREPORT, timeout)
    assert server.problems == []
    return quote, server


def _refused(path: Path, answer: Answer, fragment: str) -> ProviderError:
    with FakeQgs(path, answer) as server, pytest.raises(ProviderError, match=fragment) as raised:
        qgs.get_quote(UnixAddress(path), TDREPORT, TIMEOUT)
    assert server.problems == []
    assert f"unix:{path}" in raised.value.message
    return raised.value


def test_the_request_is_framed_exactly(path: Path, vector: Vector) -> None:
    quote = vector("gotdx-cos113-quote-v4.dat")
    got, server = _ask(path, lambda _request: qgs_response(quote))
    assert got == quote
    expected = (
        bytes.fromhex("00000418")  # frame: 1048 bytes, big-endian
        + bytes.fromhex("0100 0000 00000000 18040000 00000000")  # 1.0, GET_QUOTE_REQ, 1048, 0
        + bytes.fromhex("00040000 00000000")  # report_size 1024, id_list_size 0
        + TDREPORT
    )
    assert server.requests == [expected]
    assert qgs.encode_request(TDREPORT) == expected


def test_a_qgs_1_1_answer_and_a_selected_id_are_read(path: Path) -> None:
    answer = qgs_response(b"QUOTE", minor=1, selected_id=b"id-bytes")
    assert _ask(path, lambda _request: answer)[0] == b"QUOTE"


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (0x12003, r"error 0x12003 \(QGS_MSG_ERROR_INVALID_PARAMETER\)"),
        (0x12001, r"error 0x12001 \(QGS_MSG_ERROR_UNEXPECTED\)"),
        (0xE011, r"error 0xe011 \(an error of the quote generation library\)"),
        (0x11001, r"error 0x11001"),
    ],
)
def test_a_qgs_error_is_reported_with_its_code(path: Path, code: int, fragment: str) -> None:
    error = _refused(path, lambda _request: qgs_response(b"", error_code=code), fragment)
    assert error.hint is not None and "log" in error.hint


def _with_size(answer: bytes, size: int) -> bytes:
    return answer[:12] + struct.pack("<I", size) + answer[16:]


P = pytest.param
MALFORMED = [
    P(qgs_response(b"Q", major=2), r"message version 2\.0, not 1\.x", id="major 2"),
    P(qgs_response(b"Q", kind=0), "message type 0, not GET_QUOTE_RESP", id="a request"),
    P(qgs_response(b"Q", kind=3), "message type 3", id="type 3"),
    P(_with_size(qgs_response(b"Q"), 99), "declares 99 bytes in a 25-byte frame", id="size"),
    P(qgs_response(b"Q")[:-1], "after 24 of the 25 bytes of its answer$", id="cut short"),
    P(qgs_response(b"Q")[:2], "after 2 of the 4 bytes of its answer's length", id="cut frame"),
    P(b"", "after 0 of the 4 bytes", id="no answer"),
    P(bytes.fromhex("7fffffff") + bytes(64), "announced a 2147483647-byte answer", id="2 GiB"),
    P(qgs_response(bytes(qgs.MAX_RESPONSE)), "announced a 66608-byte answer", id="frame bound"),
    P(bytes.fromhex("00000008") + bytes(8), "announced a 8-byte answer", id="tiny frame"),
    P(qgs_response(b""), "0-byte quote", id="empty quote"),
    P(qgs_response(bytes(qgs.MAX_QUOTE + 1)), "65537-byte quote", id="quote bound"),
    P(
        qgs_response(b"Q", selected_id=bytes(qgs.MAX_SELECTED_ID + 1)),
        "1025-byte selected id",
        id="id bound",
    ),
    P(qgs_response(b"Q")[:24] + struct.pack("<I", 9) + b"Q", "do not fill", id="quote size"),
]


@pytest.mark.parametrize(("answer", "fragment"), MALFORMED)
def test_malformed_answers_are_refused(path: Path, answer: bytes, fragment: str) -> None:
    error = _refused(path, lambda _request: answer, fragment)
    assert error.hint is not None


def test_a_short_message_inside_its_frame_is_refused() -> None:
    address = UnixAddress(Path("/run/qgs.sock"))
    with pytest.raises(ProviderError, match="shorter than a header"):
        qgs.decode_response(bytes(8), address)
    header_only = struct.pack("<HHIII", 1, 0, 1, 16, 0)
    with pytest.raises(ProviderError, match="16-byte GET_QUOTE_RESP, cut short"):
        qgs.decode_response(header_only, address)


def test_an_absent_qgs_is_named_with_the_fix(path: Path) -> None:
    with pytest.raises(
        ProviderError, match=re.escape(f"the QGS at unix:{path} is not reachable")
    ) as raised:
        qgs.get_quote(UnixAddress(path), TDREPORT, TIMEOUT)
    assert raised.value.hint is not None and f"listening on {path}" in raised.value.hint


def test_a_vsock_qgs_that_is_not_there_is_refused_in_time() -> None:
    # CID 1 is this machine: nothing listens on the port (or vsock is absent altogether)
    address = VsockAddress(1, 40_999)
    started = time.monotonic()
    with pytest.raises(ProviderError, match="vsock:1:40999"):
        qgs.get_quote(address, TDREPORT, 0.5)
    assert time.monotonic() - started < TIMEOUT


def test_a_qgs_that_never_answers_times_out(path: Path) -> None:
    with FakeQgs(path, lambda _request: None) as server:
        started = time.monotonic()
        with pytest.raises(ProviderError, match=r"did not answer within 0\.3 s") as raised:
            qgs.get_quote(UnixAddress(path), TDREPORT, 0.3)
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3
    assert raised.value.hint is not None and "qgs_timeout" in raised.value.hint
    assert len(server.requests) == 1  # it did receive the request
