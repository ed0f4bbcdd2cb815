"""Where a session's claims and their TRACE records are written.

`<claims.dir>/<session>.claim.json` and `<session>.record.json` hold the session's latest
claim (its final one once it ended). With `claims.per_call`, every claim of the session is
also kept under its sequence number, `<session>.<n>.claim.json` and `<session>.<n>.record.json`,
the final one included. Each file is written to a temporary file, synced and renamed into
place, so a reader never sees half a claim. A session closed by its own process and one
closed by a later process's recovery are written the same way, to the same place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
    if numbered:
        sequence = closed.claim["gateway"]["sequence_number"]
        _write_atomically(claim_path(claims_dir, session_id, sequence=sequence), closed.claim)
        _write_atomically(
            claim_path(claims_dir, session_id, record=True, sequence=sequence),
            closed.trace_record,
        )
    claim = claim_path(claims_dir, session_id)
    _write_atomically(claim, closed.claim)
    _write_atomically(claim_path(claims_dir, session_id, record=True), closed.trace_record)
    return claim


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
