"""`cmcp verify --receipt FILE [--log-key PEM]`: whether the record (a claim's `trace`, or
a standalone record) is the one a transparency log anchored, each finding of
`claim.receipt.check_receipt` a check of its own.

Without `--log-key` the inclusion proof is checked against the receipt's own root, which
proves nothing about the log: `receipt.log_signature` is skipped and the record is not
proven anchored, so the verdict is "not verifiable here" (exit 3) when all else passes.
A record that states `transparency` verified without `--receipt` gets a skipped
`receipt` check naming the URI, so an auditor sees what was not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cmcp_cli.attestation.api import Check
from cmcp_cli.claim.receipt import ReceiptFinding, check_receipt, log_key_problem
from cmcp_cli.errors import UsageError
from cmcp_cli.strict_json import StrictJSONError, loads_strict

NAME: Final = "receipt"
LOG_SIGNATURE: Final = "receipt.log_signature"
RECEIPT_HINT: Final = (
    "give the receipt document the gateway wrote beside the claim (<claim>.receipt.json) "
    "or served at GET /trace/{id}?receipt"
)
LOG_KEY_HINT: Final = "give the transparency log's public key as PEM"


@dataclass(frozen=True)
class ReceiptInput:
    """What the auditor gave: the receipt file's JSON (or why it is not JSON), and the
    log's public key when pinned."""

    path: Path
    document: Any
    problem: str | None
    log_key: bytes | None


def read_receipt(path: Path, log_key: Path | None) -> ReceiptInput:
    """The receipt and the log key the auditor named. A file that cannot be read, or a
    log key that is not one, is a `UsageError` (exit 2); a receipt that is not JSON is
    read as it is, and fails `receipt.shape`."""
    data = _read(path, "receipt", RECEIPT_HINT)
    document, problem = None, None
    try:
        document = loads_strict(data)
    except StrictJSONError as exc:
        problem = f"{path} is not JSON: {exc}"
    key = None
    if log_key is not None:
        key = _read(log_key, "log key", LOG_KEY_HINT)
        wrong = log_key_problem(key)
        if wrong is not None:
            raise UsageError(
                f"--log-key {log_key} is {wrong}",
                hint=f"{LOG_KEY_HINT} (`openssl pkey -pubin -in FILE -text` shows what it holds)",
            )
    return ReceiptInput(path, document, problem, key)


def _read(path: Path, what: str, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}", hint=hint) from exc


def receipt_checks(record: Mapping[str, Any], given: ReceiptInput | None) -> list[Check]:
    """The `receipt.*` checks of a record whose signature verified."""
    if given is None:
        stated = record.get("transparency")
        if stated is None:
            return [Check.skipped(NAME, "the record states no transparency log entry")]
        return [
            Check.skipped(
                NAME,
                f"the record states it is anchored at {stated}; no --receipt given, so that is "
                "not checked (fetch the receipt and add --receipt FILE --log-key PEM)",
            )
        ]
    if given.problem is not None:
        return [Check.failed("receipt.shape", given.problem)]
    return [_check(f) for f in check_receipt(record, given.document, given.log_key)]


def _check(finding: ReceiptFinding) -> Check:
    if finding.ok is None:
        return Check.skipped(finding.name, finding.reason)
    if finding.ok:
        return Check.passed(finding.name, finding.reason)
    return Check.failed(finding.name, finding.reason)
