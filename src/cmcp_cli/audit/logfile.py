"""Audit logs as files: the SQLite store or a JSONL export, read the same way.

A JSONL export holds one stored line per line, exactly the bytes the store keeps (the
RFC 8785 form of each entry), so exporting and re-reading changes nothing that is hashed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cmcp_cli.audit import store
from cmcp_cli.errors import UsageError

SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError as exc:
        raise UsageError(f"cannot read audit log {path}: {exc.strerror or exc}") from exc


def read_log_lines(path: Path, session_id: str | None = None) -> Iterator[bytes]:
    """Stored lines from a SQLite store or a JSONL export, in stored order."""
    if not path.exists():
        raise UsageError(f"audit log {path} does not exist")
    if is_sqlite(path):
        return store.iter_lines(path, session_id)
    return _jsonl_lines(path)


def _jsonl_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        for raw in handle:
            line = raw.rstrip(b"\n")
            if line:
                yield line


def export_jsonl(db_path: Path, out: BinaryIO, session_id: str | None = None) -> int:
    """Write the stored lines of one session (or all) as JSONL; returns how many."""
    count = 0
    for line in store.iter_lines(db_path, session_id):
        out.write(line + b"\n")
        count += 1
    return count


def count_log_lines(path: Path) -> int:
    if is_sqlite(path):
        connection = store.open_readonly(path)
        try:
            (count,) = connection.execute("SELECT COUNT(*) FROM audit_entries").fetchone()
        finally:
            connection.close()
        return int(count)
    with path.open("rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


SLICE_BYTES = 48 * 1024 * 1024  # about 50,000 entries of a JSONL export
SLICE_ROWS = 50_000
Locate = Callable[[int], str]


@dataclass(frozen=True)
class LogSlice:
    """A contiguous part of an audit log that a worker process reads for itself, so that
    large logs are checked in parallel without shipping their bytes between processes."""

    path: Path
    sqlite: bool
    start: int  # a byte offset, or the first row id
    stop: int  # the byte offset after the slice, or the last row id
    session_id: str | None = None

    def read(self) -> tuple[list[bytes], Locate]:
        """The slice's stored lines, and how to name the place of the i-th of them."""
        if self.sqlite:
            return self._read_rows()
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            raw = handle.read(self.stop - self.start).split(b"\n")
        lines = [line for line in raw if line]

        def locate(index: int) -> str:
            offset, seen = self.start, -1
            for line in raw:
                seen += bool(line)
                if seen == index:
                    return f"byte {offset}"
                offset += len(line) + 1
            return f"byte {offset}"

        return lines, locate

    def _read_rows(self) -> tuple[list[bytes], Locate]:
        connection = store.open_readonly(self.path)
        try:
            query = "SELECT id, line FROM audit_entries WHERE id BETWEEN ? AND ?"
            parameters: tuple[object, ...] = (self.start, self.stop)
            if self.session_id is not None:
                query += " AND session_id = ?"
                parameters += (self.session_id,)
            rows = connection.execute(query + " ORDER BY id", parameters).fetchall()
        finally:
            connection.close()
        ids = [int(row[0]) for row in rows]
        return [bytes(row[1]) for row in rows], lambda index: f"row {ids[index]}"


def log_slices(
    path: Path,
    session_id: str | None = None,
    *,
    slice_bytes: int = SLICE_BYTES,
    slice_rows: int = SLICE_ROWS,
) -> list[LogSlice]:
    """Cut a log into slices in stored order: JSONL at line ends, the store by row id."""
    if is_sqlite(path):
        connection = store.open_readonly(path)
        try:
            low, high = connection.execute("SELECT MIN(id), MAX(id) FROM audit_entries").fetchone()
        finally:
            connection.close()
        if low is None:
            return []
        return [
            LogSlice(path, True, first, min(first + slice_rows - 1, high), session_id)
            for first in range(low, high + 1, slice_rows)
        ]
    size = path.stat().st_size
    bounds = [0]
    with path.open("rb") as handle:
        while bounds[-1] + slice_bytes < size:
            handle.seek(bounds[-1] + slice_bytes)
            handle.readline()  # to the end of the line the cut fell into
            if handle.tell() >= size:
                break
            bounds.append(handle.tell())
    bounds.append(size)
    return [LogSlice(path, False, a, b, session_id) for a, b in itertools.pairwise(bounds) if b > a]
