"""TPM 2.0 commands and responses as bytes on the wire (TPM 2.0 Part 3), for the paravisor
double: reading one message off a stream, recognising the guest's read of the HCL report,
and the few commands the double sends on the guest's connection itself (NV_ReadPublic,
NV_Read and NV_Write with an empty password). Nothing here is used by the collector.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final

from cmcp_cli.testing.service import recv_exactly

ST_NO_SESSIONS: Final = 0x8001
ST_SESSIONS: Final = 0x8002
CC_NV_WRITE: Final = 0x00000137
CC_NV_READ: Final = 0x0000014E
CC_NV_READ_PUBLIC: Final = 0x00000169
RH_OWNER: Final = 0x40000001
RH_PLATFORM: Final = 0x4000000C
RS_PW: Final = 0x40000009
HEADER: Final = struct.Struct(">HII")  # tag, size, command code or response code
MAX_MESSAGE: Final = 4096  # TPM_PT_MAX_COMMAND_SIZE/RESPONSE_SIZE of swtpm
# TPM_RC_HANDLE (format 1, 0x0B): an NV_ReadPublic of an index that is not defined.
_RC_FMT1: Final = 0x080
_RC_HANDLE: Final = 0x00B
_RC_NV_UNINITIALIZED: Final = 0x14A  # NV_Read of an index never written
# An authorization area of one password session with an empty password.
_PASSWORD: Final = struct.pack(">IHBH", RS_PW, 0, 0, 0)


class WireError(RuntimeError):
    """A message that breaks the framing, or a TPM that refused the double's command."""


def read_message(stream: socket.socket) -> bytes | None:
    """One command or response; None when the stream ended before one began."""
    first = stream.recv(HEADER.size)
    if not first:
        return None
    header = first + recv_exactly(stream, HEADER.size - len(first))
    _, size, _ = HEADER.unpack(header)
    if not HEADER.size <= size <= MAX_MESSAGE:
        raise WireError(f"a TPM message declares {size} bytes")
    return header + recv_exactly(stream, size - HEADER.size)


def reads_nv_start(command: bytes, index: int) -> bool:
    """Whether `command` is a TPM2_NV_Read of `index` from offset 0."""
    if len(command) < 22:
        return False
    tag, _, code = HEADER.unpack_from(command)
    if tag != ST_SESSIONS or code != CC_NV_READ:
        return False
    (nv_index,) = struct.unpack_from(">I", command, 14)
    (auth_size,) = struct.unpack_from(">I", command, 18)
    parameters = 22 + auth_size
    if nv_index != index or len(command) < parameters + 4:
        return False
    _, offset = struct.unpack_from(">HH", command, parameters)
    return bool(offset == 0)


@dataclass(frozen=True, slots=True)
class NvPublic:
    attributes: int
    size: int


def _exchange(stream: socket.socket, command: bytes) -> tuple[int, bytes]:
    stream.sendall(command)
    response = read_message(stream)
    if response is None:
        raise WireError("the TPM closed the connection instead of answering")
    _, _, code = HEADER.unpack_from(response)
    return code, response[HEADER.size :]


def _command(tag: int, code: int, body: bytes) -> bytes:
    return HEADER.pack(tag, HEADER.size + len(body), code) + body


def nv_read_public(stream: socket.socket, index: int) -> NvPublic | None:
    """The index's attributes and size; None when it is not defined."""
    code, body = _exchange(
        stream, _command(ST_NO_SESSIONS, CC_NV_READ_PUBLIC, struct.pack(">I", index))
    )
    if code & _RC_FMT1 and code & 0x3F == _RC_HANDLE:
        return None
    if code != 0:
        raise WireError(f"NV_ReadPublic of 0x{index:08X} failed (0x{code:x})")
    # TPM2B_NV_PUBLIC: size, nvIndex, nameAlg, attributes, authPolicy (TPM2B), dataSize
    _, _, _, attributes, policy_size = struct.unpack_from(">HIHIH", body)
    (size,) = struct.unpack_from(">H", body, 14 + policy_size)
    return NvPublic(attributes, size)


def nv_read(stream: socket.socket, auth: int, index: int, size: int) -> bytes | None:
    """`size` bytes of the index from offset 0; None when it was never written."""
    handles = struct.pack(">II", auth, index)
    body = handles + struct.pack(">I", len(_PASSWORD)) + _PASSWORD + struct.pack(">HH", size, 0)
    code, answer = _exchange(stream, _command(ST_SESSIONS, CC_NV_READ, body))
    if code & 0xFFF == _RC_NV_UNINITIALIZED:
        return None
    if code != 0:
        raise WireError(f"NV_Read of 0x{index:08X} failed (0x{code:x})")
    # parameterSize, then TPM2B_MAX_NV_BUFFER
    (length,) = struct.unpack_from(">H", answer, 4)
    return answer[6 : 6 + length]


def nv_write(stream: socket.socket, auth: int, index: int, data: bytes, chunk: int) -> None:
    """Write `data` to the index from offset 0, `chunk` bytes per command."""
    for offset in range(0, len(data), chunk):
        part = data[offset : offset + chunk]
        body = (
            struct.pack(">II", auth, index)
            + struct.pack(">I", len(_PASSWORD))
            + _PASSWORD
            + struct.pack(">H", len(part))
            + part
            + struct.pack(">H", offset)
        )
        code, _ = _exchange(stream, _command(ST_SESSIONS, CC_NV_WRITE, body))
        if code != 0:
            raise WireError(f"NV_Write of 0x{index:08X} at offset {offset} failed (0x{code:x})")
