"""A quote for a TDREPORT from the host's Quote Generation Service (Intel DCAP QGS), asked
for the way libtdx_attest does on kernels without configfs-tsm.

Transport: one stream connection per request, to AF_VSOCK (the host, as the TD sees it) or
AF_UNIX. Each message is framed by its length as a 4-byte big-endian integer. The messages
(Intel's qgs_msg_lib) are little-endian:

    header              major_version u16 (1), minor_version u16, type u32,
                        size u32 (the whole message, header included), error_code u32
    GET_QUOTE_REQ (0)   header, report_size u32 (1024), id_list_size u32 (0), TDREPORT
    GET_QUOTE_RESP (1)  header (error_code 0 = success), selected_id_size u32,
                        quote_size u32, the selected id, then the quote

One deadline bounds the whole exchange, and every length the QGS declares is checked
against the frame and a bound before anything is read into memory, so a broken or hostile
QGS yields a ProviderError, never a hang or an unbounded read.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Final

from cmcp_cli.attestation.api import ProviderError
from cmcp_tdx.settings import SECTION, QgsAddress, UnixAddress

FRAME: Final = struct.Struct(">I")
HEADER: Final = struct.Struct("<HHIII")
QUOTE_REQ: Final = struct.Struct("<II")  # report_size, id_list_size
QUOTE_RESP: Final = struct.Struct("<II")  # selected_id_size, quote_size
MAJOR_VERSION: Final = 1
MINOR_VERSION: Final = 0  # QGS 1.1 answers 1.0 requests; any 1.x answer is read
GET_QUOTE_REQ: Final = 0
GET_QUOTE_RESP: Final = 1
MAX_QUOTE: Final = 1 << 16
MAX_SELECTED_ID: Final = 1 << 10
MAX_RESPONSE: Final = HEADER.size + QUOTE_RESP.size + MAX_SELECTED_ID + MAX_QUOTE
QGS_ERRORS: Final = {
    0x12001: "QGS_MSG_ERROR_UNEXPECTED",
    0x12002: "QGS_MSG_ERROR_OUT_OF_MEMORY",
    0x12003: "QGS_MSG_ERROR_INVALID_PARAMETER",
    0x12004: "QGS_MSG_ERROR_INVALID_VERSION",
    0x12005: "QGS_MSG_ERROR_INVALID_TYPE",
    0x12006: "QGS_MSG_ERROR_INVALID_SIZE",
    0x12007: "QGS_MSG_ERROR_INVALID_CODE",
}
_QGS_LOG_HINT: Final = (
    "see the QGS's log on the host (qgsd, or the service running it): it needs a reachable "
    "PCCS and a registered platform to sign quotes"
)


def encode_request(tdreport: bytes) -> bytes:
    """The framed GET_QUOTE_REQ for `tdreport`, with an empty id list."""
    size = HEADER.size + QUOTE_REQ.size + len(tdreport)
    message = (
        HEADER.pack(MAJOR_VERSION, MINOR_VERSION, GET_QUOTE_REQ, size, 0)
        + QUOTE_REQ.pack(len(tdreport), 0)
        + tdreport
    )
    return FRAME.pack(len(message)) + message


def decode_response(message: bytes, address: QgsAddress) -> bytes:
    """The quote of an (unframed) GET_QUOTE_RESP; `ProviderError` says what is wrong."""
    where = f"the QGS at {address}"
    if len(message) < HEADER.size:
        raise _malformed(f"{where} sent a {len(message)}-byte message, shorter than a header")
    major, minor, kind, size, error_code = HEADER.unpack_from(message)
    if major != MAJOR_VERSION:
        raise ProviderError(
            f"{where} speaks message version {major}.{minor}, not {MAJOR_VERSION}.x",
            hint=f"run Intel DCAP's QGS (qgs_msg {MAJOR_VERSION}.x) there, or set {SECTION}.qgs",
        )
    if kind != GET_QUOTE_RESP:
        raise _malformed(f"{where} answered with message type {kind}, not GET_QUOTE_RESP (1)")
    if size != len(message):
        raise _malformed(
            f"{where} sent a message that declares {size} bytes in a {len(message)}-byte frame"
        )
    if error_code != 0:
        name = QGS_ERRORS.get(error_code, "an error of the quote generation library")
        raise ProviderError(
            f"{where} could not make a quote: error 0x{error_code:x} ({name})",
            hint=_QGS_LOG_HINT,
        )
    if len(message) < HEADER.size + QUOTE_RESP.size:
        raise _malformed(f"{where} sent a {len(message)}-byte GET_QUOTE_RESP, cut short")
    id_size, quote_size = QUOTE_RESP.unpack_from(message, HEADER.size)
    if HEADER.size + QUOTE_RESP.size + id_size + quote_size != len(message):
        raise _malformed(
            f"{where} declares a {id_size}-byte selected id and a {quote_size}-byte quote, "
            f"which do not fill its {len(message)}-byte message exactly"
        )
    if id_size > MAX_SELECTED_ID or not 0 < quote_size <= MAX_QUOTE:
        raise _malformed(
            f"{where} returned a {quote_size}-byte quote and a {id_size}-byte selected id: "
            f"a quote is 1 to {MAX_QUOTE} bytes, an id at most {MAX_SELECTED_ID}"
        )
    return message[HEADER.size + QUOTE_RESP.size + id_size :]


def _malformed(problem: str) -> ProviderError:
    return ProviderError(
        problem, hint=f"the QGS must speak Intel's qgs_msg protocol; {_QGS_LOG_HINT}"
    )


def get_quote(address: QgsAddress, tdreport: bytes, timeout: float) -> bytes:
    """The QGS's quote for `tdreport`, within `timeout` seconds for the whole exchange."""
    deadline = time.monotonic() + timeout
    with _connect(address, deadline, timeout) as sock:
        try:
            _until(sock, deadline)
            sock.sendall(encode_request(tdreport))
            head = _receive(sock, FRAME.size, deadline, address, "its answer's length")
            (length,) = FRAME.unpack(head)
            if not HEADER.size <= length <= MAX_RESPONSE:
                raise _malformed(
                    f"the QGS at {address} announced a {length}-byte answer: a quote "
                    f"response is {HEADER.size} to {MAX_RESPONSE} bytes"
                )
            message = _receive(sock, length, deadline, address, "its answer")
        except TimeoutError:
            raise _timed_out(address, timeout) from None
        except OSError as error:
            raise ProviderError(
                f"the connection to the QGS at {address} failed: {error.strerror or error}",
                hint=_QGS_LOG_HINT,
            ) from None
    return decode_response(message, address)


