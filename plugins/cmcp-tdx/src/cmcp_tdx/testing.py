"""Test support for the TDX collector, so both of its flows run anywhere: a configfs-tsm
stand-in that behaves as the kernel's report directory does for one TDX guest, and for the
device flow a TDX_CMD_GET_REPORT0 stand-in and a Quote Generation Service on a Unix socket."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from cmcp_cli.testing.service import recv_exactly


class FakeTsm:
    """A configfs-tsm stand-in: `mkdir` makes an entry with the kernel's attribute files,
    `outblob` holds the quote given, `rmdir` removes the entry (a real configfs entry is
    removed with its attribute files by one rmdir)."""

    def __init__(self, root: Path, outblob: bytes, provider: str = "tdx_guest") -> None:
        self.root, self.outblob, self.provider = root, outblob, provider
        self.created: list[Path] = []
        self.removed: list[Path] = []

    def mkdir(self, entry: Path) -> None:
        entry.mkdir()
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("0\n")
        (entry / "outblob").write_bytes(self.outblob)
        self.created.append(entry)

    def rmdir(self, entry: Path) -> None:
        shutil.rmtree(entry)
        self.removed.append(entry)


# The QGS stand-in speaks the wire protocol from its own layouts, not cmcp_tdx.qgs's, so
# a mistake in the client's encoding is not mirrored here and cancelled out.
_QGS_HEADER = struct.Struct("<HHIII")  # major, minor, type, size (whole message), error code
_QGS_SIZES = struct.Struct("<II")  # request: report, id list; response: selected id, quote
_TDREPORT_SIZE = 1024
_IO_TIMEOUT = 5.0  # every socket operation of the stand-in is bounded
Answer = Callable[[bytes], bytes | None]


@contextlib.contextmanager
def socket_dir() -> Iterator[Path]:
    """A directory for a Unix socket, removed afterwards: pytest's tmp_path can be longer
    than the 107 bytes a socket address holds."""
    with tempfile.TemporaryDirectory(prefix="cmcp-qgs-") as name:
        yield Path(name)


def qgs_response(
    quote: bytes,
    *,
    error_code: int = 0,
    major: int = 1,
    minor: int = 0,
    kind: int = 1,
    selected_id: bytes = b"",
) -> bytes:
    """A framed GET_QUOTE_RESP (4-byte big-endian length, then the message)."""
    size = _QGS_HEADER.size + _QGS_SIZES.size + len(selected_id) + len(quote)
    message = (
        _QGS_HEADER.pack(major, minor, kind, size, error_code)
        + _QGS_SIZES.pack(len(selected_id), len(quote))
        + selected_id
        + quote
    )
    return len(message).to_bytes(4, "big") + message


class FakeQgs:
    """A Quote Generation Service stand-in: a real Unix-socket server in a thread that reads
    framed GET_QUOTE_REQ messages, checks each against the protocol exactly (problems go to
    `problems` and the connection is closed unanswered), and sends what `answer` returns for
    the request message; None holds the connection open without a word, as a hung QGS does.
    `requests` keeps every request as received, frame included."""

    def __init__(self, path: Path, answer: Answer) -> None:
        self.path, self.answer = path, answer
        self.requests: list[bytes] = []
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._thread = threading.Thread(target=self._serve, name="fake-qgs", daemon=True)

    @classmethod
    def returning(cls, path: Path, quote: bytes) -> FakeQgs:
        return cls(path, lambda _request: qgs_response(quote))

    def __enter__(self) -> FakeQgs:
        self._server.bind(str(self.path))
        self._server.listen(4)
        self._server.settimeout(0.05)  # how often the accept loop looks at the stop flag
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(_IO_TIMEOUT)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(_IO_TIMEOUT)
                try:
                    self._exchange(connection)
                except OSError as error:
                    self.problems.append(f"socket error: {error}")

    def _exchange(self, connection: socket.socket) -> None:
        frame = recv_exactly(connection, 4)
        length = int.from_bytes(frame, "big")
        expected = _QGS_HEADER.size + _QGS_SIZES.size + _TDREPORT_SIZE
        if length != expected:
            self.problems.append(f"frame length {length}, not {expected}")
            return
        message = recv_exactly(connection, length)
        self.requests.append(frame + message)
        major, minor, kind, size, error_code = _QGS_HEADER.unpack_from(message)
        report_size, id_list_size = _QGS_SIZES.unpack_from(message, _QGS_HEADER.size)
        found = (major, minor, kind, size, error_code, report_size, id_list_size)
        wanted = (1, 0, 0, length, 0, _TDREPORT_SIZE, 0)
        if found != wanted:
            self.problems.append(f"request fields {found}, not {wanted}")
            return
        reply = self.answer(message)
        if reply is None:
            self._stop.wait(_IO_TIMEOUT)
            return
        connection.sendall(reply)


class FakeTdxGuest:
    """The kernel's side of TDX_CMD_GET_REPORT0 for `TdxCollector(ioctl=...)`: checks that
    the descriptor is the open `device`, the request number and the buffer size, and writes
    a TDREPORT (REPORTTYPE 0x81) whose REPORTDATA is the one requested, or `report_data`
    when given (a TDREPORT not carrying ours)."""

    REQUEST = 0xC4405401

    def __init__(
        self, device: Path, report_data: bytes | None = None, report_type: int = 0x81
    ) -> None:
        self.device, self.report_data, self.report_type = device, report_data, report_type
        self.calls = 0

    def __call__(self, fd: int, request: int, buffer: bytearray) -> None:
        opened, device = os.fstat(fd), self.device.stat()
        if (opened.st_dev, opened.st_ino) != (device.st_dev, device.st_ino):
            raise OSError(errno.EBADF, f"the descriptor is not {self.device}")
        if request != self.REQUEST or len(buffer) != 64 + _TDREPORT_SIZE:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        self.calls += 1
        report = bytearray(_TDREPORT_SIZE)
        report[0] = self.report_type
        data = buffer[:64] if self.report_data is None else self.report_data
        report[128:192] = data
        buffer[64:] = report
