"""Where a session's claims and their TRACE records are written.

`<claims.dir>/<session>.claim.json` and `<session>.record.json` hold the session's latest
claim (its final one once it ended). With `claims.per_call`, every claim of the session is
also kept under its sequence number, `<session>.<n>.claim.json` and `<session>.<n>.record.json`,
the final one included. Each file is written to a temporary file, synced and renamed into
place, so a reader never sees half a claim. A session closed by its own process and one
closed by a later process's recovery are written the same way, to the same place.

A record that states a `transparency` URI is queued for anchoring under the claim's own
name before the claim's files are written (`evidence.anchor_queue`), so no claim is on
disk whose record is neither anchored nor queued.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from cmcp_cli.evidence.anchor_queue import PendingAnchor, anchor_name, queue_record
from cmcp_cli.evidence.session import ClosedSession


def claim_path(
    claims_dir: Path, session_id: str, *, record: bool = False, sequence: int | None = None
) -> Path:
    """The session's latest claim (or TRACE record), or with `sequence` its claim of that
    sequence number."""
    suffix = "record" if record else "claim"
    numbered = "" if sequence is None else f".{sequence}"
    return claims_dir / f"{session_id}{numbered}.{suffix}.json"


def write_claim(
    claims_dir: Path,
    session_id: str,
    closed: ClosedSession,
    *,
    numbered: bool = False,
    queued: Callable[[PendingAnchor], None] | None = None,
) -> Path:
    """Write a claim and its TRACE record as the session's latest; with `numbered` under
    its sequence number, and as the latest only when no later claim of the session is
    there already. A record to anchor is queued first, and `queued` told of it. Returns
    the latest claim's path."""
    claim = claim_path(claims_dir, session_id)
    record = claim_path(claims_dir, session_id, record=True)
    sequence = closed.claim["gateway"]["sequence_number"]
    name = anchor_name(session_id, sequence if numbered else None)
    entry = queue_record(claims_dir, name, closed.trace_record, closed.key)
    if not numbered:
        _write_atomically(claim, closed.claim)
        _write_atomically(record, closed.trace_record)
    else:
        _write_numbered(claims_dir, session_id, closed, sequence)
    if entry is not None and queued is not None:
        queued(entry)
    return claim


def _write_numbered(
    claims_dir: Path, session_id: str, closed: ClosedSession, sequence: int
) -> None:
    claim = claim_path(claims_dir, session_id)
    record = claim_path(claims_dir, session_id, record=True)
    written = (
        (claim_path(claims_dir, session_id, sequence=sequence), closed.claim, claim),
        (
            claim_path(claims_dir, session_id, record=True, sequence=sequence),
            closed.trace_record,
            record,
        ),
    )
    for numbered_path, document, _ in written:
        _write_atomically(numbered_path, document)
    # Claims of one session may finish writing out of order (one issued per call while the
    # session closes): the latest names the highest sequence number written.
    with _LATEST:
        if _sequence_of(claim) < sequence:
            for numbered_path, _, latest in written:
                # the same synced file under a second name: no second write
                linked = latest.with_suffix(".link")
                linked.unlink(missing_ok=True)
                os.link(numbered_path, linked)
                linked.replace(latest)


_LATEST = threading.Lock()


def _sequence_of(path: Path) -> int:
    """The sequence number of the claim at `path`; 0 when there is none to read."""
    try:
        number = orjson.loads(path.read_bytes())["gateway"]["sequence_number"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return 0
    return number if type(number) is int else 0


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as handle:
        handle.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
