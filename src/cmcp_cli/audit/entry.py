"""Audit entries and their hashes (DESIGN §4).

An entry is a JSON object with `v`, `seq`, `session_id`, `ts`, `type`, `prev` and `hash`
plus fields of its type. `hash` is `sha256:` + hex SHA-256 of the RFC 8785 bytes of the
entry without `hash`; `prev` is the previous entry's hash, and the first entry's `prev` is
`sha256:` followed by 64 zeros. An entry is stored and exported as one line: the RFC 8785
bytes of the whole entry, `hash` included, so the stored bytes are the hashed bytes.
"""

from __future__ import annotations

import enum
import operator
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from cmcp_cli.claim.canonical import (
    CanonicalizationError,
    canonical_bytes,
    parse_canonical,
    sha256_tagged,
)

ENTRY_FORMAT = 1
GENESIS_PREV = "sha256:" + "0" * 64
_BASE_FIELDS = ("v", "seq", "session_id", "ts", "type", "prev", "hash")


class EntryType(enum.StrEnum):
    SESSION_START = "session_start"
    # A governed message: `phase` is "decision" (before forwarding) or "outcome" (before
    # responding). A tool call's decision names its `tool` and has no `kind`; any other
    # message's has `kind` (its Cedar action), `target` and `server` (docs/claim-format.md).
    CALL = "call"
    SESSION_END = "session_end"
    DRIFT = "drift"
    FAULT = "fault"
    ATTESTATION = "attestation"
    POLICY_LOAD = "policy_load"
    # What fixes the issuance of a claim over the chain up to and including this entry,
    # issued while the session goes on (`claims.per_call`): `claim{iat, sequence_number,
    # previous}`, as session_end records it for the session's last claim.
    CLAIM = "claim"


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
        fields = parse_canonical(line)
    except CanonicalizationError as exc:
        raise EntryError(str(exc)) from exc
    if type(fields) is not dict:
        raise EntryError("entry is not a JSON object")
    entry = _with_base_fields(fields, line)
    if _digest_without_hash(line, entry.hash) != entry.hash:
        raise EntryError("content does not hash to the entry's hash: the entry was edited")
    return entry


def _digest_without_hash(line: bytes, claimed: str) -> str | None:
    """The digest of a canonical entry line with its `"hash":...` member (and one comma)
    cut out: the RFC 8785 bytes of the entry without `hash`, since members stay sorted.

    The cut is at the first occurrence of the member's text. Were that text also nested
    deeper in the entry, the cut could fall there, but then the digest is taken over bytes
    that still contain the claimed hash, and a SHA-256 digest equal to text inside its own
    input is infeasible to find: the check can fail there, never pass wrongly. A written
    entry never contains its own hash, for the same reason.
    """
    member = b'"hash":"' + claimed.encode() + b'"'
    start = line.find(member)
    if start < 0:
        return None  # the hash has characters JSON escapes, so it is no digest
    end = start + len(member)
    if line[start - 1] == _COMMA:
        start -= 1
    elif line[end] == _COMMA:
        end += 1
    return sha256_tagged(line[:start] + line[end:])


_COMMA = ord(",")


def _with_base_fields(fields: dict[str, Any], line: bytes) -> SealedEntry:
    """The entry of `fields`, once its base fields are there and well-typed.

    Runs once per replayed entry, so it leans on C-level checks. `hash` needs no format
    check here: open_line compares it with the digest it computes.
    """
    try:
        version, seq, session_id, ts, kind, prev, claimed = _base_values(fields)
    except KeyError:
        missing = sorted(_BASE_KEYS - fields.keys())
        raise EntryError(f"missing {', '.join(missing)}") from None
    if type(version) is not int or version != ENTRY_FORMAT:
        raise EntryError(f"entry format {version!r} is not {ENTRY_FORMAT}")
    if type(seq) is not int or seq < 0:
        raise EntryError(f"seq {seq!r} is not a non-negative integer")
    if type(session_id) is not str or not session_id:
        raise EntryError("session_id is not a non-empty string")
    if type(ts) is not str or not ts:
        raise EntryError("ts is not a non-empty string")
    if type(kind) is not str or not kind:
        raise EntryError("type is not a non-empty string")
    if type(prev) is not str or _DIGEST.fullmatch(prev) is None:
        raise EntryError("prev is not sha256:<64 hex>")
    if type(claimed) is not str:
        raise EntryError("hash is not sha256:<64 hex>")
    return SealedEntry(fields, line, seq, session_id, kind, prev, claimed)


_BASE_KEYS = frozenset(_BASE_FIELDS)
_base_values = operator.itemgetter(*_BASE_FIELDS)  # in the order they are unpacked
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
