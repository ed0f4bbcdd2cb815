"""Audit logs as files: the SQLite store or a JSONL export, read the same way.

A JSONL export holds one stored line per line, exactly the bytes the store keeps (the
RFC 8785 form of each entry), so exporting and re-reading changes nothing that is hashed.
"""

from __future__ import annotations

from collections.abc import Iterator
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
