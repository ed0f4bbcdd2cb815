"""The embedded audit store: SQLite in WAL mode with group commit.

Appends from any number of threads are queued to one writer thread, which writes
everything waiting in one transaction and commits once, so concurrent appends share one
fsync. `append` returns only when the entry is durable under the configured durability:
`fsync` (synchronous=FULL: on disk before the call returns) or `os` (synchronous=NORMAL:
handed to the operating system; survives a killed gateway, not a power cut).

Rows keep the exact stored line and their insertion order, which is what replay reads:
a store that was edited, reordered or truncated shows it.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Literal

import orjson

from cmcp_cli.audit.entry import EntryError, EntryType, SealedEntry, open_line
from cmcp_cli.errors import CmcpError, UsageError

Durability = Literal["fsync", "os"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_entries (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    line BLOB NOT NULL,
    UNIQUE (session_id, seq)
);
"""
_MAX_BATCH = 1024
_STOP = object()


class AuditStoreError(CmcpError):
    """The audit store cannot record: the caller must not proceed as if it had."""


class AuditStore:
    def __init__(self, path: Path, durability: Durability = "fsync") -> None:
        self.path = path
        self.durability = durability
        path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        connection = self._connect()
        connection.executescript(_SCHEMA)
        connection.commit()
        self._writer = threading.Thread(
            target=self._write_loop, args=(connection,), name="cmcp-audit-writer", daemon=True
        )
        self._closed = False
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        synchronous = "FULL" if self.durability == "fsync" else "NORMAL"
        connection.execute(f"PRAGMA synchronous={synchronous}")
        return connection

    def submit(self, entry: SealedEntry) -> Future[None]:
        """Queue an entry; the future completes when it is durable (or failed to be)."""
        if self._closed:
            raise AuditStoreError("the audit store is closed")
        if self._failure is not None:
            raise AuditStoreError(f"the audit store failed earlier: {self._failure}")
        done: Future[None] = Future()
        self._queue.put((entry, done))
        return done

    def append(self, entry: SealedEntry) -> None:
        """Write an entry and return once it is durable."""
        self.submit(entry).result()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._writer.join()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _write_loop(self, connection: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                stop = False
                while len(batch) < _MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                self._commit(connection, batch)
                if stop:
                    return
        finally:
            connection.close()

    def _commit(self, connection: sqlite3.Connection, batch: list[object]) -> None:
        pending: list[tuple[SealedEntry, Future[None]]] = batch  # type: ignore[assignment]
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(
                "INSERT INTO audit_entries (session_id, seq, hash, line) VALUES (?, ?, ?, ?)",
                [(e.session_id, e.seq, e.hash, e.line) for e, _ in pending],
            )
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            error = AuditStoreError(f"cannot write audit store {self.path}: {exc}")
            for _, done in pending:
                done.set_exception(error)
            if not isinstance(exc, sqlite3.IntegrityError):  # a duplicate is one bad entry
                self._failure = exc
            return
        for _, done in pending:
            done.set_result(None)


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise UsageError(
            f"audit store {path} does not exist", hint="pass the audit.path of the gateway"
        )
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        connection.execute("SELECT 1 FROM audit_entries LIMIT 1")
    except sqlite3.Error as exc:
        raise UsageError(f"{path} is not a cMCP audit store: {exc}") from exc
    return connection


def session_ids(path: Path) -> list[str]:
    """Sessions in the order they first appear."""
    connection = open_readonly(path)
    try:
        rows = connection.execute(
            "SELECT session_id FROM audit_entries GROUP BY session_id ORDER BY MIN(id)"
        ).fetchall()
    finally:
        connection.close()
    return [str(row[0]) for row in rows]


def has_session(path: Path, session_id: str) -> bool:
    """Whether the store holds any entry of the session, intact or not."""
    connection = open_readonly(path)
    try:
        row = connection.execute(
            "SELECT 1 FROM audit_entries WHERE session_id = ? LIMIT 1", (session_id,)
        ).fetchone()
    finally:
        connection.close()
    return row is not None


def iter_lines(path: Path, session_id: str | None = None) -> Iterator[bytes]:
    """Stored lines in insertion order, of one session or all."""
    connection = open_readonly(path)
    try:
        if session_id is None:
            cursor = connection.execute("SELECT line FROM audit_entries ORDER BY id")
        else:
            cursor = connection.execute(
                "SELECT line FROM audit_entries WHERE session_id = ? ORDER BY id", (session_id,)
            )
        for (line,) in cursor:
            yield bytes(line)
    finally:
        connection.close()


def session_start(path: Path, session_id: str) -> SealedEntry | None:
    """The session's stored seq-0 entry, when it is an intact `session_start` of that
    session; None when the store holds none (or one that was edited or is malformed)."""
    connection = open_readonly(path)
    try:
        rows = connection.execute(
            "SELECT line FROM audit_entries WHERE session_id = ? AND seq = 0 ORDER BY id LIMIT 2",
            (session_id,),
        ).fetchall()
    finally:
        connection.close()
    if len(rows) != 1 or not isinstance(rows[0][0], bytes):
        return None
    try:
        entry = open_line(rows[0][0])
    except EntryError:
        return None
    if entry.type != EntryType.SESSION_START or entry.session_id != session_id or entry.seq != 0:
        return None
    return entry


def unended_sessions(path: Path) -> list[str]:
    """Sessions whose last stored entry is not a session_end, in the order they first
    appear: one row read per session, by the (session_id, seq) index."""
    connection = open_readonly(path)
    try:
        rows = connection.execute(
            "SELECT session_id, line FROM audit_entries WHERE id IN "
            "(SELECT MAX(id) FROM audit_entries GROUP BY session_id) ORDER BY id"
        ).fetchall()
        first = {
            str(row[0]): int(row[1])
            for row in connection.execute(
                "SELECT session_id, MIN(id) FROM audit_entries GROUP BY session_id"
            )
        }
    finally:
        connection.close()
    unended = [str(session) for session, line in rows if not _is_session_end(bytes(line))]
    return sorted(unended, key=lambda session: first[session])


def _is_session_end(line: bytes) -> bool:
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(fields, dict) and fields.get("type") == EntryType.SESSION_END