def _connect(address: QgsAddress, deadline: float, timeout: float) -> socket.socket:
    family: int
    target: str | tuple[int, int]
    if isinstance(address, UnixAddress):
        family, target = socket.AF_UNIX, str(address.path)
    else:
        vsock = getattr(socket, "AF_VSOCK", None)
        if not isinstance(vsock, int):
            raise ProviderError(
                f"this Python has no AF_VSOCK sockets, so the QGS at {address} cannot be asked",
                hint=f"run the gateway on Linux, or set {SECTION}.qgs to a unix: address",
            )
        family, target = vsock, (address.cid, address.port)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise ProviderError(
            f"cannot open a socket to reach the QGS at {address}: {error.strerror or error}",
            hint="vsock needs the guest's virtio vsock driver (vmw_vsock_virtio_transport) "
            "and a vsock device on the TD",
        ) from None
    try:
        _until(sock, deadline)
        sock.connect(target)
    except TimeoutError:
        sock.close()
        raise _timed_out(address, timeout) from None
    except OSError as error:
        sock.close()
        raise ProviderError(
            f"the QGS at {address} is not reachable: {error.strerror or error}",
            hint=_unreachable_hint(address),
        ) from None
    return sock


def _unreachable_hint(address: QgsAddress) -> str:
    if isinstance(address, UnixAddress):
        return f"start the QGS listening on {address.path}, or set {SECTION}.qgs"
    return (
        f"run Intel's QGS on the host with vsock port {address.port} open to the TD (QEMU: "
        "-device vhost-vsock-pci,guest-cid=N), or set "
        f"{SECTION}.qgs to where it listens; a kernel with configfs-tsm (6.7+) needs no "
        "vsock path"
    )


def _timed_out(address: QgsAddress, timeout: float) -> ProviderError:
    return ProviderError(
        f"the QGS at {address} did not answer within {timeout:g} s",
        hint=f"check the QGS on the host is running and reaches its PCCS, or raise "
        f"{SECTION}.qgs_timeout",
    )


def _until(sock: socket.socket, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)


def _receive(
    sock: socket.socket, size: int, deadline: float, address: QgsAddress, what: str
) -> bytes:
    data = bytearray()
    while len(data) < size:
        _until(sock, deadline)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _malformed(
                f"the QGS at {address} closed the connection after {len(data)} of the "
                f"{size} bytes of {what}"
            )
        data += chunk
    return bytes(data)
