"""Which gateway process writes an audit store, and which ones wrote it before.

One gateway per store: a gateway holds an exclusive `flock` on `<store>.lock` for as long
as it runs, and the kernel drops the lock when the process ends however it ends. So while
a store's lock is held, the process named in the lock file is alive; when nobody holds
it, no gateway runs on the store, and every session still open in it belongs to a process
that died with it open.

The store's `gateway_processes` table records each process that opened the store (its
random process id, as every session_start names it, its OS pid, host and start time) and
`stopped_at` once it stopped cleanly, after closing every session it had open. A session
without session_end whose process stopped cleanly lost entries; one whose process never
stopped cleanly was interrupted. Rows are written at start and at stop, never per call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import orjson

from cmcp_cli.audit.entry import timestamp
from cmcp_cli.errors import CmcpError

LOCK_WAIT_SECONDS = 1.0  # rides out a reader's momentary probe of the lock (`live_process`)
_POLL_SECONDS = 0.05
PROCESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_processes (
    process TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_at TEXT NOT NULL,
    stopped_at TEXT
);
"""


class StoreInUseError(CmcpError):
    """Another gateway process holds the audit store."""


@dataclass(frozen=True)
class GatewayProcess:
    process: str
    pid: int
    host: str
    started_at: str
    stopped_at: str | None = None

    def describe(self) -> str:
        return f"gateway process {self.process} (pid {self.pid} on {self.host})"


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


class StoreLock:
    """The held lock of one store; `release` (or the process's end) lets the next gateway in."""

    def __init__(self, store: Path, handle: IO[bytes], holder: GatewayProcess) -> None:
        self.store = store
        self.holder = holder
        self._handle: IO[bytes] | None = handle

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def lock_store(store: Path, process: str, *, wait_seconds: float = LOCK_WAIT_SECONDS) -> StoreLock:
    """Take the store's exclusive lock for `process`, and name it in the lock file.

    Raises `StoreInUseError` naming the process that holds it.
    """
    path = lock_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _read_holder(handle)
                handle.close()
                who = holder.describe() if holder else "another gateway process"
                since = f", started {holder.started_at}" if holder else ""
                raise StoreInUseError(
                    f"audit store {store} is in use by {who}{since}: one gateway per store",
                    hint="stop that gateway first, or give this one its own audit.path "
                    "(and claims.dir)",
                ) from None
            time.sleep(_POLL_SECONDS)
    holder = GatewayProcess(
        process=process,
        pid=os.getpid(),
        host=socket.gethostname(),
        started_at=timestamp_now(),
    )
    handle.seek(0)
    handle.truncate()
    handle.write(orjson.dumps(dataclasses.asdict(holder)))
    handle.flush()
    return StoreLock(store, handle, holder)


def live_process(store: Path) -> str | None:
    """The process id of the gateway running on `store` now, if one is. Probes the lock
    with a shared lock, given back at once."""
    path = lock_path(store)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            return holder.process if holder else "(unnamed)"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def _read_holder(handle: IO[bytes]) -> GatewayProcess | None:
    try:
        handle.seek(0)
        fields = orjson.loads(handle.read() or b"null")
        return GatewayProcess(**fields) if isinstance(fields, dict) else None
    except (OSError, orjson.JSONDecodeError, TypeError):
        return None


def timestamp_now() -> str:
    return timestamp(datetime.now(UTC))


def record_start(store: Path, holder: GatewayProcess) -> None:
    """Record the process that now holds the store (it must hold the lock)."""
    with _connect(store) as connection:
        connection.executescript(PROCESS_SCHEMA)
        connection.execute(
            "INSERT INTO gateway_processes (process, pid, host, started_at) VALUES (?, ?, ?, ?)",
            (holder.process, holder.pid, holder.host, holder.started_at),
        )


def record_stop(store: Path, process: str) -> None:
    """Record that `process` stopped cleanly: every session it opened is closed."""
    with _connect(store) as connection:
        connection.execute(
            "UPDATE gateway_processes SET stopped_at = ? WHERE process = ?",
            (timestamp_now(), process),
        )


def gateway_processes(store: Path) -> dict[str, GatewayProcess]:
    """Every recorded process of the store, by process id (none for a store from before
    processes were recorded)."""
    connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT process, pid, host, started_at, stopped_at FROM gateway_processes"
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        connection.close()
    return {str(row[0]): GatewayProcess(*row) for row in rows}


@contextlib.contextmanager
def _connect(store: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(store)
    try:
        with connection:  # one transaction, committed on success
            yield connection
    finally:
        connection.close()
