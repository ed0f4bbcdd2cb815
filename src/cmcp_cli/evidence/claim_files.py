"""Where a session's claim and its TRACE record are written: `<claims.dir>/<session>.claim.json`
and `<session>.record.json`, each written to a temporary file, synced and renamed into
place, so a reader never sees half a claim. A session closed by its own process and one
closed by a later process's recovery are written the same way, to the same place."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cmcp_cli.evidence.session import ClosedSession


def claim_path(claims_dir: Path, session_id: str, *, record: bool = False) -> Path:
    suffix = "record" if record else "claim"
    return claims_dir / f"{session_id}.{suffix}.json"


def write_claim(claims_dir: Path, session_id: str, closed: ClosedSession) -> Path:
    """Write the claim and the TRACE record of a closed session; returns the claim's path."""
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
