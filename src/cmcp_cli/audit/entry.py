"""Audit entries and their hashes (DESIGN §4).

An entry is a JSON object with `v`, `seq`, `session_id`, `ts`, `type`, `prev` and `hash`
plus fields of its type. `hash` is `sha256:` + hex SHA-256 of the RFC 8785 bytes of the
entry without `hash`; `prev` is the previous entry's hash, and the first entry's `prev` is
`sha256:` followed by 64 zeros. An entry is stored and exported as one line: the RFC 8785
bytes of the whole entry, `hash` included, so the stored bytes are the hashed bytes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from cmcp_cli.claim.canonical import (
    CanonicalizationError,
    canonical_bytes,
    parse_canonical_without,
    sha256_tagged,
)

ENTRY_FORMAT = 1
GENESIS_PREV = "sha256:" + "0" * 64
_BASE_FIELDS = ("v", "seq", "session_id", "ts", "type", "prev", "hash")


class EntryType(enum.StrEnum):
    SESSION_START = "session_start"
    CALL = "call"  # `phase` is "decision" (before forwarding) or "outcome" (before responding)
    SESSION_END = "session_end"
    DRIFT = "drift"
    FAULT = "fault"
    ATTESTATION = "attestation"
    POLICY_LOAD = "policy_load"


class EntryError(ValueError):
    """A stored entry is malformed, not canonical, or does not hash to its `hash`."""


class SealedEntry(NamedTuple):
    """An entry with its hash, and the exact bytes that are stored and exported.

    The identifying members are taken from `fields` once, when the entry is sealed or
    opened and its base fields are known to be well-typed; replay reads them per entry.
    """

    fields: Mapping[str, Any]
    line: bytes
    seq: int
    session_id: str
    type: str
    prev: str
    hash: str

    @classmethod
    def of(cls, fields: Mapping[str, Any], line: bytes) -> SealedEntry:
        return cls(
            fields,
            line,
            fields["seq"],
            fields["session_id"],
            fields["type"],
            fields["prev"],
            fields["hash"],
        )


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds: `2026-11-21T09:30:00.000000Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seal(fields: Mapping[str, Any]) -> SealedEntry:
    """Hash an entry (given without `hash`) and produce its stored line."""
    if "hash" in fields:
        raise EntryError("an entry to seal must not carry a hash yet")
    try:
        digest = sha256_tagged(canonical_bytes(dict(fields)))
        sealed = {**fields, "hash": digest}
        return SealedEntry.of(sealed, canonical_bytes(sealed))
    except CanonicalizationError as exc:
        raise EntryError(f"entry has no canonical form: {exc}") from exc


def open_line(line: bytes) -> SealedEntry:
    """Parse a stored line and check that it is canonical, well-formed and hashes right."""
    try:
        if not line.startswith(b"{"):
            raise EntryError("entry is not a JSON object")
        fields, body = parse_canonical_without(line, "hash")
    except CanonicalizationError as exc:
        raise EntryError(str(exc)) from exc
    _check_base_fields(fields)
    if sha256_tagged(body) != fields["hash"]:  # also rejects any malformed hash
        raise EntryError("content does not hash to the entry's hash: the entry was edited")
    return SealedEntry.of(fields, line)


def _check_base_fields(fields: Mapping[str, Any]) -> None:
    # Runs once per replayed entry, so it leans on C-level checks. `hash` needs no format
    # check of its own: open_line compares it with the digest it computes.
    if not fields.keys() >= _BASE_KEYS:
        missing = sorted(_BASE_KEYS - fields.keys())
        raise EntryError(f"missing {', '.join(missing)}")
    if fields["v"] != ENTRY_FORMAT:
        raise EntryError(f"entry format {fields['v']!r} is not {ENTRY_FORMAT}")
    seq = fields["seq"]
    if type(seq) is not int or seq < 0:
        raise EntryError(f"seq {seq!r} is not a non-negative integer")
    for name in ("session_id", "ts", "type"):
        value = fields[name]
        if type(value) is not str or not value:
            raise EntryError(f"{name} is not a non-empty string")
    prev = fields["prev"]
    if type(prev) is not str or _DIGEST.fullmatch(prev) is None:
        raise EntryError("prev is not sha256:<64 hex>")


_BASE_KEYS = frozenset(_BASE_FIELDS)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
