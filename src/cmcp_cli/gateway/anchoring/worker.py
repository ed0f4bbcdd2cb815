"""The background task that anchors queued records, off every call's path.

At start it reads every pending file in `claims.dir` (records queued by an earlier
process, or by this one's recovery, are anchored as any other); claims written while it
runs are handed to it as they are queued (`queued`, from any thread). Records are
submitted one at a time; a failed attempt (the service unreachable, an error answer, no
answer within the timeout, a receipt that does not verify) keeps the record queued, its
attempts and error on disk, and schedules the next attempt after a delay drawn at random
between `retry_initial_seconds` and `initial * 2^(attempts - 1)` capped at
`retry_max_seconds`. Nothing is ever dropped: a record leaves the queue only when its
verified receipt is stored beside its claim. A directory scan every `RESCAN_SECONDS`
picks up a record queued by a path that did not hand it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmcp_cli import __version__
from cmcp_cli.config_trace import AnchorConfig
from cmcp_cli.evidence.anchor_queue import (
    PendingAnchor,
    note_attempt,
    pending_names,
    read_pending,
    store_receipt,
)
from cmcp_cli.gateway.anchoring.client import (
    AnchorFailure,
    AnchorTarget,
    ReceiptRejected,
    anchor_record,
    http_client,
)

log = logging.getLogger(__name__)
RESCAN_SECONDS = 60.0
PRODUCER = f"cmcp-gateway/{__version__}"
_JITTER = random.SystemRandom()


@dataclass(frozen=True)
class AnchorStatus:
    """What /readyz and /metrics say of anchoring. /readyz answers anyone, so nothing
    here names a session (the log does), and `last_error` (the service's URL and what it
    answered) is shown to the operator only."""

    pending: int
    oldest: str | None  # when the oldest pending record was queued
    last_error: str | None
    submitted: int
    failures: int
    rejected: int
    unreadable: int  # pending files that cannot be read (each named in the log)

    def to_json(self, *, operator: bool) -> dict[str, Any]:
        """The counts for anyone; `last_error` too for the `operator`."""
        shown = {
            "pending": self.pending,
            "oldest": self.oldest,
            "anchored": self.submitted,
            "failures": self.failures,
            "rejected": self.rejected,
            "unreadable": self.unreadable,
        }
        return {**shown, "last_error": self.last_error} if operator else shown

    def metric_lines(self) -> list[str]:
        return [
            "# HELP cmcp_anchor_pending TRACE records queued for anchoring, not yet anchored.",
            "# TYPE cmcp_anchor_pending gauge",
            f"cmcp_anchor_pending {self.pending}",
            "# HELP cmcp_anchor_submitted_total Records anchored (verified receipt stored).",
            "# TYPE cmcp_anchor_submitted_total counter",
            f"cmcp_anchor_submitted_total {self.submitted}",
            "# HELP cmcp_anchor_failures_total Anchoring attempts the service did not answer "
            "with a receipt.",
            "# TYPE cmcp_anchor_failures_total counter",
            f"cmcp_anchor_failures_total {self.failures}",
            "# HELP cmcp_anchor_rejected_total Receipts refused: not proving the record under "
            "the pinned log key.",
            "# TYPE cmcp_anchor_rejected_total counter",
            f"cmcp_anchor_rejected_total {self.rejected}",
        ]


class AnchorWorker:
    def __init__(self, anchor: AnchorConfig, claims_dir: Path, log_key_pem: bytes) -> None:
        self.anchor = anchor
        self.claims_dir = claims_dir
        self.target = AnchorTarget(
            url=anchor.url,
            protocol=anchor.protocol,
            log_key_pem=log_key_pem,
            timeout=float(anchor.timeout_seconds),
            producer=PRODUCER,
        )
        self._client = http_client(anchor)
        self._entries: dict[str, PendingAnchor] = {}
        self._due: dict[str, float] = {}  # monotonic time of each record's next attempt
        self._unreadable: dict[str, str] = {}
        self._submitted = self._failures = self._rejected = 0
        self._last_error: str | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="cmcp-anchoring")

    async def stop(self) -> None:
        """Stop submitting: whatever is pending stays queued on disk for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    def queued(self, entry: PendingAnchor) -> None:
        """A record just queued (from any thread): attempt it at once."""
        if self._loop is None:
            return  # before start: the start's scan reads it from disk
        with contextlib.suppress(RuntimeError):  # the loop closed: the next start's scan
            self._loop.call_soon_threadsafe(self._add, entry)

    def pending(self, name: str) -> PendingAnchor | None:
        return self._entries.get(name)

    def status(self) -> AnchorStatus:
        entries = list(self._entries.values())
        return AnchorStatus(
            pending=len(entries) + len(self._unreadable),
            oldest=min((e.queued_at for e in entries), default=None),
            last_error=self._last_error if entries or self._unreadable else None,
            submitted=self._submitted,
            failures=self._failures,
            rejected=self._rejected,
            unreadable=len(self._unreadable),
        )

    def _add(self, entry: PendingAnchor) -> None:
        self._entries[entry.name] = entry
        self._due[entry.name] = 0.0
        self._wake.set()

    async def _scan(self) -> None:
        found = await asyncio.to_thread(_read_all, self.claims_dir)
        for name, read in found.items():
            if name in self._entries:
                continue
            if isinstance(read, str):
                if name not in self._unreadable:
                    log.error("a pending anchor cannot be read: %s", read)
                self._unreadable[name] = read
            else:
                self._unreadable.pop(name, None)
                self._add(read)

    async def _run(self) -> None:
        await self._scan()
        if self._entries:
            log.info("%d TRACE record(s) pending anchoring at start", len(self._entries))
        scanned = time.monotonic()
        while True:
            now = time.monotonic()
            if now - scanned >= RESCAN_SECONDS:
                await self._scan()
                scanned = now
            for name in [n for n, due in sorted(self._due.items(), key=_by_due) if due <= now]:
                await self._attempt(name)
            wait = min(self._due.values(), default=now + RESCAN_SECONDS) - time.monotonic()
            self._wake.clear()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(wait, RESCAN_SECONDS)):
                        await self._wake.wait()

    async def _attempt(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None:
            return
        try:
            document = await anchor_record(self._client, self.target, entry)
        except ReceiptRejected as exc:
            self._rejected += 1
            await self._failed(entry, f"receipt refused: {exc}")
            return
        except AnchorFailure as exc:
            self._failures += 1
            await self._failed(entry, str(exc))
            return
        except Exception as exc:  # a fault of ours: the record stays queued, the task goes on
            log.exception("anchoring %s failed unexpectedly", name)
            self._failures += 1
            await self._failed(entry, f"unexpected {type(exc).__name__}: {exc}")
            return
        try:
            await asyncio.to_thread(store_receipt, self.claims_dir, name, document)
        except OSError as exc:
            await self._failed(entry, f"the receipt could not be stored: {exc}")
            return
        self._entries.pop(name, None)
        self._due.pop(name, None)
        self._submitted += 1
        log.info("anchored %s at %s", name, document["transparency"])

    async def _failed(self, entry: PendingAnchor, error: str) -> None:
        self._last_error = error
        log.warning("anchoring %s failed (attempt %d): %s", entry.name, entry.attempts + 1, error)
        with contextlib.suppress(OSError):  # the count on disk is for the operator only
            await asyncio.to_thread(note_attempt, self.claims_dir, entry, error)
        self._due[entry.name] = time.monotonic() + backoff(self.anchor, entry.attempts)


def backoff(anchor: AnchorConfig, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: full jitter between
    the initial delay and the exponential ceiling, capped."""
    initial, most = float(anchor.retry_initial_seconds), float(anchor.retry_max_seconds)
    ceiling = min(most, initial * 2.0 ** min(max(attempts - 1, 0), 40))
    return _JITTER.uniform(initial, ceiling)


def _by_due(item: tuple[str, float]) -> float:
    return item[1]


def _read_all(claims_dir: Path) -> dict[str, PendingAnchor | str]:
    found: dict[str, PendingAnchor | str] = {}
    for name in pending_names(claims_dir):
        read = read_pending(claims_dir, name)
        if read is not None:
            found[name] = read
    return found
