"""Where a session's claims and their TRACE records are written.

`<claims.dir>/<session>.claim.json` and `<session>.record.json` hold the session's latest
claim (its final one once it ended). With `claims.per_call`, every claim of the session is
also kept under its sequence number, `<session>.<n>.claim.json` and `<session>.<n>.record.json`,
the final one included. Each file is written to a temporary file, synced and renamed into
place, so a reader never sees half a claim. A session closed by its own process and one
closed by a later process's recovery are written the same way, to the same place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

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
    claims_dir: Path, session_id: str, closed: ClosedSession, *, numbered: bool = False
) -> Path:
    """Write a claim and its TRACE record as the session's latest, and with `numbered`
    under its sequence number first; returns the latest claim's path."""
    claim = claim_path(claims_dir, session_id)
    record = claim_path(claims_dir, session_id, record=True)
    if not numbered:
        _write_atomically(claim, closed.claim)
        _write_atomically(record, closed.trace_record)
        return claim
    sequence = closed.claim["gateway"]["sequence_number"]
    for document, numbered_path, latest in (
        (closed.claim, claim_path(claims_dir, session_id, sequence=sequence), claim),
        (
            closed.trace_record,
            claim_path(claims_dir, session_id, record=True, sequence=sequence),
            record,
        ),
    ):
        _write_atomically(numbered_path, document)
        # the latest is the same synced file under a second name: no second write
        linked = latest.with_suffix(".link")
        linked.unlink(missing_ok=True)
        os.link(numbered_path, linked)
        linked.replace(latest)
    return claim


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as handle:
        handle.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
