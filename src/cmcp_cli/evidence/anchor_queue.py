"""The durable queue of TRACE records to anchor: one file per record, beside its claim.

A record whose `transparency` says where it is anchored (`trace.anchor` was set when its
session was attested) is queued before its claim's files are written, as
`<claims.dir>/<name>.anchor.json`, where `<name>` is the claim's own (`<session>` or
`<session>.<n>`). The pending file holds the record exactly as signed, the SCRAPI Signed
Statement over it (made then, while the session's claim key is in memory: a later
process holds no key to make one), when it was queued, and the attempts so far with the
last error. Once the record's receipt is stored as `<name>.receipt.json`, the pending
file is removed. Every file is written to a temporary file, synced, renamed into place,
and the directory synced: after a SIGKILL or a power cut each file is whole or absent,
and a claim on disk always has its pending file or its receipt beside it.

Files beside the claims rather than rows in the audit store: the store is the session's
hash-chained log, whose tables `replay-audit` reads and whose durability the operator
may relax (`audit.durability`); a queue there would put the anchoring's retries on the
log's writer. The claim, its record, its pending anchor and its receipt are one unit
named alike in one directory, each step one atomic rename, readable by an operator with
`ls`, and a process recovering sessions queues their claims the same way before any
runtime exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from cmcp_cli.claim.anchor import AnchorProfileError, anchor_id, anchor_leaf_bytes
from cmcp_cli.claim.keys import ClaimKey, b64url_decode, b64url_encode

PENDING_VERSION = "cmcp-anchor-pending-1"
PENDING_SUFFIX = ".anchor.json"
RECEIPT_SUFFIX = ".receipt.json"
STATEMENT_CONTENT_TYPE = "application/json"  # the statement's payload: the record's leaf
_ERROR_LIMIT = 500  # characters of an error kept with the entry


@dataclass
class PendingAnchor:
    """A record waiting for its receipt, as its pending file holds it."""

    name: str  # `<session>` or `<session>.<n>`, as the claim's file is named
    record: dict[str, Any]
    statement: bytes | None  # None when no key signed one (SCRAPI cannot submit it)
    queued_at: str
    attempts: int = 0
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "v": PENDING_VERSION,
            "record": self.record,
            "statement": None if self.statement is None else b64url_encode(self.statement),
            "queued_at": self.queued_at,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


def anchor_name(session_id: str, sequence: int | None = None) -> str:
    return session_id if sequence is None else f"{session_id}.{sequence}"


def pending_path(claims_dir: Path, name: str) -> Path:
    return claims_dir / f"{name}{PENDING_SUFFIX}"


def receipt_path(claims_dir: Path, name: str) -> Path:
    return claims_dir / f"{name}{RECEIPT_SUFFIX}"


def statement_issuer(record: dict[str, Any]) -> str:
    """`spiffe://<trust domain>/cmcp/gateway`, the trust domain the record's subject's."""
    subject = urlsplit(str(record.get("subject", "")))
    return f"spiffe://{subject.netloc}/cmcp/gateway"


def queue_record(
    claims_dir: Path, name: str, record: dict[str, Any], key: ClaimKey | None
) -> PendingAnchor | None:
    """Queue `record` for anchoring when it states a `transparency` URI (None otherwise),
    durably, before the caller writes the claim that carries it."""
    if "transparency" not in record:
        return None
    statement: bytes | None = None
    if key is not None:
        try:
            payload = anchor_leaf_bytes(record)
        except AnchorProfileError:  # the worker keeps it pending and names why
            payload = None
        if payload is not None:
            statement = key.signed_statement(
                payload,
                issuer=statement_issuer(record),
                subject=str(record.get("subject")),
                content_type=STATEMENT_CONTENT_TYPE,
            )
    entry = PendingAnchor(name, dict(record), statement, _now())
    write_durably(pending_path(claims_dir, name), orjson.dumps(entry.to_json()))
    return entry


def pending_names(claims_dir: Path) -> list[str]:
    """The names of every record queued in `claims_dir`, oldest file first."""
    try:
        found = [p for p in claims_dir.iterdir() if p.name.endswith(PENDING_SUFFIX)]
    except OSError:
        return []
    found.sort(key=lambda p: (_mtime(p), p.name))
    return [p.name.removesuffix(PENDING_SUFFIX) for p in found]


def read_pending(claims_dir: Path, name: str) -> PendingAnchor | str | None:
    """The pending entry named `name`; None when there is none (anchored meanwhile); a
    string naming what is wrong with a file that cannot be one."""
    path = pending_path(claims_dir, name)
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        return f"{path} cannot be read as a pending anchor: {exc}"
    if not isinstance(document, dict) or document.get("v") != PENDING_VERSION:
        return f"{path} is not a {PENDING_VERSION} document"
    record, statement = document.get("record"), document.get("statement")
    queued_at, attempts = document.get("queued_at"), document.get("attempts")
    last_error = document.get("last_error")
    if (
        not isinstance(record, dict)
        or not isinstance(queued_at, str)
        or type(attempts) is not int
        or not (statement is None or isinstance(statement, str))
        or not (last_error is None or isinstance(last_error, str))
    ):
        return f"{path} has a member of the wrong type"
    try:
        raw = None if statement is None else b64url_decode(statement)
    except ValueError:
        return f"{path}: its statement is not base64url"
    return PendingAnchor(name, record, raw, queued_at, attempts, last_error)


def find_receipt(claims_dir: Path, claim_file: Path) -> bytes | PendingAnchor | str:
    """The stored receipt of the record of the claim in `claim_file` (the session's latest
    or a numbered one), its pending entry while it waits, or why there is neither."""
    try:
        claim = orjson.loads(claim_file.read_bytes())
        record, sequence = claim["trace"], claim["gateway"]["sequence_number"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return f"the claim cannot be read: {exc}"
    if not isinstance(record, dict) or "transparency" not in record:
        return (
            "this claim's record states no transparency URI: it was issued while "
            "trace.anchor was not set, so it is not anchored"
        )
    wanted = anchor_id(record)
    session = claim_file.name.split(".", 1)[0]
    for name in (anchor_name(session, sequence), anchor_name(session)):
        try:
            stored = receipt_path(claims_dir, name).read_bytes()
        except OSError:
            stored = None
        if stored is not None and _names(stored, wanted):
            return stored
        pending = read_pending(claims_dir, name)
        if isinstance(pending, PendingAnchor) and anchor_id(pending.record) == wanted:
            return pending
    return "neither a receipt nor a pending anchor is stored for this claim's record"


def _names(receipt: bytes, wanted: str) -> bool:
    try:
        document = orjson.loads(receipt)
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and document.get("anchor_id") == wanted


def note_attempt(claims_dir: Path, entry: PendingAnchor, error: str) -> None:
    """Count a failed attempt on `entry` and keep its error, in memory and on disk."""
    entry.attempts += 1
    entry.last_error = error[:_ERROR_LIMIT]
    write_durably(pending_path(claims_dir, entry.name), orjson.dumps(entry.to_json()))


def store_receipt(claims_dir: Path, name: str, document: dict[str, Any]) -> Path:
    """Write the receipt (one line of JSON), then take the record off the queue."""
    path = receipt_path(claims_dir, name)
    write_durably(path, orjson.dumps(document) + b"\n")
    pending_path(claims_dir, name).unlink(missing_ok=True)
    _sync_directory(claims_dir)
    return path


def write_durably(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` survive a power cut (POSIX)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
